#include "chunk_framing.hpp"

#include <boost/beast/http/error.hpp>

namespace bg {

ChunkFraming check_pending_chunk_framing(std::string_view pending, std::size_t max_chunk_line,
                                         std::size_t max_trailer) {
    // Beast parses the CRLF that ends a chunk's data together with the next chunk-size line.
    if (pending.starts_with("\r\n")) {
        pending.remove_prefix(2);
    }
    const auto eol = pending.find("\r\n");
    if (eol == std::string_view::npos) {
        return pending.size() > max_chunk_line ? ChunkFraming::chunk_line_too_long
                                               : ChunkFraming::within_limits;
    }
    // A complete chunk-size line is held back only when it is the last chunk's, waiting for
    // the end of the trailer section that follows it.
    if (eol > max_chunk_line) {
        return ChunkFraming::chunk_line_too_long;
    }
    return pending.size() - eol - 2 > max_trailer ? ChunkFraming::trailer_too_long
                                                  : ChunkFraming::within_limits;
}

void ChunkHeaderGuard::operator()(std::uint64_t size, std::string_view extensions,
                                  boost::system::error_code& ec) {
    if (extensions.size() + 16 > max_chunk_line) {  // 16: the longest size a parser accepts
        over = ChunkFraming::chunk_line_too_long;
        ec = boost::beast::http::error::bad_chunk_extension;
        return;
    }
    if (size != 0 || input_end == nullptr || extensions.data() == nullptr) {
        return;
    }
    // The last chunk: its line ends 2 bytes after its extensions, and the trailer section,
    // complete in the input (Beast found its end before calling), runs to the empty line.
    const char* trailer = extensions.data() + extensions.size() + 2;
    if (trailer > input_end) {
        return;
    }
    const std::string_view rest(trailer, static_cast<std::size_t>(input_end - trailer));
    const std::size_t length = rest.starts_with("\r\n") ? 0 : rest.find("\r\n\r\n");
    if (length != std::string_view::npos && length > max_trailer) {
        over = ChunkFraming::trailer_too_long;
        ec = boost::beast::http::error::header_limit;
    }
}

}  // namespace bg
