#pragma once
// The vocabulary the pieces of a client session share: how an exchange with a backend ended,
// how getting a connection ended, how relaying a body ended, and the request facts every piece
// asks about (idempotent, an upgrade, a TLS stream). A header of its own, so the connection,
// the exchange and the body relay depend on it rather than on each other.

#include <boost/system/error_code.hpp>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "proxied_message.hpp"

namespace bg {

class TlsStream;

// How the exchange with the backend ended before any response byte went to the client.
enum class Exchange {
    response_ready,  // a final response header is in the response parser
    client_gone,     // the client failed or closed while sending its body or waiting
    body_too_large,  // the request body passed max_request_body
    body_malformed,  // invalid chunked framing in the request body, or over a framing limit
    body_too_slow,   // the request body stalled or came slower than min_request_body_rate
    upstream_timeout,
    upstream_failed,     // refused, reset or cut before a complete response header
    response_invalid,    // a response head over a limit, or a 101 nobody asked for
    no_backend,          // no backend of either colour may take it (503)
    unreachable,         // every backend tried refused the connection (502)
    out_of_descriptors,  // the proxy could not open a connection itself (503)
};

// How getting a backend connection ended.
enum class Connected { yes, no_backend, refused, out_of_descriptors };

// How relaying one message body ended.
enum class BodyEnd {
    done,
    read_failed,   // the reading side closed, reset or cut the body short
    read_timeout,  // a pause over the leg's read limit, or under the minimum rate
    too_large,
    malformed,  // invalid chunked framing, or a chunk line or trailer over its limit
    write_failed,
    write_timeout
};

// Parser errors that mean the peer framed its body wrongly (as opposed to the connection
// failing under it).
bool is_framing_error(const boost::system::error_code& ec);

// RFC 9110 9.2.2: a client (and so a proxy) may repeat these automatically.
bool idempotent(boost::beast::http::verb method);

// Upgrade named in Connection, with an Upgrade field.
bool is_upgrade_request(const RequestHeader& header);

// Of an Upgrade field's protocols (RFC 9110 7.8), those whose name (before any "/version") is
// in `allowed`, case-insensitively, as a field value; empty when none is.
std::string allowed_upgrade(std::string_view offered, const std::vector<std::string>& allowed);

// A 101's Upgrade names a protocol the request offered (RFC 9110 7.8: a server switches only
// to one the client listed).
bool upgrade_offered(std::string_view chosen, std::string_view offered);

template <class T>
struct is_tls_stream : std::false_type {};
template <>
struct is_tls_stream<TlsStream> : std::true_type {};

}  // namespace bg
