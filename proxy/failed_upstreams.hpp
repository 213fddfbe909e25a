#pragma once
// FailedUpstreams: since when each backend, and each colour, has been out of the routing (a
// backend failing its checks or ejected by outlier detection; a colour the rollout guard
// reverted or an operator rolled back), as the tables a worker applies say. It tells which waiting
// tries to cut: one caught on a hung backend would otherwise wait out upstream_try (10 s) after the
// backend, or its whole release, was taken out. Worker thread only; no I/O.

#include <array>
#include <chrono>
#include <cstdint>
#include <vector>

namespace bg {

class RoutingTable;
struct SessionHandle;

class FailedUpstreams {
  public:
    using Clock = std::chrono::steady_clock;

    // A table was applied at `now`: backends and colours it holds failed start (or keep) their
    // time; those back in it lose theirs. Only where a retry has somewhere to go: a backend
    // whose colour keeps another one taking requests, or whose retry may cross to the other
    // colour (`cross_colour`) while that one has a share; a reverted colour while the other
    // has a share (with none, the reverted one still carries the traffic).
    void follow(const RoutingTable& table, Clock::time_point now, bool cross_colour);

    // Whether the try `session` waits on should be cut now to be retried elsewhere: it may be
    // (idempotent, nothing consumed or relayed), it began before its backend or colour was
    // taken out, and it has waited `after` at least. Tries sent to a failed backend on
    // purpose (panic routing, a preview header naming a colour) are left alone: the session
    // does not mark those retryable.
    bool should_cut(const SessionHandle& session, Clock::time_point now,
                    Clock::duration after) const;

    // The try `session` waits on began before its colour was reverted (not only its backend
    // taken out): its retry goes to the colour that carried the traffic before the release.
    bool colour_reverted_under(const SessionHandle& session) const;

    // The backend's colour is out of the routing now (reverted or rolled back), with the other
    // serving: a try that timed out there is retried whatever the retry budget, as a cut one
    // is. (Not a backend ejected alone: it may be overloaded, and its peers with it.)
    bool colour_out(std::uint32_t backend) const;

    // Any backend or colour is out and the table leaves somewhere else to go.
    bool any() const { return any_ && !panic_; }

  private:
    // Since when the backend's colour is out (epoch: in the routing, or no such backend).
    Clock::time_point colour_since(std::uint32_t backend) const;

    std::vector<Clock::time_point> backend_since_;  // by backend id; epoch: in the routing
    std::vector<std::int8_t> colour_of_;            // by backend id; -1: not in the table
    std::array<Clock::time_point, 2> colour_since_{};
    bool any_ = false;
    bool panic_ = false;
};

}  // namespace bg
