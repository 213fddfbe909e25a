#pragma once
// SideTask: a coroutine that runs beside the one that started it, on the same worker, until it
// ends by itself; the starter can wait for its end, with or without a bound. Used for a request
// body that goes to the backend while the response comes back (RequestExchange). The starter
// must see it end before the SideTask goes: its frame refers to the starter's state. Worker
// thread only.

#include <boost/asio/basic_waitable_timer.hpp>
#include <chrono>

#include "io_types.hpp"

namespace bg {

class SideTask {
  public:
    explicit SideTask(const Executor& executor) : timer_(executor) {}
    SideTask(const SideTask&) = delete;
    SideTask& operator=(const SideTask&) = delete;

    // Runs `task` (at once, up to its first wait).
    void start(Task<void> task);
    bool running() const { return running_; }
    // Until it has ended, or `limit` has passed: whether it has ended.
    Task<bool> wait(std::chrono::milliseconds limit = std::chrono::milliseconds::max());

  private:
    using Clock = std::chrono::steady_clock;
    boost::asio::basic_waitable_timer<Clock, boost::asio::wait_traits<Clock>, Executor> timer_;
    bool running_ = false;
};

}  // namespace bg
