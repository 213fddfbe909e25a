#pragma once
// ColourTally: each colour's cumulative tries and failed tries, as canary analysis compares
// them window by window: what the backends in the colour's pool did while they were in it.
// A backend's own counters live as long as the process, so one that a reload adds to a colour
// (again, or moved from the other colour) would otherwise bring its whole past into the
// colour's next window (an outside probe: a re-added backend's 295 old failures, made through
// preview requests before it was removed, reverted a healthy release 0.2 s after the reload;
// old successes would as well hide a real failure). And one that leaves stops adding, without
// taking back what it added: the figures only grow, as the analysis's windows need.

#include <array>
#include <cstdint>
#include <vector>

#include "canary_analysis.hpp"
#include "routing_table.hpp"
#include "table_publisher.hpp"
#include "try_outcome.hpp"

namespace bg {

class ColourTally {
  public:
    // One sample: both colours' figures, the failed tries of the `counted` kinds as errors.
    std::array<ColourFigures, 2> figures(const RoutingTable& table, const DataPlaneLoad& load,
                                         const FailureKinds& counted);

  private:
    // A backend's counters at the last sample that saw it in a colour's pool.
    struct Seen {
        std::uint64_t requests = 0;
        std::array<std::uint64_t, failure_kind_count> failures{};
        std::uint64_t sample = 0;  // that sample (0: none)
    };
    std::array<std::vector<Seen>, 2> seen_;  // by colour, then backend id
    std::array<std::uint64_t, 2> requests_{};
    std::array<std::uint64_t, 2> errors_{};
    std::uint64_t sample_ = 0;
};

}  // namespace bg
