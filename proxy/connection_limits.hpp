#pragma once
// ConnectionLimits: client connections open over all workers and per listener, held against
// [limits] max_connections and each listener's max_connections. Touched when a connection is
// accepted and when it closes, never per request; shared by the workers as relaxed atomics.

#include <atomic>
#include <cstdint>
#include <memory>

namespace bg {

class ConnectionLimits {
  public:
    explicit ConnectionLimits(std::size_t listeners)
        : per_listener_(std::make_unique<std::atomic<std::uint32_t>[]>(listeners)),
          listeners_(listeners) {}

    // Takes a slot; false (nothing taken) when a limit is reached. A limit of 0 is no limit.
    bool try_open(std::size_t listener, std::uint32_t max_total, std::uint32_t max_listener) {
        if (listener >= listeners_) {
            return false;
        }
        auto& count = per_listener_[listener];
        const std::uint32_t total = total_.fetch_add(1, std::memory_order_relaxed);
        const std::uint32_t here = count.fetch_add(1, std::memory_order_relaxed);
        if ((max_total != 0 && total >= max_total) || (max_listener != 0 && here >= max_listener)) {
            close(listener);
            return false;
        }
        return true;
    }
    // A slot counted on `from` passes to a connection on `to` (a connection closed to make room
    // for it): the total never drops, so no other accept can take the slot in between.
    void hand_over(std::size_t from, std::size_t to) {
        if (from != to) {
            per_listener_[to].fetch_add(1, std::memory_order_relaxed);
            per_listener_[from].fetch_sub(1, std::memory_order_relaxed);
        }
    }
    void close(std::size_t listener) {
        per_listener_[listener].fetch_sub(1, std::memory_order_relaxed);
        total_.fetch_sub(1, std::memory_order_relaxed);
    }
    std::uint32_t open() const { return total_.load(std::memory_order_relaxed); }
    // Near the descriptor limit (descriptor_limit.hpp): a client connection accepted on a
    // number at or above `clients` is handled as past max_connections, and a backend connection
    // opened on one at or above `upstream` is not made (a 503), so that the control socket, the
    // admin listener and the health checks keep descriptors of their own. (A probe: 9,500 slow
    // uploads, a client's and a backend's descriptor each, ran a 20,000-descriptor limit out
    // below max_connections 16,384; newcomers then waited in the backlog and `bgctl status` got
    // no reply.) The kernel gives the lowest free number, so a number says how many are in use:
    // idle clients count one, uploads and tunnels two, where a count of clients would not.
    void set_descriptor_ceilings(std::uint64_t clients, std::uint64_t upstream) {
        client_ceiling_.store(clients, std::memory_order_relaxed);
        upstream_ceiling_.store(upstream, std::memory_order_relaxed);
    }
    bool client_near_descriptor_limit(int descriptor) const {
        return past(client_ceiling_, descriptor);
    }
    bool upstream_near_descriptor_limit(int descriptor) const {
        return past(upstream_ceiling_, descriptor);
    }

  private:
    std::atomic<std::uint32_t> total_{0};
    static bool past(const std::atomic<std::uint64_t>& ceiling, int descriptor) {
        const std::uint64_t number = ceiling.load(std::memory_order_relaxed);
        return number != 0 && static_cast<std::uint64_t>(descriptor) >= number;
    }

    std::atomic<std::uint64_t> client_ceiling_{0};  // 0: none
    std::atomic<std::uint64_t> upstream_ceiling_{0};
    std::unique_ptr<std::atomic<std::uint32_t>[]> per_listener_;
    std::size_t listeners_;
};

}  // namespace bg
