#pragma once
// ReactorReserve: asio's per-socket reactor records, made in batches ahead of need.
//
// asio's epoll reactor gives every registered socket a descriptor state (168 bytes) from a pool
// that never frees: one more is allocated whenever more sockets are open at once than ever
// before. In a burst each is allocated between the burst's buffers, and after the burst each
// pins the pages of freed buffers around it, which no malloc_trim returns: 2,000 requests at
// once left 15 MB resident for good (3 MB with the records made beforehand). The reserve
// makes them a batch at a time, back to back, before the worker's sockets outgrow them, without
// taking a descriptor per record (reactor_reserve.cpp). Worker thread only.

#include <cstddef>

#include "io_types.hpp"

namespace bg {

class ReactorReserve {
  public:
    static constexpr std::size_t batch = 256;

    explicit ReactorReserve(boost::asio::io_context& io) : io_(io) {}

    // Up to `open` sockets may soon be registered at once: that many records exist after (in
    // whole batches).
    void ensure(std::size_t open);
    std::size_t reserved() const { return reserved_; }

  private:
    boost::asio::io_context& io_;
    std::size_t reserved_ = 0;
};

}  // namespace bg
