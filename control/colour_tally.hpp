#pragma once
// ColourTally: each colour's cumulative tries and failed tries, as canary analysis compares
// them window by window: summed over the backends in the colour's pool now, each counted from
// the first sample that saw it there. A backend's own counters live as long as the process, so
// one that a reload adds to a colour (again, or moved from the other colour) would otherwise
// bring its whole past into the colour's next window (an outside probe: a re-added backend's
// 295 old failures, made through preview requests before it was removed, reverted a healthy
// release 0.2 s after the reload; old successes would as well hide a real failure).

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
    // A backend's counters when it was first seen in a colour's pool.
    struct Base {
        std::uint64_t requests = 0;
        std::array<std::uint64_t, failure_kind_count> failures{};
        std::uint64_t seen = 0;  // the last sample that saw it in the pool (0: none)
    };
    std::array<std::vector<Base>, 2> bases_;  // by colour, then backend id
    std::uint64_t sample_ = 0;
};

}  // namespace bg
