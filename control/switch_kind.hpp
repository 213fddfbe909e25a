#pragma once
// What a routing change was, as one closed set (HAProxy keeps its change causes as enums too):
// the operator's verbs and the proxy's own actions. The label is what /metrics, watch and the
// audit log say: snake_case, one word.

#include <cstdint>

#include "verb_table.hpp"

namespace bg {

enum class SwitchKind : std::uint8_t {
    set,
    flip,
    rollback,
    promote,
    clear,
    ramp,
    ramp_step,
    ramp_pause,
    ramp_resume,
    ramp_abort,
    drain,
    maint,
    ready,
    reload,
    auto_revert,     // the rollout guard: the candidate failed its health checks
    outlier_revert,  // the candidate's backends were ejected by outlier detection
    canary_revert,   // canary analysis: the candidate is significantly worse than stable
    failover,        // the stable colour failed: traffic went to the other one for a while
    failback,        // the stable colour is healthy again: the operator's weights return
    fleet,           // another instance of the fleet committed it; this one applied it
};

inline constexpr SwitchKind all_switch_kinds[] = {
    SwitchKind::set,           SwitchKind::flip,
    SwitchKind::rollback,      SwitchKind::promote,
    SwitchKind::clear,         SwitchKind::ramp,
    SwitchKind::ramp_step,     SwitchKind::ramp_pause,
    SwitchKind::ramp_resume,   SwitchKind::ramp_abort,
    SwitchKind::drain,         SwitchKind::maint,
    SwitchKind::ready,         SwitchKind::reload,
    SwitchKind::auto_revert,   SwitchKind::outlier_revert,
    SwitchKind::canary_revert, SwitchKind::failover,
    SwitchKind::failback,      SwitchKind::fleet,
};

const char* to_string(SwitchKind kind);
// The kind an operator's verb makes (ramp_step is the ramp's own).
SwitchKind switch_kind_of(Verb verb);
// A way back to safety: applied even when the state cannot be written, and it cancels
// commands waiting on the gate.
bool is_safety_action(SwitchKind kind);
// The proxy's own decision rather than an operator's.
bool is_guard_action(SwitchKind kind);

}  // namespace bg
