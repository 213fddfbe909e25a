#include "colour_tally.hpp"

namespace bg {

std::array<ColourFigures, 2> ColourTally::figures(const RoutingTable& table,
                                                  const DataPlaneLoad& load,
                                                  const FailureKinds& counted) {
    ++sample_;
    std::array<ColourFigures, 2> out;
    for (Colour c : all_colours) {
        ColourFigures& f = out[index_of(c)];
        std::vector<Base>& bases = bases_[index_of(c)];
        for (const Backend& b : table.pool(c).backends) {
            if (b.id >= bases.size()) {
                bases.resize(b.id + 1);
            }
            Base& base = bases[b.id];
            const std::uint64_t requests = b.id < load.requests.size() ? load.requests[b.id] : 0;
            std::array<std::uint64_t, failure_kind_count> failures{};
            if (b.id < load.failure_kinds.size()) {
                failures = load.failure_kinds[b.id];
            }
            // New in the pool since the sample before (or its counters started over): it
            // counts from now.
            if (base.seen == 0 || base.seen + 1 != sample_ || requests < base.requests) {
                base.requests = requests;
                base.failures = failures;
            }
            base.seen = sample_;
            f.requests += requests - base.requests;
            for (std::size_t k = 0; k < failure_kind_count; ++k) {
                if (counted[k] && failures[k] >= base.failures[k]) {
                    f.errors += failures[k] - base.failures[k];
                }
            }
        }
        f.latency = load.traffic.request_duration[index_of(c)];
    }
    return out;
}

}  // namespace bg
