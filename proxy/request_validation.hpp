#pragma once
// What makes a request acceptable before any byte of it goes upstream. Beast's parser accepts
// a few things a proxy must refuse (obs-fold, Transfer-Encoding codings other than chunked next
// to Content-Length, Content-Length lists): an ambiguous message never reaches a backend.

#include <boost/beast/http/message.hpp>
#include <cstddef>
#include <string_view>

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
};

struct RawHeaderScan {
    RawHeaderVerdict verdict = RawHeaderVerdict::incomplete;
    std::size_t header_end = 0;  // bytes up to and including the blank line
};

// Screens the raw bytes of a request header (from the start of the request line).
RawHeaderScan scan_raw_header(std::string_view bytes, std::size_t max_request_line,
                              std::size_t max_request_header);

// Checks a parsed request header; returns a reason for a 400, or empty when it is acceptable.
std::string_view framing_problem(const boost::beast::http::request_header<>& header);

}  // namespace bg
