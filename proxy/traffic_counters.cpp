#include "traffic_counters.hpp"

#include <algorithm>

namespace bg {

namespace http = boost::beast::http;

MethodClass method_class(http::verb method) {
    switch (method) {
        case http::verb::get:
            return MethodClass::get;
        case http::verb::head:
            return MethodClass::head;
        case http::verb::post:
            return MethodClass::post;
        case http::verb::put:
            return MethodClass::put;
        case http::verb::delete_:
            return MethodClass::delete_;
        case http::verb::patch:
            return MethodClass::patch;
        case http::verb::options:
            return MethodClass::options;
        default:
            return MethodClass::other;
    }
}

const char* to_string(MethodClass method) {
    static constexpr const char* names[] = {"GET",    "HEAD",  "POST",    "PUT",
                                            "DELETE", "PATCH", "OPTIONS", "OTHER"};
    return names[static_cast<std::size_t>(method)];
}

void DurationHistogram::observe(double seconds) {
    // Linear search: 14 bounds, and most requests stop in the first few.
    std::size_t i = 0;
    while (i < bounds.size() && seconds > bounds[i]) {
        ++i;
    }
    ++counts[i];
    sum += seconds;
}

void DurationHistogram::add(const DurationHistogram& other) {
    for (std::size_t i = 0; i < counts.size(); ++i) {
        counts[i] += other.counts[i];
    }
    sum += other.sum;
}

std::uint64_t DurationHistogram::count() const {
    std::uint64_t n = 0;
    for (auto c : counts) {
        n += c;
    }
    return n;
}

void TrafficCounters::add(const TrafficCounters& other) {
    if (responses.size() < other.responses.size()) {
        responses.resize(other.responses.size());
    }
    for (std::size_t slot = 0; slot < other.responses.size(); ++slot) {
        for (std::size_t cell = 0; cell < cells; ++cell) {
            responses[slot][cell] += other.responses[slot][cell];
        }
    }
    for (std::size_t c = 0; c < 2; ++c) {
        request_duration[c].add(other.request_duration[c]);
        upstream_duration[c].add(other.upstream_duration[c]);
        request_body_bytes[c] += other.request_body_bytes[c];
        response_body_bytes[c] += other.response_body_bytes[c];
    }
    if (upstream_connects.size() < other.upstream_connects.size()) {
        upstream_connects.resize(other.upstream_connects.size(), 0);
    }
    for (std::size_t id = 0; id < other.upstream_connects.size(); ++id) {
        upstream_connects[id] += other.upstream_connects[id];
    }
}

}  // namespace bg
