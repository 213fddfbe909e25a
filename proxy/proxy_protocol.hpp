#pragma once
// The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2): a load balancer in front of
// us prepends the original client's addresses to the connection, and we can do the same for a
// backend. Parsing works on whatever bytes have arrived so far, so the caller can read in pieces
// and stop at the first byte that cannot start a valid header.

#include <boost/asio/ip/tcp.hpp>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace bg {

// The most a connection waits for before its header must be complete: v2's 16 fixed bytes plus
// our cap on its length field (the spec allows 65535, but no sane sender needs more than a few
// TLVs). A v1 header is at most 107 bytes, well below this.
inline constexpr std::size_t max_proxy_v2_length = 4096;
inline constexpr std::size_t max_proxy_header = 16 + max_proxy_v2_length;

enum class ProxyHeaderStatus { complete, incomplete, malformed };

struct ProxyHeader {
    // v2 LOCAL command, or v1 "PROXY UNKNOWN": the connection's own addresses apply.
    bool local = false;
    boost::asio::ip::tcp::endpoint source;       // the original client
    boost::asio::ip::tcp::endpoint destination;  // the address the client connected to
};

struct ProxyHeaderParse {
    ProxyHeaderStatus status = ProxyHeaderStatus::incomplete;
    std::size_t length = 0;  // bytes of the header (complete only): the request starts after them
    ProxyHeader header;
    std::string error;  // why it is malformed, for the log (malformed only)
};

// Parses a PROXY v1 or v2 header at the start of `bytes` (what has arrived so far). Incomplete
// means "read more"; a connection must not wait for more than max_proxy_header bytes: v1 is at
// most 107 bytes, v2 at most 16 + 65535 (we cap v2's length at 4096 + 16 and call larger
// malformed).
ProxyHeaderParse parse_proxy_header(std::string_view bytes);

// A v2 header (PROXY command, TCP over IPv4 or IPv6; a v4-mapped v6 source with a v4 destination is
// sent as IPv4) for sending to a backend.
std::string encode_proxy_v2(const boost::asio::ip::tcp::endpoint& source,
                            const boost::asio::ip::tcp::endpoint& destination);

// A v2 header with the LOCAL command: the connection speaks for itself (health checks of a
// backend that requires PROXY headers).
std::string encode_proxy_v2_local();

}  // namespace bg
