#pragma once
// RoutingState: the operator-controlled state of a release, the thing the state file keeps.
// Weights, the stable (last known good) colour, failed marks, per-backend admin states and the
// ramp in progress. The RoutingTable the data plane reads is derived from it and the config.

#include <array>
#include <boost/json/value.hpp>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "config.hpp"
#include "routing_table.hpp"

namespace bg {

struct RampState {
    Colour colour = Colour::green;  // the colour gaining weight
    std::uint32_t to_bp = 10000;
    std::uint32_t step_bp = 1000;
    Duration every{std::chrono::seconds(30)};
    bool paused = false;

    bool operator==(const RampState&) const = default;
    // The same colour, target, step and interval, paused or not.
    bool same_plan(const RampState& other) const {
        return colour == other.colour && to_bp == other.to_bp && step_bp == other.step_bp &&
               every == other.every;
    }
};

// Traffic moved off the stable colour because it failed (the rollout guard's failover). The
// stable colour stays stable: when it recovers, traffic returns to these weights.
struct FailoverState {
    std::array<std::uint32_t, 2> weight_bp{10000, 0};  // the operator's weights before it
    std::string at;                                    // ISO 8601 UTC
    // The stable colour hung everywhere, its checks passing: failback is the operator's.
    bool stalled = false;
    // The ramp the failover stopped: the failback resumes it from the weights above.
    std::optional<RampState> ramp{};
};

struct RoutingState {
    std::uint64_t version = 1;
    // In a fleet: the etcd revision that holds this version (its key's mod_revision); the
    // version each instance applied is compared by it. 0 outside a fleet.
    std::int64_t revision = 0;
    std::array<std::uint32_t, 2> weight_bp{10000, 0};
    // The version the current split of traffic (both colours weighted) began at: sticky
    // cookies name it, so one given in an earlier split does not pin a client in this one.
    // 0: no split (or a state from before it was kept).
    std::uint64_t split_since = 0;
    Colour stable = Colour::blue;
    std::array<bool, 2> failed{false, false};
    // Taken out by an operator's rollback (a judgement on the release, as the guard's revert
    // is): requests waiting on it are cut and retried on the stable colour. Until it has
    // traffic again.
    std::array<bool, 2> withdrawn{false, false};
    std::map<std::string, AdminState> admin;  // backends not in the map are ready
    std::optional<RampState> ramp;
    std::optional<FailoverState> failover;
    std::string changed_at;  // ISO 8601 UTC
    std::string changed_by;  // "uid 1000 pid 4242", "config", "ramp"
    std::string command;     // what made this version

    std::uint32_t weight(Colour c) const { return weight_bp[index_of(c)]; }
    bool split() const { return weight_bp[0] > 0 && weight_bp[1] > 0; }
    AdminState admin_state(const std::string& backend) const;
    // The colour with all traffic, if one has it.
    std::optional<Colour> sole_colour() const;
};

// The state of a proxy with no state file: the config's weights; the colour with the larger
// weight (blue on a tie) is the stable one.
RoutingState initial_state(const Config& config);

boost::json::object to_json(const RoutingState& state);
std::optional<RoutingState> routing_state_from_json(const boost::json::value& json,
                                                    std::string& error);

// "blue 90% -> 80%, green 10% -> 20%, blue-2 ready -> drain": what changes between two states.
std::string describe_change(const RoutingState& before, const RoutingState& after);
std::string format_percent(std::uint32_t bp);       // 1250 -> "12.5"
boost::json::value percent_json(std::uint32_t bp);  // 9000 -> 90, 1250 -> 12.5

// A backend's identity for the life of the process, by name: its stable id (indexes per-worker
// arrays) and its run of failures (every table carries the same FailureRun).
class BackendIds {
  public:
    std::uint32_t id_of(const std::string& name);
    const std::shared_ptr<FailureRun>& failure_run(std::uint32_t id);

  private:
    std::unordered_map<std::string, std::uint32_t> ids_;
    std::vector<std::shared_ptr<FailureRun>> runs_;  // by id
};

// The table for the data plane: backends from the config, admin states and weights from the
// state, health from `unhealthy` (names of backends failing their checks).
// `tunnel_drain`: how long tunnels of a colour this table takes the whole share from live on.
RoutingTablePtr build_table(const Config& config, const RoutingState& state, BackendIds& ids,
                            const std::map<std::string, bool>& healthy = {},
                            Duration tunnel_drain = std::chrono::seconds(30));

std::string now_iso8601();
std::string format_iso8601(std::chrono::system_clock::time_point when);  // UTC, milliseconds

}  // namespace bg
