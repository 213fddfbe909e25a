#pragma once
// The rollout guard: what health does to routing. When the colour taking new traffic is not the
// stable one and fails, all traffic goes back to the stable colour at once, and the failed
// colour is marked so until an operator clears it: a reverted candidate never gets traffic back
// by itself. When the stable colour fails, the policy decides (failover or hold); a failover is
// temporary: the stable colour stays stable, and once it has been healthy for failback_hold
// traffic returns to the weights it had (failback "auto"), or waits for an operator.

#include <array>
#include <string>

#include "config.hpp"
#include "routing_state.hpp"
#include "switch_kind.hpp"

namespace bg {

struct ColourHealth {
    unsigned healthy = 0;  // backends passing their checks and not ejected (admin state aside)
    unsigned total = 0;
};

struct GuardDecision {
    bool changed = false;
    RoutingState next;
    SwitchKind kind = SwitchKind::auto_revert;  // auto_revert, failover or failback
    std::string reason;                         // for the audit log, watch and status
};

// Whether a colour counts as failed under rollout.min_healthy.
bool colour_failed(const ColourHealth& health, const RolloutConfig& rollout);

// All traffic to the stable colour, `failed` marked, any ramp aborted: the automatic revert.
GuardDecision revert_to_stable(const RoutingState& state, Colour failed, std::string reason);

GuardDecision evaluate_guard(const RoutingState& state, const std::array<ColourHealth, 2>& health,
                             const RolloutConfig& rollout);

// All traffic to the other colour, the weights before kept for the failback.
GuardDecision fail_over(const RoutingState& state, std::string reason);

// The stable colour answers nothing (`why`, from outlier detection) while its checks pass: a
// failover as for a failing one (by rollout.stable_failure, onto a candidate that is healthy
// and not marked failed), marked stalled, its waiting tries cut. Unchanged when none applies.
// Nothing tells when it answers again, so only an operator's rollback fails back.
GuardDecision fail_over_stalled(const RoutingState& state,
                                const std::array<ColourHealth, 2>& health,
                                const RolloutConfig& rollout, const std::string& why);

// After a failover, with the stable colour healthy again: the weights before it, restored.
// Unchanged when there was no failover, the stable colour is still failed, or it stalled.
GuardDecision evaluate_failback(const RoutingState& state,
                                const std::array<ColourHealth, 2>& health,
                                const RolloutConfig& rollout);

}  // namespace bg
