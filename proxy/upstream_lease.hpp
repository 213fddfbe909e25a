#pragma once
// A request's hold on a backend: the connection it uses (pooled or new), its registration as in
// flight (least-request balancing, the shutdown's view), and the connection a PROXY-header
// backend keeps for one client connection only.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "balancer.hpp"
#include "routing_table.hpp"
#include "session_handle.hpp"
#include "upstream_stream.hpp"

namespace bg {

// A backend connection held by one request.
struct Upstream {
    const Backend* backend = nullptr;
    std::optional<UpstreamStream> stream;
    bool reused = false;
};

// A backend connection that opened with a PROXY header naming this session's client: it may
// serve this client connection only, so it stays with the session instead of the pool.
struct PrivateUpstream {
    std::uint32_t backend_id = 0;
    // Ids are stable across reloads, addresses need not be (numeric: no copy of a host name).
    std::string ip;
    std::uint16_t port = 0;
    UpstreamStream stream;
    std::chrono::steady_clock::time_point since;  // idle since: the pool's age rules apply
};

// A request's hold on one backend: counted for least-request, visible to the shutdown.
struct InFlight {
    InFlight(Balancer& b, std::uint32_t backend_id, SessionHandle& h)
        : balancer(b), id(backend_id), handle(h) {
        balancer.on_request_start(id);
    }
    ~InFlight() {
        balancer.on_request_end(id);
        handle.upstream = nullptr;
    }
    Balancer& balancer;
    std::uint32_t id;
    SessionHandle& handle;
};

}  // namespace bg
