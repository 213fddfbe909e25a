#pragma once
// BodyRateClock: the time a request body's minimum rate (limits.min_request_body_rate) is
// counted over. It starts with the body and stands still while the relay waits to write to the
// backend: a backend slow to read holds the client back, and that is not the client's slowness
// (it once counted against it: a fast upload to a slow backend could get a 408, or be closed to
// make room at max_connections as a slow one). Worker thread only.

#include <chrono>

namespace bg {

class BodyRateClock {
  public:
    using Clock = std::chrono::steady_clock;

    void begin(Clock::time_point now) {
        start_ = now;
        writing_since_ = {};
    }
    // A write to the other side waits from `now` on / is over at `now`.
    void writing(Clock::time_point now) { writing_since_ = now; }
    void written(Clock::time_point now) {
        if (writing_since_ != Clock::time_point{}) {
            start_ += now - writing_since_;
            writing_since_ = {};
        }
    }
    // Where the counted time begins: the body's start, moved on by the waits to write.
    Clock::time_point start() const { return start_; }
    // The time counted up to `now` (a wait to write in progress does not count).
    Clock::duration counted(Clock::time_point now) const {
        return (writing_since_ != Clock::time_point{} ? writing_since_ : now) - start_;
    }

  private:
    Clock::time_point start_{};
    Clock::time_point writing_since_{};  // epoch: no write waiting
};

}  // namespace bg
