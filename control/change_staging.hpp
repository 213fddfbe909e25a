#pragma once
// Staging: what a state-changing command would make of the routing state. Pure: the same
// state, config and command always give the same staged change, and nothing is applied here
// (the Switchboard persists, publishes and audits what this returns).

#include <optional>
#include <string>

#include "command.hpp"
#include "config.hpp"
#include "routing_state.hpp"

namespace bg {

struct StagedChange {
    RoutingState next;  // meaningful only when error is empty
    std::string note;   // said in the reply: "the ramp in progress was aborted", ...
    std::string error;  // why the command is refused; the state does not change
};

// An operator's command (not reload: that reads the config file; see reconcile_admin).
StagedChange stage_change(const RoutingState& state, const Config& config, const Command& cmd);
// The ramp's next step, taken by the proxy itself.
StagedChange stage_ramp_step(const RoutingState& state);
// Admin states of backends `config` does not have are dropped; returns them, "name (was
// drain)", comma-separated, or empty.
std::string reconcile_admin(RoutingState& state, const Config& config);
// The colour a change gives more traffic to (the one the gate checks), if any.
std::optional<Colour> gaining_colour(const RoutingState& before, const RoutingState& after);

}  // namespace bg
