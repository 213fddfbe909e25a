#include "heavy_queue.hpp"

#include <time.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <optional>
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

HeavyQueue::Clock::time_point HeavyQueue::thread_cpu_time() {
    timespec now{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    return Clock::time_point(std::chrono::seconds(now.tv_sec) +
                             std::chrono::nanoseconds(now.tv_nsec));
}

void HeavyQueue::set_share(unsigned percent) {
    share_ = std::clamp(percent, 1u, 100u);
    owed_ = {};
}

// A pass that took less than this ran little but the poll and this look (an epoll_wait that
// finds nothing takes a few microseconds; a request, tens): no light work worth a wait. Each
// wait costs a pass (a poll, a look); a lower bound made handshakes wait behind the other
// handshakes' own light steps (traffic of new connections only: 16% more CPU per handshake
// at 20 us).
constexpr auto empty_pass = std::chrono::microseconds(100);
constexpr auto max_owed = std::chrono::milliseconds(10);

// Whether the next step waits a pass: light work ran in the last pass, and less of it since
// the last step than that step's time owes it.
bool HeavyQueue::light_work_owed(Clock::time_point now) {
    const auto pass = now - last_look_;
    last_look_ = now;
    return pass >= empty_pass && now - last_end_ < owed_;
}

// One step, then the next one posted: behind what the step and the loop made ready meanwhile.
void HeavyQueue::run_one() {
    const auto began = share_ < 100 ? std::optional(now_()) : std::nullopt;
    if (began && light_work_owed(*began)) {
        ++passes_deferred_;
        boost::asio::post(io_, [this] { run_one(); });
        return;
    }
    auto step = std::move(steps_.front());
    steps_.pop_front();
    // The next turn is scheduled however the step ends (a step that throws must not stall the
    // steps behind it); and what it owes the light handlers is reckoned.
    struct Next {
        HeavyQueue& queue;
        std::optional<Clock::time_point> began;
        ~Next() {
            if (began) {  // a share below 100: what the step took is reckoned
                queue.last_end_ = queue.last_look_ = queue.now_();
                // At most max_owed: a 5 ms handshake at a share of 1 would otherwise hold the
                // next for half a second of other work.
                queue.owed_ = std::min<Clock::duration>(
                    (queue.last_end_ - *began) * (100 - queue.share_) / queue.share_, max_owed);
            }
            queue.schedule_next();
        }
    } next{*this, began};
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
