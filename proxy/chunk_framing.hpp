#pragma once
// Bounds on chunked framing, which Beast's parser does not set: the length of a chunk-size line
// (with its extensions) and the size of the trailer section. Both a client and a backend send
// them, so both directions are checked.

#include <boost/system/error_code.hpp>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace bg {

enum class ChunkFraming {
    within_limits,
    chunk_line_too_long,
    trailer_too_long,
    bare_lf,
    control_byte,  // in a chunk extension: none is valid there, quoted or not (RFC 9112 7.1.1)
};

// Bytes a body parser holds back, unparsed, while it waits for the end of a chunk-size line
// or of the trailer section: checked before more is buffered. A line ended by a bare LF is
// refused at once: the parser waits for a CRLF that cannot make the line valid.
ChunkFraming check_pending_chunk_framing(std::string_view pending, std::size_t max_chunk_line,
                                         std::size_t max_trailer);

// A parser's chunk-header callback (parser::on_chunk_header) that checks what arrived whole:
// each chunk-size line, and at the last chunk the trailer section that follows it in the
// bytes being parsed (Beast calls it with those bytes in place, before it parses the trailer).
//
// Trailer fields are dropped on the way out (the last chunk goes on alone, as Envoy and nginx
// do by default), but Beast's parser reads framing fields in a trailer as if they were in the
// head: a trailer `Content-Length` or `Transfer-Encoding` would fail a valid message, and a
// trailer `Connection: close` would end a keep-alive connection. RFC 9110 6.5.1 forbids acting
// on them, so the guard renames those fields in place (same length, a name no parser knows)
// before Beast parses the trailer section.
struct ChunkHeaderGuard {
    std::size_t max_chunk_line = 4096;
    std::size_t max_trailer = 16384;
    char* input_begin = nullptr;  // the bytes passed to the parser's put(), writable
    char* input_end = nullptr;
    ChunkFraming over = ChunkFraming::within_limits;

    void operator()(std::uint64_t size, std::string_view extensions, boost::system::error_code& ec);
};

}  // namespace bg
