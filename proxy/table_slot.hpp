#pragma once
// TableSlot: where the control thread publishes the routing table every worker reads at the
// start of each request, RCU style. A new table is seen by the next request on every worker
// at once, however many handlers a busy worker's event loop has queued before a posted update
// would run (that wait was ~30 ms under load). Readers pay one atomic load of the slot's
// version per request; only after a change do they take the new table's pointer, under a
// mutex, once per change per worker. Old tables live on while requests hold them.

#include <atomic>
#include <cstdint>
#include <mutex>

#include "routing_table.hpp"

namespace bg {

class TableSlot {
  public:
    explicit TableSlot(RoutingTablePtr table) : table_(std::move(table)) {}

    // Control thread: every request that starts after this returns uses `table`.
    void store(RoutingTablePtr table) {
        {
            std::lock_guard lock(mutex_);
            table_ = std::move(table);
        }
        version_.fetch_add(1, std::memory_order_release);
    }

    // Any thread: changes on every store.
    std::uint64_t version() const { return version_.load(std::memory_order_acquire); }

    RoutingTablePtr load() const {
        std::lock_guard lock(mutex_);
        return table_;
    }

  private:
    std::atomic<std::uint64_t> version_{0};
    mutable std::mutex mutex_;
    RoutingTablePtr table_;
};

}  // namespace bg
