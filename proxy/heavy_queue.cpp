#include "heavy_queue.hpp"

#include <boost/asio/post.hpp>
#include <utility>

namespace bg {

boost::asio::execution_context::id HeavyQueue::id;

HeavyQueue::HeavyQueue(boost::asio::io_context& io)
    : boost::asio::execution_context::service(io), io_(io) {}

HeavyQueue& HeavyQueue::of(const Executor& executor) {
    return boost::asio::use_service<HeavyQueue>(executor.context());
}

void HeavyQueue::enqueue(boost::asio::any_completion_handler<void()> step) {
    steps_.push_back(std::move(step));
    if (!scheduled_) {
        scheduled_ = true;
        boost::asio::post(io_, [this] { run_one(); });
    }
}

// One step, then the next one posted: behind what the step and the loop made ready meanwhile.
void HeavyQueue::run_one() {
    auto step = std::move(steps_.front());
    steps_.pop_front();
    // The next turn is scheduled however the step ends (a step that throws must not stall the
    // steps behind it).
    struct Next {
        HeavyQueue& queue;
        ~Next() { queue.schedule_next(); }
    } next{*this};
    ++steps_run_;
    std::move(step)();
}

void HeavyQueue::schedule_next() {
    if (steps_.empty()) {
        scheduled_ = false;
    } else {
        boost::asio::post(io_, [this] { run_one(); });
    }
}

void HeavyQueue::shutdown() {
    // Moved out first: a step's destructor may enqueue again.
    auto steps = std::move(steps_);
    steps.clear();
}

}  // namespace bg
