#pragma once
// AnswerWaits: how long a backend's answered tries waited for their response head, counted in
// doubling buckets (under 64 ms, 128 ms, ... 64 s, longer). Cumulative: the outlier detector
// compares two reports to see which waits were answered in between, and so how long a wait
// this pool's service legitimately takes, which a request must outwait to count as held by a
// hung backend (a pool serving 3 s reports besides quick pages is not hung at 1 s).

#include <array>
#include <chrono>
#include <cstdint>

namespace bg {

struct AnswerWaits {
    static constexpr std::size_t buckets = 12;
    std::array<std::uint64_t, buckets> counts{};

    // The bucket of a wait: 0 below 64 ms, then one per doubling, the last unbounded.
    static std::size_t bucket_of(std::chrono::milliseconds wait) {
        std::size_t b = 0;
        for (std::int64_t bound = 64; b + 1 < buckets && wait.count() >= bound; bound *= 2) {
            ++b;
        }
        return b;
    }
    // The longest wait bucket `b` holds (the last: unbounded).
    static std::chrono::milliseconds upper_bound(std::size_t b) {
        return b + 1 >= buckets ? std::chrono::milliseconds::max()
                                : std::chrono::milliseconds(std::int64_t{64} << b);
    }
    void count(std::chrono::milliseconds wait) { ++counts[bucket_of(wait)]; }
    void add(const AnswerWaits& other) {
        for (std::size_t b = 0; b < buckets; ++b) {
            counts[b] += other.counts[b];
        }
    }
};

}  // namespace bg
