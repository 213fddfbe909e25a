#pragma once
// Staging: what a state-changing command would make of the routing state. Pure: the same
// state, config and command always give the same staged change, and nothing is applied here
// (the Switchboard persists, publishes and audits what this returns).

#include <map>
#include <optional>
#include <set>
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
// Backends a reload adds: a new name, or a known name at a new address.
std::set<std::string> added_backends(const Config& before, const Config& after);
// Of those, the ones in a pool with active checks: held out of routing until their first check
// passes, as Envoy holds new hosts; an unchecked backend would otherwise take its share of requests
// at once (a blackhole holds them to the try timeout). Not held: those of a colour that takes
// traffic and keeps no healthy, ready backend of its own (holding them would fail the colour and
// trip the guard; they serve at once as before). `health`: the active checks' view, absent =
// healthy.
std::set<std::string> held_for_first_check(const Config& before, const Config& after,
                                           const RoutingState& state,
                                           const std::map<std::string, bool>& health);
// The colour a change gives more traffic to (the one the gate checks), if any.
std::optional<Colour> gaining_colour(const RoutingState& before, const RoutingState& after);

}  // namespace bg
