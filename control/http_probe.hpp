#pragma once
// One HTTP request to one backend from the control thread, for health checks and smoke checks.

#include <boost/asio/awaitable.hpp>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "config.hpp"

namespace bg {

struct ProbeRequest {
    std::string method = "GET";
    std::string path = "/";
    std::string host;  // empty: the backend's address
    std::vector<std::pair<std::string, std::string>> headers;
    Duration timeout{std::chrono::seconds(1)};
    bool tcp_only = false;   // a connect is the whole check
    bool want_body = false;  // read the body (up to 1 MiB) too
    // As the backend's pool says: TLS with this context (nullptr: plain), and a PROXY v2
    // header first (LOCAL: the check speaks for itself). With TLS, tcp_only checks the handshake.
    std::shared_ptr<const BackendTlsContext> tls;
    bool send_proxy_protocol = false;
};

// A request that connects as the data path does to the pool's backends (TLS, PROXY header).
ProbeRequest connecting_as(const PoolConfig& pool);

struct ProbeResult {
    bool answered = false;  // a response header came back (or, tcp_only, the connect worked)
    unsigned status = 0;
    std::string body;
    std::string error;  // what went wrong when !answered
    // The proxy itself ran out (descriptors, memory, local ports): nothing learnt of the backend.
    bool local_failure = false;
};

boost::asio::awaitable<ProbeResult> http_probe(const HostPort& backend,
                                               const ProbeRequest& request);

}  // namespace bg
