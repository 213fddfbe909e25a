#pragma once
// CoarseClock: steady_clock's time as of the kernel's last tick (CLOCK_MONOTONIC_COARSE: behind
// by at most a tick, 4 ms here). The data path's deadlines are computed from it: a proxied
// request reads the time about ten times, and on this machine's VM the exact clock costs 27 ns
// a read (vDSO, TSC and pvclock) against 4 to 6 for this one. A deadline from it falls at most
// a tick early, which no timeout in the config is fine enough to notice. Durations that are
// reported (latencies in the access log and metrics) keep steady_clock.

#include <chrono>
#include <ctime>

namespace bg {

struct CoarseClock {
    // On steady_clock's scale (both are CLOCK_MONOTONIC's, on Linux): comparable with it.
    static std::chrono::steady_clock::time_point now() noexcept {
        timespec ts{};
        ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        return std::chrono::steady_clock::time_point(
            std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec)));
    }
};

}  // namespace bg
