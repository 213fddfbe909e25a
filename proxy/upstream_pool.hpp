#pragma once
// UpstreamPool: one worker's idle keep-alive connections to its backends, by backend id.
// Worker thread only. Bounded per backend; idle connections close after the idle timeout.

#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <vector>

#include "config.hpp"
#include "io_types.hpp"

namespace bg {

class UpstreamPool {
  public:
    UpstreamPool(const Executor& executor, const UpstreamSettings& settings);

    // An idle connection to the backend, or nothing. With `verify`, or when it sat idle for a
    // while, it is checked to be still open first (one non-blocking peek).
    std::optional<Socket> lease(std::uint32_t backend_id, bool verify);
    // Parks a connection whose last exchange completed cleanly; closes it past the bound.
    void give_back(std::uint32_t backend_id, Socket socket);
    void close_backend(std::uint32_t backend_id);
    void close_all();
    std::size_t idle_count() const;
    std::size_t idle_count(std::uint32_t backend_id) const {
        return backend_id < idle_.size() ? idle_[backend_id].size() : 0;
    }

  private:
    struct Idle {
        Socket socket;
        std::chrono::steady_clock::time_point since;
    };
    void arm_sweep();
    void sweep();

    boost::asio::steady_timer sweep_timer_;
    std::size_t max_idle_;
    std::chrono::milliseconds idle_timeout_;
    std::chrono::milliseconds recheck_after_;
    std::vector<std::vector<Idle>> idle_;  // by backend id; the back is the most recent
    bool sweeping_ = false;
};

}  // namespace bg
