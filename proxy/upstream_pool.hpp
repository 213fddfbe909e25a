#pragma once
// UpstreamPool: one worker's idle keep-alive connections to its backends, by backend id, and
// the TLS session each backend last gave this worker (to resume rather than handshake anew).
// Worker thread only. Bounded per backend; idle connections close after the idle timeout, and
// when the backend closes one or sends anything on it (each is watched for reading once it has
// been idle for watch_after, as HAProxy watches its idle server connections): bytes nobody
// asked for would otherwise be read as the response to the next request sent on it.

#include <algorithm>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "config.hpp"
#include "io_types.hpp"
#include "upstream_stream.hpp"
#include "worker_stats.hpp"

struct ssl_session_st;

namespace bg {

class UpstreamPool {
  public:
    UpstreamPool(const Executor& executor, const UpstreamSettings& settings, WorkerStats& stats);
    ~UpstreamPool();
    UpstreamPool(const UpstreamPool&) = delete;
    UpstreamPool& operator=(const UpstreamPool&) = delete;

    // An idle connection to the backend made to `address` (HostPort::key()) with `tls`
    // (nullptr: plain), or nothing. With `verify`, or when it sat idle for a while, it is
    // checked to be still open first.
    std::optional<UpstreamStream> lease(std::uint32_t backend_id, std::uint64_t address,
                                        bool verify, const BackendTlsContext* tls);
    // The one rule an idle connection is reused by, the pool's and a session's private one:
    // younger than idle_timeout, made to `address` with `tls` (a connection in flight across
    // a reload that moved its backend comes back with the old address), and seen to be still
    // open when `verify` asks or it sat idle past recheck_after.
    bool reusable(UpstreamStream& stream, std::chrono::steady_clock::time_point idle_since,
                  std::uint64_t address, bool verify, const BackendTlsContext* tls) const;
    // Parks a connection whose last exchange completed cleanly; closes it past the bound.
    void give_back(std::uint32_t backend_id, UpstreamStream stream);
    void close_backend(std::uint32_t backend_id);
    // After a new routing table, for a backend it still has: closes the idle connections made
    // to another address than `address` (HostPort::key(): a reload that kept the backend's
    // name and moved it). Those in flight meet the same rule when leased again (reusable).
    void close_moved(std::uint32_t backend_id, std::uint64_t address);
    // One past the highest backend id the pool has held connections or sessions for.
    std::size_t backend_slots() const { return std::max(idle_.size(), sessions_.size()); }
    void close_all();
    std::size_t idle_count() const;
    std::size_t idle_count(std::uint32_t backend_id) const {
        return backend_id < idle_.size() ? idle_[backend_id].size() : 0;
    }

    // The session to offer when connecting to the backend at `address` (HostPort::key()) with
    // `tls` (nullptr when none).
    ssl_session_st* tls_session(std::uint32_t backend_id, std::uint64_t address,
                                const BackendTlsContext* tls) const;
    // Keeps the resumable session of a connection that completed its handshake.
    void keep_tls_session(std::uint32_t backend_id, UpstreamStream& stream);

  private:
    struct Idle {
        UpstreamStream stream;
        std::chrono::steady_clock::time_point since;
        std::uint64_t serial;  // names it to its read watch (it moves within its list)
        bool watched = false;
    };
    // One backend's last session, with the context it belongs to (a reload that changes the
    // pool's TLS settings makes a new context, and the old sessions are not offered again).
    struct Resumable {
        std::shared_ptr<const BackendTlsContext> context;
        ssl_session_st* session = nullptr;
        std::uint64_t address = 0;  // the server it came from (a reload may move the backend)
    };
    Idle* find(std::uint32_t backend_id, std::uint64_t serial);
    void arm_watch(std::chrono::steady_clock::time_point when);
    void watch_the_settled();
    void watch(std::uint32_t backend_id, Idle& idle);
    void readable(std::uint32_t backend_id, std::uint64_t serial);
    void arm_sweep();
    void sweep();

    WorkerStats& stats_;
    boost::asio::steady_timer sweep_timer_;
    std::size_t max_idle_;
    std::chrono::milliseconds idle_timeout_;
    std::chrono::milliseconds recheck_after_;
    std::chrono::milliseconds watch_after_;
    boost::asio::steady_timer watch_timer_;
    std::vector<std::vector<Idle>> idle_;  // by backend id; the back is the most recent
    std::vector<Resumable> sessions_;      // by backend id
    bool watch_armed_ = false;
    std::uint64_t next_serial_ = 0;
    char peek_byte_ = 0;  // where the watches' peeks put the byte they see
    bool sweeping_ = false;
};

}  // namespace bg
