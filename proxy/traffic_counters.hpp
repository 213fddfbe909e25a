#pragma once
// TrafficCounters: what one worker counts about the requests it served, for the metrics.
// Worker thread only: plain integers, no atomics. The control thread gets a copy through
// Worker::report_load at scrape time, so counting costs a few increments per request and the
// label sets (backend, method class, status class, colour) are bounded by construction.

#include <array>
#include <boost/beast/http/verb.hpp>
#include <cstdint>
#include <ostream>  // boost/core/detail/string_view.hpp (via verb.hpp) needs it and omits it
#include <vector>

namespace bg {

enum class MethodClass : std::uint8_t { get, head, post, put, delete_, patch, options, other };
inline constexpr std::size_t method_class_count = 8;
MethodClass method_class(boost::beast::http::verb method);
const char* to_string(MethodClass method);

// Cumulative Prometheus-style buckets of durations in seconds.
struct DurationHistogram {
    static constexpr std::array<double, 14> bounds{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                   0.1,    0.25,  0.5,    1,     2.5,  5,     10};
    std::array<std::uint64_t, bounds.size() + 1>
        counts{};  // per bucket, not cumulative; last: +Inf
    double sum = 0;

    void observe(double seconds);
    void add(const DurationHistogram& other);
    std::uint64_t count() const;
};

struct TrafficCounters {
    static constexpr std::size_t status_class_count = 5;  // 1xx..5xx
    static constexpr std::size_t cells = method_class_count * status_class_count;
    // Responses by backend slot (0: the proxy answered itself; backend id + 1 otherwise), then
    // method class and status class.
    std::vector<std::array<std::uint64_t, cells>> responses;
    std::array<DurationHistogram, 2> request_duration;   // by colour index, client's view
    std::array<DurationHistogram, 2> upstream_duration;  // by colour index, the backend's share
    std::array<std::uint64_t, 2> request_body_bytes{};   // by colour index
    std::array<std::uint64_t, 2> response_body_bytes{};
    std::vector<std::uint64_t> upstream_connects;  // connections opened, by backend id

    // `backend_slot`: 0 for a response the proxy made itself, else backend id + 1.
    void count_response(std::uint32_t backend_slot, MethodClass method, unsigned status) {
        if (backend_slot >= responses.size()) {
            responses.resize(backend_slot + 1);
        }
        const unsigned status_class = status >= 100 && status < 600 ? status / 100 - 1 : 4;
        ++responses[backend_slot]
                   [static_cast<std::size_t>(method) * status_class_count + status_class];
    }
    void count_connect(std::uint32_t backend_id) {
        if (backend_id >= upstream_connects.size()) {
            upstream_connects.resize(backend_id + 1, 0);
        }
        ++upstream_connects[backend_id];
    }
    // Sums another worker's counts into these.
    void add(const TrafficCounters& other);
};

}  // namespace bg
