#include "switch_kind.hpp"

namespace bg {

const char* to_string(SwitchKind kind) {
    switch (kind) {
        case SwitchKind::set:
            return "set";
        case SwitchKind::flip:
            return "flip";
        case SwitchKind::rollback:
            return "rollback";
        case SwitchKind::promote:
            return "promote";
        case SwitchKind::clear:
            return "clear";
        case SwitchKind::ramp:
            return "ramp";
        case SwitchKind::ramp_step:
            return "ramp_step";
        case SwitchKind::ramp_pause:
            return "ramp_pause";
        case SwitchKind::ramp_resume:
            return "ramp_resume";
        case SwitchKind::ramp_abort:
            return "ramp_abort";
        case SwitchKind::drain:
            return "drain";
        case SwitchKind::maint:
            return "maint";
        case SwitchKind::ready:
            return "ready";
        case SwitchKind::reload:
            return "reload";
        case SwitchKind::auto_revert:
            return "auto_revert";
        case SwitchKind::outlier_revert:
            return "outlier_revert";
        case SwitchKind::fleet:
            return "fleet";
        case SwitchKind::canary_revert:
            return "canary_revert";
        case SwitchKind::failover:
            return "failover";
        case SwitchKind::failback:
            return "failback";
    }
    return "unknown";
}

SwitchKind switch_kind_of(Verb verb) {
    switch (verb) {
        case Verb::set:
            return SwitchKind::set;
        case Verb::flip:
            return SwitchKind::flip;
        case Verb::rollback:
            return SwitchKind::rollback;
        case Verb::promote:
            return SwitchKind::promote;
        case Verb::clear:
            return SwitchKind::clear;
        case Verb::ramp:
            return SwitchKind::ramp;
        case Verb::ramp_pause:
            return SwitchKind::ramp_pause;
        case Verb::ramp_resume:
            return SwitchKind::ramp_resume;
        case Verb::ramp_abort:
            return SwitchKind::ramp_abort;
        case Verb::drain:
            return SwitchKind::drain;
        case Verb::maint:
            return SwitchKind::maint;
        case Verb::ready:
            return SwitchKind::ready;
        case Verb::reload:
            return SwitchKind::reload;
        case Verb::status:
        case Verb::history:
        case Verb::watch:
        case Verb::help:
            break;
    }
    return SwitchKind::set;  // read verbs make no switch; never asked
}

bool is_safety_action(SwitchKind kind) {
    // Not failback: it returns to the operator's weights, which may be a candidate's.
    return kind == SwitchKind::rollback || kind == SwitchKind::auto_revert ||
           kind == SwitchKind::outlier_revert || kind == SwitchKind::canary_revert ||
           kind == SwitchKind::failover;
}

bool is_guard_action(SwitchKind kind) {
    return kind == SwitchKind::auto_revert || kind == SwitchKind::outlier_revert ||
           kind == SwitchKind::canary_revert || kind == SwitchKind::failover ||
           kind == SwitchKind::failback;
}

}  // namespace bg
