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

  private:
    std::atomic<std::uint32_t> total_{0};
    std::unique_ptr<std::atomic<std::uint32_t>[]> per_listener_;
    std::size_t listeners_;
};

}  // namespace bg
