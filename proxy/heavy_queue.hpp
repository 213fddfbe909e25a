#pragma once
// HeavyQueue: steps that cost hundreds of microseconds each (a TLS handshake's key exchange and
// signature) wait their turn, one per pass of the worker's loop over its ready handlers. A
// worker's handlers run in the order they became ready, so a request on an open connection
// waited behind every handshake that became ready with it (a burst of new connections:
// milliseconds); now it waits behind one such step per pass, as HAProxy runs handshakes in its
// TL_HEAVY class. The heavy steps all run still, one per pass, when nothing else is ready too.
// Queued: a server handshake up to its first flight (tls_stream.hpp). Not queued: a backend
// handshake (rare: connections are pooled, and a request waits for it) and TLS 1.2's client key
// exchange (the cheaper half).
// One per io_context (an asio service): its steps are destroyed with the context's own.
// Worker thread only, not thread-safe. A step runs as a handler of this io_context: its own
// associated executor must be this io_context's (a strand's would be bypassed).
// (Steps are only moved in and out: Boost 1.81's any_completion_handler assignment is broken.)

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/execution_context.hpp>
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

    // The steps run so far.
    std::uint64_t steps_run() const { return steps_run_; }

  private:
    void run_one();
    void schedule_next();
    void shutdown() override;

    boost::asio::io_context& io_;
    std::deque<boost::asio::any_completion_handler<void()>> steps_;
    bool scheduled_ = false;  // a run_one is posted
    std::uint64_t steps_run_ = 0;
};

}  // namespace bg
