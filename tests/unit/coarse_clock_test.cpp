#include <doctest/doctest.h>

#include <chrono>

#include "coarse_clock.hpp"

TEST_CASE("the coarse clock is steady_clock's, at most a tick behind") {
    using namespace std::chrono_literals;
    for (int i = 0; i < 1000; ++i) {
        const auto coarse = bg::CoarseClock::now();
        const auto exact = std::chrono::steady_clock::now();
        CHECK(coarse <= exact);
        CHECK(exact - coarse < 50ms);  // a tick is 1 to 10 ms; a preempted test thread, more
    }
}
