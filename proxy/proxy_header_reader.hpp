#pragma once
// Reading the PROXY v1/v2 header a load balancer sends first on a listener with
// proxy_protocol (the parsing itself is proxy_protocol.hpp's).

#include <boost/asio/ip/tcp.hpp>
#include <optional>

#include "config.hpp"
#include "io_types.hpp"
#include "session_handle.hpp"

namespace bg {

class Worker;

// Who the client is and where it connected to: from the socket, or from the PROXY header a
// load balancer in front sent. What a PROXY header to a backend says.
struct ClientEndpoints {
    boost::asio::ip::tcp::endpoint source;
    boost::asio::ip::tcp::endpoint destination;
    // A PROXY header that named no client (v1 UNKNOWN, v2 LOCAL or an unspecified or Unix
    // family): `source` is the balancer's own address, standing in for a client unknown.
    bool unnamed = false;
};

// Reads the PROXY v1/v2 header that opens a connection on a listener with proxy_protocol,
// without reading a byte past it (a TLS handshake may follow). Returns the original client's
// addresses, or nothing when the peer may not send one or the header is missing or malformed
// (counted; the caller closes the connection).
Task<std::optional<ClientEndpoints>> read_proxy_header(Worker& worker, const Config& config,
                                                       const ListenerConfig& listener,
                                                       Socket& socket, SessionHandle& handle);

}  // namespace bg
