#include <doctest/doctest.h>

#include "body_rate_clock.hpp"

using std::chrono::seconds;

TEST_CASE("a body's rate clock stands still while the relay waits to write to the other side") {
    bg::BodyRateClock clock;
    const auto t0 = bg::BodyRateClock::Clock::now();
    clock.begin(t0);
    CHECK(clock.counted(t0 + seconds(2)) == seconds(2));
    clock.writing(t0 + seconds(2));
    // Waiting on the backend: the time counted stays at 2 s, however long the wait.
    CHECK(clock.counted(t0 + seconds(10)) == seconds(2));
    clock.written(t0 + seconds(5));
    CHECK(clock.start() == t0 + seconds(3));
    CHECK(clock.counted(t0 + seconds(6)) == seconds(3));
    // A write that did not wait moves nothing; written() without writing() is harmless.
    clock.written(t0 + seconds(7));
    CHECK(clock.start() == t0 + seconds(3));
    clock.begin(t0 + seconds(20));  // the next body starts afresh
    CHECK(clock.counted(t0 + seconds(21)) == seconds(1));
}
