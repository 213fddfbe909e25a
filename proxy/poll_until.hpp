#pragma once
// poll_until: waits for another thread's work to be done, up to a deadline, by looking every
// few milliseconds. For the exit only (a writer that may be stuck in a stalled disk cannot be
// waited on by a join): nothing on a hot path.

#include <chrono>
#include <thread>

namespace bg {

// True once done() is, false if the deadline passes first.
template <class Done>
bool poll_until(std::chrono::steady_clock::time_point deadline, Done done) {
    while (!done() && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return done();
}

}  // namespace bg
