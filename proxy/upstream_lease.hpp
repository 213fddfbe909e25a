#pragma once
// UpstreamLease: one request's hold on a backend connection, pooled or new. While held, the
// connection is registered in the session handle (the connection's deadline, the client-close
// sweep and a shutdown close it from there) and its backend counts the request in flight
// (least-request balancing). A hold ends one of two ways: the connection is given back after a
// clean, fully framed exchange (UpstreamConnector::keep), or it is dropped (closed). The
// destructor drops whatever was not given back, so no path leaves a registration behind or
// pools a connection in the middle of a message.
// PrivateUpstream: the connection a PROXY-header backend keeps for one client connection.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "routing_table.hpp"
#include "upstream_stream.hpp"

namespace bg {

class Balancer;
struct SessionHandle;

class UpstreamLease {
  public:
    UpstreamLease(Balancer& balancer, SessionHandle& handle)
        : balancer_(balancer), handle_(handle) {}
    ~UpstreamLease();
    UpstreamLease(const UpstreamLease&) = delete;
    UpstreamLease& operator=(const UpstreamLease&) = delete;

    // Holds `stream` to `backend` for this request (a connection held before is closed).
    void hold(const Backend& backend, UpstreamStream stream, bool reused);
    // Closes the held connection, if any, and ends its registration.
    void drop();
    // Ends the registration and hands the connection over, to be kept for the next request.
    UpstreamStream give_back();

    bool held() const { return stream_.has_value(); }
    const Backend& backend() const { return *backend_; }
    UpstreamStream& stream() { return *stream_; }
    // Taken from the pool or the private slot rather than connected for this request.
    bool reused() const { return reused_; }

  private:
    void end_registration();

    Balancer& balancer_;
    SessionHandle& handle_;
    const Backend* backend_ = nullptr;
    std::optional<UpstreamStream> stream_;
    bool reused_ = false;
};

// A backend connection that opened with a PROXY header naming this session's client: it may
// serve this client connection only, so it stays with the session instead of the pool.
struct PrivateUpstream {
    std::uint32_t backend_id = 0;
    UpstreamStream stream;  // (ids are stable across reloads; its address() need not stay)
    std::chrono::steady_clock::time_point since;  // idle since: the pool's age rules apply
};

}  // namespace bg
