#pragma once
// HeavyQueue: steps that cost hundreds of microseconds each (a TLS handshake's key exchange and
// signature) wait their turn, one per pass of the worker's loop over its ready handlers. A
// worker's handlers run in the order they became ready, so a request on an open connection
// waited behind every handshake that became ready with it (a burst of new connections:
// milliseconds); now it waits behind one such step per pass, as HAProxy runs handshakes in its
// TL_HEAVY class. The heavy steps all run still, one per pass, when nothing else is ready too.
// While light work keeps coming (a flood of new TLS connections beside busy open ones), one per
// pass can still give the heavy steps most of the worker's time: a pass of a few requests and a
// 300 us key exchange. So the heavy steps get at most `share` percent of its time while light
// work waits: after a step that took H, the next waits, pass after pass, until the light
// handlers have had H * (100 - share) / share, or a pass finds little else to run (under 0.1
// ms). Time is the worker thread's CPU time: a CPU quota's stops are nobody's work.
// Queued: a server handshake up to its first flight (tls_stream.hpp). Not queued: a backend
// handshake (rare: connections are pooled, and a request waits for it) and TLS 1.2's client key
// exchange (the cheaper half).
// One per io_context (an asio service): its steps are destroyed with the context's own.
// Worker thread only, not thread-safe. A step runs as a handler of this io_context: its own
// associated executor must be this io_context's (a strand's would be bypassed).
// (Steps are only moved in and out: Boost 1.81's any_completion_handler assignment is broken.)

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/execution_context.hpp>
#include <chrono>
#include <cstdint>
#include <deque>

#include "io_types.hpp"

namespace bg {

class HeavyQueue : public boost::asio::execution_context::service {
  public:
    static boost::asio::execution_context::id id;

    explicit HeavyQueue(boost::asio::io_context& io);

    // The queue of `executor`'s io_context.
    static HeavyQueue& of(const Executor& executor);

    // Runs `step` after the handlers ready now and the heavy steps queued before it.
    void enqueue(boost::asio::any_completion_handler<void()> step);

    // The most of the worker's time, in percent (1 to 100), the heavy steps take while light
    // handlers are waiting (server.handshake_share). 100: one per pass, however long.
    void set_share(unsigned percent);

    // The steps run so far, and the passes a step waited for the light handlers' share.
    std::uint64_t steps_run() const { return steps_run_; }
    std::uint64_t passes_deferred() const { return passes_deferred_; }

    // The clock the shares are measured by: the worker thread's CPU time (time it was
    // preempted or held by a CPU quota is nobody's work), or a test's own.
    using Clock = std::chrono::steady_clock;
    static Clock::time_point thread_cpu_time();
    void set_clock(Clock::time_point (*now)()) { now_ = now; }

  private:
    void run_one();
    bool light_work_owed(Clock::time_point now);
    void schedule_next();
    void shutdown() override;

    boost::asio::io_context& io_;
    std::deque<boost::asio::any_completion_handler<void()>> steps_;
    bool scheduled_ = false;  // a run_one is posted
    std::uint64_t steps_run_ = 0;
    std::uint64_t passes_deferred_ = 0;
    unsigned share_ = 100;
    Clock::time_point (*now_)() = &thread_cpu_time;
    Clock::time_point last_end_{};   // when the last step ended
    Clock::time_point last_look_{};  // when run_one last looked
    Clock::duration owed_{};         // light work due before the next step
};

}  // namespace bg
