#pragma once
// The request head as a backend gets it, from the head a client sent: every check and rewrite
// the proxy makes on the way, without I/O, so that the client session and the request fuzzer
// (tests/fuzz/fuzz_request.cpp) run the same code.

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/http/parser.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config.hpp"
#include "proxied_message.hpp"
#include "worker_stats.hpp"

namespace bg {

// A request the proxy answers itself, why, and the bound it went over if it did.
struct Refusal {
    Refusal() = default;
    Refusal(boost::beast::http::status s, std::string_view why,
            std::optional<LimitBreach> over = std::nullopt)
        : status(s), reason(why), breach(over) {}

    boost::beast::http::status status = boost::beast::http::status::ok;
    std::string_view reason;
    std::optional<LimitBreach> breach;
    explicit operator bool() const { return !reason.empty(); }
};

// What the proxy needs to know of a request once its head is rewritten for the backend.
struct RequestFacts {
    bool keep_alive = false;  // the client asked to keep the connection
    unsigned version = 11;    // the client's (1.x above 1.1 arrives as 1.1)
    bool upgrade = false;     // RFC 9110 7.8: never for HTTP/1.0; only to an allowed protocol
    std::string upgrade_to;   // the Upgrade forwarded: the offered protocols that are allowed
    bool head = false;
    bool expect_continue = false;
    bool idempotent = false;  // RFC 9110 9.2.2: may be sent again after a failure
};

// Who sent the request and how, for the forwarding fields.
struct ClientHop {
    std::string_view client_ip;
    bool tls = false;
    bool trusted = false;  // the peer is a trusted proxy: its forwarding fields are kept
    // The server as the connection reached it: what an HTTP/1.0 request without Host is given
    // (RFC 9112 3.3), as "address:port".
    boost::asio::ip::tcp::endpoint server;
    UnderscoreFields underscores = UnderscoreFields::drop;  // limits.headers_with_underscores
    std::string_view via;  // [server] via: the name this hop adds to Via ("" none)
};

// Refusals that need only the parsed head: ambiguous framing, CONNECT, an invalid target, a
// declared body over `max_request_body` (0: none). An absolute-form target becomes
// origin-form with its Host (RFC 9112 3.2.2).
Refusal check_request_head(RequestParser& parser, std::uint64_t max_request_body);

// The methods passed on to backends (any but CONNECT), as an Allow field says them: in the
// 405 to a CONNECT (RFC 9110 15.5.6 requires it) and the answer to OPTIONS with Max-Forwards 0.
inline constexpr std::string_view forwarded_methods =
    "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

// What the proxy answers as a request's final recipient: 200 with `body` (of `content_type`),
// and the methods it passes on in Allow when `allow` is set.
struct LocalAnswer {
    std::string_view content_type;  // empty: no body
    std::string body;
    bool allow = false;
};

// RFC 9110 7.6.2: an OPTIONS or TRACE carrying Max-Forwards 0 goes no further: the proxy
// answers it (returned: OPTIONS with Allow, TRACE with the request echoed as message/http, less
// the credentials and cookies of RFC 9110 9.3.8). A larger value goes on one less; a value that
// is not a number goes on untouched (HAProxy and Envoy pass the field on as it is).
std::optional<LocalAnswer> apply_max_forwards(Request& request);

// `upgrades`: the protocols a client may switch to through the proxy ([server]
// upgrade_protocols); an Upgrade offering none of them is stripped, the request served as such.
RequestFacts request_facts(const RequestParser& parser, const std::vector<std::string>& upgrades);

// Rewrites the head in place for the backend: hop-by-hop fields out, forwarding fields in (Via
// with `hop.via`), framing from the parser (never from a field a rule could have removed),
// Expect answered by the proxy, HTTP/1.1.
Refusal rewrite_for_upstream(RequestParser& parser, const RequestFacts& facts,
                             const ClientHop& hop);

// "address:port", bracketed for IPv6.
std::string authority_of(const boost::asio::ip::tcp::endpoint& endpoint);

}  // namespace bg
