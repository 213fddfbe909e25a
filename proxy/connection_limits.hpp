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
    // A client connection accepted on descriptor `number` or above is handled as past
    // max_connections (descriptor_limit.hpp), while the accept loop still has a descriptor to
    // do so, and the control socket, the admin listener and the health checks keep theirs. (A
    // probe: 9,500 slow uploads, a client's and a backend's descriptor each, ran a
    // 20,000-descriptor limit out below max_connections 16,384; newcomers then waited in the
    // backlog and `bgctl status` got no reply.) Idle clients hold one descriptor, uploads and
    // tunnels two: the number says what is in use, where a count of clients would not.
    void set_descriptor_ceiling(std::uint64_t number) {
        descriptor_ceiling_.store(number, std::memory_order_relaxed);
    }
    bool near_descriptor_limit(int descriptor) const {
        const std::uint64_t ceiling = descriptor_ceiling_.load(std::memory_order_relaxed);
        return ceiling != 0 && static_cast<std::uint64_t>(descriptor) >= ceiling;
    }

  private:
    std::atomic<std::uint32_t> total_{0};
    std::atomic<std::uint64_t> descriptor_ceiling_{0};
    std::unique_ptr<std::atomic<std::uint32_t>[]> per_listener_;
    std::size_t listeners_;
};

}  // namespace bg
