#include "side_task.hpp"

#include <boost/asio/co_spawn.hpp>
#include <exception>

namespace bg {

void SideTask::start(Task<void> task) {
    running_ = true;
    boost::asio::co_spawn(timer_.get_executor(), std::move(task), [this](std::exception_ptr e) {
        running_ = false;
        timer_.cancel();  // ends a wait()
        if (e) {
            std::rethrow_exception(e);  // (the worker's loop reports it and stops the process)
        }
    });
}

Task<bool> SideTask::wait(std::chrono::milliseconds limit) {
    if (!running_) {
        co_return true;
    }
    const auto now = Clock::now();
    timer_.expires_at(limit >= std::chrono::duration_cast<std::chrono::milliseconds>(
                                   Clock::time_point::max() - now)
                          ? Clock::time_point::max()
                          : now + limit);
    co_await timer_.async_wait(nothrow);  // (cancelled at the end, else expired: either way)
    co_return !running_;
}

}  // namespace bg
