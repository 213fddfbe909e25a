#include "colour_tally.hpp"

namespace bg {

std::array<ColourFigures, 2> ColourTally::figures(const RoutingTable& table,
                                                  const DataPlaneLoad& load,
                                                  const FailureKinds& counted) {
    ++sample_;
    std::array<ColourFigures, 2> out;
    for (Colour c : all_colours) {
        const std::size_t i = index_of(c);
        std::vector<Seen>& seen = seen_[i];
        for (const Backend& b : table.pool(c).backends) {
            if (b.id >= seen.size()) {
                seen.resize(b.id + 1);
            }
            Seen& last = seen[b.id];
            const std::uint64_t requests = b.id < load.requests.size() ? load.requests[b.id] : 0;
            std::array<std::uint64_t, failure_kind_count> failures{};
            if (b.id < load.failure_kinds.size()) {
                failures = load.failure_kinds[b.id];
            }
            // In the pool at the sample before too: what it did since counts. (New in it, or
            // its counters started over: it counts from now.)
            if (last.sample != 0 && last.sample + 1 == sample_ && requests >= last.requests) {
                requests_[i] += requests - last.requests;
                for (std::size_t k = 0; k < failure_kind_count; ++k) {
                    if (counted[k] && failures[k] >= last.failures[k]) {
                        errors_[i] += failures[k] - last.failures[k];
                    }
                }
            }
            last = Seen{requests, failures, sample_};
        }
        out[i].requests = requests_[i];
        out[i].errors = errors_[i];
        out[i].latency = load.traffic.request_duration[i];
    }
    return out;
}

}  // namespace bg
