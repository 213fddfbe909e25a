#include "rollout_guard.hpp"

#include <cmath>

namespace bg {

bool colour_failed(const ColourHealth& health, const RolloutConfig& rollout) {
    if (health.total == 0) {
        return true;
    }
    const double needed = rollout.min_healthy >= 1 ? rollout.min_healthy
                                                   : std::ceil(rollout.min_healthy * health.total);
    return health.healthy < std::max(1.0, needed);
}

GuardDecision revert_to_stable(const RoutingState& state, Colour failed, std::string reason) {
    GuardDecision decision;
    decision.next = state;
    decision.changed = true;
    decision.kind = SwitchKind::auto_revert;
    decision.next.weight_bp[index_of(state.stable)] = 10000;
    decision.next.weight_bp[index_of(failed)] = 0;
    decision.next.failed[index_of(failed)] = true;
    decision.next.ramp.reset();
    decision.next.failover.reset();
    decision.reason = reason + ": all traffic back to the stable colour " + to_string(state.stable);
    return decision;
}

GuardDecision evaluate_guard(const RoutingState& state, const std::array<ColourHealth, 2>& health,
                             const RolloutConfig& rollout) {
    GuardDecision decision;
    decision.next = state;
    const Colour stable = state.stable;
    const Colour candidate = other(stable);
    const bool stable_failed = colour_failed(health[index_of(stable)], rollout);
    const bool candidate_failed = colour_failed(health[index_of(candidate)], rollout);
    const bool candidate_takes_traffic =
        state.weight(candidate) > 0 || (state.ramp && state.ramp->colour == candidate);

    // (Not onto a stable colour that hung everywhere: its checks pass, and it answers nothing.)
    const bool stable_hung = state.failover && state.failover->stalled;
    if (candidate_failed && candidate_takes_traffic && !stable_failed && !stable_hung) {
        const std::string failed = std::string(to_string(candidate)) + " failed (" +
                                   std::to_string(health[index_of(candidate)].healthy) + "/" +
                                   std::to_string(health[index_of(candidate)].total) + " healthy)";
        if (state.failover && state.failover->weight_bp[index_of(candidate)] == 0) {
            // It took traffic only to carry the failover, not as a release under test: all
            // traffic back to the stable colour, as a revert (a safety action, applied even
            // with the store out of reach), but unmarked (an outside probe: an outage of both
            // colours left green marked failed, its alert firing and failover disarmed until
            // `bgctl clear`).
            GuardDecision back =
                revert_to_stable(state, candidate, failed + " while it carried the failover");
            back.next.failed[index_of(candidate)] = state.failed[index_of(candidate)];
            return back;
        }
        return revert_to_stable(state, candidate, failed);
    }
    if (stable_failed && !candidate_failed && !state.failed[index_of(candidate)] &&
        rollout.stable_failure == StableFailurePolicy::failover && state.weight(stable) > 0) {
        decision =
            fail_over(state, std::string("the stable colour ") + to_string(stable) + " failed (" +
                                 std::to_string(health[index_of(stable)].healthy) + "/" +
                                 std::to_string(health[index_of(stable)].total) +
                                 " healthy): " + to_string(candidate) +
                                 " takes all traffic until " + to_string(stable) + " recovers");
    }
    return decision;
}

GuardDecision fail_over(const RoutingState& state, std::string reason) {
    GuardDecision decision;
    decision.next = state;
    decision.changed = true;
    decision.kind = SwitchKind::failover;
    decision.next.failover = FailoverState{state.weight_bp, {}, false, state.ramp};
    decision.next.weight_bp[index_of(other(state.stable))] = 10000;
    decision.next.weight_bp[index_of(state.stable)] = 0;
    decision.next.ramp.reset();
    decision.reason = std::move(reason);
    return decision;
}

GuardDecision fail_over_stalled(const RoutingState& state,
                                const std::array<ColourHealth, 2>& health,
                                const RolloutConfig& rollout, const std::string& why) {
    const Colour stable = state.stable;
    const Colour candidate = other(stable);
    if (state.failover || state.weight(stable) == 0 ||
        rollout.stable_failure != StableFailurePolicy::failover ||
        colour_failed(health[index_of(candidate)], rollout) || state.failed[index_of(candidate)]) {
        GuardDecision unchanged;
        unchanged.next = state;
        return unchanged;
    }
    GuardDecision decision =
        fail_over(state, "the stable colour " + why + ": " + to_string(candidate) +
                             " takes all traffic until an operator's rollback (its checks "
                             "pass: nothing else tells when it answers again)");
    decision.next.failover->stalled = true;
    decision.next.withdrawn[index_of(stable)] = true;  // what waits on it goes to the other
    return decision;
}

GuardDecision evaluate_failback(const RoutingState& state,
                                const std::array<ColourHealth, 2>& health,
                                const RolloutConfig& rollout) {
    GuardDecision decision;
    decision.next = state;
    if (!state.failover || state.failover->stalled ||
        colour_failed(health[index_of(state.stable)], rollout)) {
        return decision;
    }
    decision.changed = true;
    decision.kind = SwitchKind::failback;
    decision.next.weight_bp = state.failover->weight_bp;
    decision.next.ramp = state.failover->ramp;
    decision.next.failover.reset();
    decision.reason = std::string("the stable colour ") + to_string(state.stable) +
                      " is healthy again (" +
                      std::to_string(health[index_of(state.stable)].healthy) + "/" +
                      std::to_string(health[index_of(state.stable)].total) +
                      " healthy): traffic back to the weights before the failover" +
                      (!decision.next.ramp          ? ""
                       : decision.next.ramp->paused ? ", and the paused ramp is back"
                                                    : ", and the ramp resumes");
    return decision;
}

}  // namespace bg
