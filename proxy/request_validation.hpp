#pragma once
// What makes a request acceptable before any byte of it goes upstream. Beast's parser accepts
// a few things a proxy must refuse (obs-fold, Transfer-Encoding codings other than chunked next
// to Content-Length, Content-Length lists): an ambiguous message never reaches a backend.

#include <cstddef>
#include <span>
#include <string_view>

#include "proxied_message.hpp"

namespace bg {

enum class RawHeaderVerdict {
    incomplete,  // no blank line yet: read more
    complete,    // header_end is set
    obs_fold,    // a header line starting with SP or HTAB
    nul_byte,
    bare_cr,
    bare_lf,
    request_line_too_long,  // -> 414
    header_too_long,        // -> 431
    too_many_fields,        // -> 431
    field_too_long,         // -> 431
};

// What a peer may send in one message head. Beast bounds only the whole head (and throws
// std::length_error on a field over 64 KiB), so the rest is checked on the raw bytes.
struct HeaderLimits {
    std::size_t max_start_line = 8192;   // the request line
    std::size_t max_header = 32768;      // start line and fields
    std::size_t max_fields = 100;        // field lines
    std::size_t max_field_size = 16384;  // one field line, name and value
};

struct RawHeaderScan {
    RawHeaderVerdict verdict = RawHeaderVerdict::incomplete;
    std::size_t header_end = 0;  // bytes up to and including the blank line
};

// Screens the raw bytes of a request header (from the start of the request line).
RawHeaderScan scan_raw_header(std::string_view bytes, const HeaderLimits& limits);

// RFC 9110 2.5: a recipient handles HTTP/1.x above 1.1 as 1.1 (Beast refuses anything but
// 1.0 and 1.1). Rewrites the version of a start line ("GET / HTTP/1.2" or "HTTP/1.2 200 OK",
// CRLF excluded) in place to HTTP/1.1 and says whether the major version is 1.
enum class StartLineVersion { http1, other_major, unreadable };
StartLineVersion normalize_request_version(std::span<char> request_line);
StartLineVersion normalize_response_version(std::span<char> status_line);

// A port, when an authority has one: digits, at most 65535 (RFC 9110 4.2.1; "" is the
// default port, RFC 3986 3.2.3).
bool valid_port(std::string_view port);

// Checks a parsed request header; returns a reason for a 400, or empty when its framing can be
// read safely. A header it accepts still needs unimplemented_coding's check.
std::string_view framing_problem(const RequestHeader& header);

// For a header framing_problem accepts (one Transfer-Encoding field at most): a transfer coding
// before the final chunked ("gzip, chunked"), which the proxy does not implement. A reason for a
// 501 (RFC 9112 6.1), or empty.
std::string_view unimplemented_coding(const RequestHeader& header);

// The same for a backend's response head: a status outside 100-599 (RFC 9110 15), a 101
// without Upgrade (15.2.2), a Transfer-Encoding other than chunked alone (the proxy re-frames
// the body and would drop any other coding) or beside a Content-Length (RFC 9112 6.3: a sign
// of response splitting). A reason for a 502, or empty.
std::string_view response_framing_problem(const ResponseHeader& header);

}  // namespace bg
