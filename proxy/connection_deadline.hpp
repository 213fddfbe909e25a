#pragma once
// ConnectionDeadline: the single timer of a client connection, for every step it takes
// (reading a header, sending a body, waiting for a backend...).
//
// Each step arms the deadline, which only stores a time point: the timer is re-armed only when
// the new deadline is earlier than the pending wait, and a wait that fires early simply waits
// again for the current deadline. A request therefore costs no timer operation in the common
// case, where beast::tcp_stream costs a timer start and cancel per read and per write.
//
// On expiry the step's sockets are closed (as tcp_stream does), which ends the pending
// operation with an error; expired() then tells a timeout from a failure. Worker thread only.

#include <chrono>
#include <cstdint>
#include <memory>

#include "io_types.hpp"
#include "session_handle.hpp"

namespace bg {

class ConnectionDeadline {
  public:
    enum Target : unsigned { client = 1, upstream = 2, both = 3 };

    ConnectionDeadline(const Executor& executor, SessionHandle& handle);
    ~ConnectionDeadline();
    ConnectionDeadline(const ConnectionDeadline&) = delete;
    ConnectionDeadline& operator=(const ConnectionDeadline&) = delete;

    // The next step must end within `limit`, or the target's sockets are closed.
    void arm(std::chrono::milliseconds limit, Target target);
    // Whether the step armed (a plain client's head, begun) ends in a 408 to the client before
    // the close (late_head_answer.hpp), a HEAD's without a body; until the next arm().
    void answer_late_head(bool answer, bool head_request = false);
    // The last expiry sent that 408, whole.
    bool answered_late_head() const;
    void disarm();
    // The last armed step ran out of time.
    bool expired() const;
    // The side the step in progress (the last armed) waits on.
    Target target() const;

  private:
    struct State;
    static void wait(const std::shared_ptr<State>& state);
    static void on_timer(const std::shared_ptr<State>& state, std::uint64_t generation);
    std::shared_ptr<State> state_;  // shared with the pending wait, which may outlive us
};

}  // namespace bg
