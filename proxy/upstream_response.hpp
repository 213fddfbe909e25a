#pragma once
// The response as the client gets it, from the head a backend sent: every check and rewrite
// the proxy makes on the way, without I/O, so that the client session and the response fuzzer
// (tests/fuzz/fuzz_response.cpp) run the same code.

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <cstddef>
#include <optional>
#include <string>

#include "proxied_message.hpp"
#include "request_validation.hpp"
#include "upstream_request.hpp"
#include "worker_stats.hpp"

namespace bg {

// How far reading a message head got.
enum class HeadRead { need_more, done, invalid };

// A refused response head: why (for the log and the 502) and the bound it went over, if any.
struct ResponseRefusal {
    std::string why;
    std::optional<LimitBreach> breach;
};

// Screens and parses the response head in `buffer` once all of it is there, like a request
// head (field count and size, bare CR/LF, NUL, obs-fold), then its framing
// (response_framing_problem). The head's bytes are consumed; what follows stays. `checked`:
// bytes already seen to hold no complete head (0 for a new head), so a head that trickles in
// is not scanned again from the start for every byte.
HeadRead parse_response_head(boost::beast::flat_buffer& buffer, ResponseParser& parser,
                             const HeaderLimits& limits, std::size_t& checked,
                             ResponseRefusal& refusal);

// How the response goes to the client, decided from its head and the request.
struct ResponsePlan {
    bool switching = false;    // a 101 to an upgrade request: a tunnel follows
    bool no_body = false;      // HEAD, 204, 304, 101
    bool until_close = false;  // the backend ends the body by closing
    bool chunked = false;      // the proxy frames the body as chunks for the client
    bool keep_alive = false;   // the client connection stays open afterwards
};

// Rewrites the final response head in place for the client: hop-by-hop fields out, the length
// as the proxy read it (never a list), chunked framing for an HTTP/1.1 client when the backend
// used chunked or the close, HTTP/1.1, Connection as the plan says. `may_stay`: the client
// connection may stay open (the client asked, the request was read whole, no shutdown...).
ResponsePlan rewrite_response_head(ResponseParser& parser, const RequestFacts& facts,
                                   bool may_stay);

// Rewrites an interim (1xx) response head for an HTTP/1.1 client: hop-by-hop fields out, no
// Content-Length (RFC 9110 8.6: never in a 1xx), HTTP/1.1.
void rewrite_interim_head(ResponseHeader& interim);

}  // namespace bg
