#include "change_staging.hpp"

#include <algorithm>
#include <set>

namespace bg {

namespace {

// The colour taking most new traffic: the one a flip moves away from.
std::optional<Colour> primary_colour(const RoutingState& state) {
    if (state.weight(Colour::blue) > state.weight(Colour::green)) {
        return Colour::blue;
    }
    if (state.weight(Colour::green) > state.weight(Colour::blue)) {
        return Colour::green;
    }
    return std::nullopt;
}

void set_weight(RoutingState& state, Colour colour, std::uint32_t bp) {
    state.weight_bp[index_of(colour)] = bp;
    state.weight_bp[index_of(other(colour))] = 10000 - bp;
}

// One ramp step from `current` toward `to`, up or down.
std::uint32_t step_toward(std::uint32_t current, std::uint32_t to, std::uint32_t step) {
    return current < to ? std::min(to, current + step)
                        : std::max(to, current > step ? current - step : 0);
}

std::string weights_now(const RoutingState& state) {
    return "(now blue " + format_percent(state.weight(Colour::blue)) + "%, green " +
           format_percent(state.weight(Colour::green)) + "%)";
}

StagedChange refused(std::string why) {
    StagedChange out;
    out.error = std::move(why);
    return out;
}

// A command that sets weights ends a ramp in progress.
void end_ramp(StagedChange& out) {
    if (out.next.ramp) {
        out.next.ramp.reset();
        out.note = "the ramp in progress was aborted";
    }
}

// Traffic given to a colour the rollout guard marked failed clears the mark, as a flip or a
// ramp does: the guard watches the colour again and reverts it again if it still fails.
void rearm_guard(const RoutingState& state, StagedChange& out) {
    for (Colour c : all_colours) {
        if (state.failed[index_of(c)] && out.next.weight(c) > 0) {
            out.next.failed[index_of(c)] = false;
            out.note += std::string(out.note.empty() ? "" : "; ") + to_string(c) +
                        " was marked failed: the rollout guard watches it again";
        }
    }
}

StagedChange stage_ramp(const RoutingState& state, const Command& cmd) {
    StagedChange out{state, {}, {}};
    const std::uint32_t current = state.weight(cmd.colour);
    if (current == cmd.to_bp) {
        return refused(std::string(to_string(cmd.colour)) + " is already at " +
                       format_percent(current) + "%");
    }
    // The first step is taken now; the next ones every interval.
    const std::uint32_t target = step_toward(current, cmd.to_bp, cmd.step_bp);
    set_weight(out.next, cmd.colour, target);
    out.next.failed[index_of(cmd.colour)] = false;
    const RampState planned{cmd.colour, cmd.to_bp, cmd.step_bp, cmd.every, false};
    out.next.ramp = target == cmd.to_bp ? std::nullopt : std::optional<RampState>(planned);
    out.note = out.next.ramp
                   ? "first step taken; next in " + std::to_string(cmd.every.count()) + "ms"
                   : "reached in one step";
    // A ramp in progress, or one a failover stopped (dropped with the failover it ends), gives
    // way to this one: the operator is told.
    if (state.ramp) {
        out.note = std::string(state.ramp->same_plan(planned) ? "restarts" : "replaces") +
                   (state.ramp->paused ? " the paused ramp; " : " the ramp in progress; ") +
                   out.note;
    } else if (state.failover && state.failover->ramp) {
        out.note = "replaces the ramp the failover stopped; " + out.note;
    }
    // `ramp blue to=0` gives its share to green: a failed mark there is cleared as a set's is
    // (the failed role and alert stayed on a colour taking traffic, and no failover went to
    // it).
    rearm_guard(state, out);
    return out;
}

// ramp pause, resume or abort. During a failover, the ramp it stopped (to resume at the
// failback) is the one.
StagedChange stage_ramp_control(const RoutingState& state, Verb verb) {
    StagedChange out{state, {}, {}};
    std::optional<RampState>& ramp =
        state.ramp || !state.failover ? out.next.ramp : out.next.failover->ramp;
    if (!ramp) {
        return refused("no ramp in progress");
    }
    if (verb == Verb::ramp_abort) {
        ramp.reset();
        out.note = state.ramp ? "weights stay where the ramp left them"
                              : "the failback will not resume it";
    } else {
        ramp->paused = verb == Verb::ramp_pause;
    }
    return out;
}

StagedChange stage_admin(const RoutingState& state, const Config& config, const Command& cmd) {
    bool known = false;
    std::string names;
    for (const PoolConfig* pool : {&config.blue, &config.green}) {
        for (const auto& b : pool->backends) {
            known = known || b.name == cmd.backend;
            names += (names.empty() ? "" : ", ") + b.name;
        }
    }
    if (!known) {
        return refused("unknown backend '" + cmd.backend + "' (backends: " + names + ")");
    }
    StagedChange out{state, {}, {}};
    if (cmd.verb == Verb::ready) {
        out.next.admin.erase(cmd.backend);
    } else {
        out.next.admin[cmd.backend] =
            cmd.verb == Verb::drain ? AdminState::drain : AdminState::maint;
    }
    return out;
}

}  // namespace

StagedChange stage_change(const RoutingState& state, const Config& config, const Command& cmd) {
    StagedChange out{state, {}, {}};
    switch (cmd.verb) {
        case Verb::set:
            out.next.weight_bp = {*cmd.blue_bp, *cmd.green_bp};
            end_ramp(out);
            rearm_guard(state, out);
            return out;
        case Verb::flip: {
            const auto from = primary_colour(state);
            if (!from) {
                return refused("flip needs one colour taking most traffic " + weights_now(state) +
                               ": use set");
            }
            set_weight(out.next, other(*from), 10000);
            out.next.failed[index_of(other(*from))] = false;
            end_ramp(out);
            return out;
        }
        case Verb::rollback: {
            // The traffic is taken back because something is wrong with it: what waits on it
            // is cut and retried on stable, as at the guard's revert. Also at the end of a
            // failover: the colour that took over may be the one that hung (only requests
            // already waiting stalled_after for a head are cut).
            const Colour release = other(state.stable);
            const bool had_traffic =
                state.weight(release) > 0 || (state.ramp && state.ramp->colour == release);
            if (had_traffic) {
                out.next.withdrawn[index_of(release)] = true;
            }
            set_weight(out.next, state.stable, 10000);
            end_ramp(out);
            return out;
        }
        case Verb::promote: {
            const auto sole = state.sole_colour();
            if (!sole) {
                return refused("promote needs all traffic on one colour " + weights_now(state) +
                               ": finish the ramp or flip first");
            }
            out.next.stable = *sole;
            out.next.failed[index_of(*sole)] = false;
            return out;
        }
        case Verb::clear:
            // The failed marks the rollout guard set; routing itself does not move.
            if (!state.failed[0] && !state.failed[1]) {
                return refused("no colour is marked failed");
            }
            out.next.failed = {false, false};
            return out;
        case Verb::ramp:
            return stage_ramp(state, cmd);
        case Verb::ramp_pause:
        case Verb::ramp_resume:
        case Verb::ramp_abort:
            return stage_ramp_control(state, cmd.verb);
        case Verb::drain:
        case Verb::maint:
        case Verb::ready:
            return stage_admin(state, config, cmd);
        case Verb::reload:
        case Verb::status:
        case Verb::history:
        case Verb::watch:
        case Verb::help:
            break;
    }
    return refused(std::string("'") + verb_name(cmd.verb) + "' is not staged here");
}

StagedChange stage_ramp_step(const RoutingState& state) {
    if (!state.ramp || state.ramp->paused) {
        return refused("no ramp to step");
    }
    StagedChange out{state, {}, {}};
    const RampState& ramp = *state.ramp;
    const std::uint32_t target = step_toward(state.weight(ramp.colour), ramp.to_bp, ramp.step_bp);
    set_weight(out.next, ramp.colour, target);
    if (target == ramp.to_bp) {
        out.next.ramp.reset();
        out.note = "ramp complete";
    }
    return out;
}

std::string reconcile_admin(RoutingState& state, const Config& config) {
    std::set<std::string> names;
    for (const PoolConfig* pool : {&config.blue, &config.green}) {
        for (const auto& b : pool->backends) {
            names.insert(b.name);
        }
    }
    std::string dropped;
    for (auto it = state.admin.begin(); it != state.admin.end();) {
        if (!names.contains(it->first)) {
            dropped +=
                (dropped.empty() ? "" : ", ") + it->first + " (was " + to_string(it->second) + ")";
            it = state.admin.erase(it);
        } else {
            ++it;
        }
    }
    return dropped;
}

std::set<std::string> added_backends(const Config& before, const Config& after) {
    std::map<std::string, std::string> known;  // name -> address, before the reload
    for (const PoolConfig* pool : {&before.blue, &before.green}) {
        for (const auto& b : pool->backends) {
            known[b.name] = b.address.text;
        }
    }
    std::set<std::string> added;
    for (const PoolConfig* pool : {&after.blue, &after.green}) {
        for (const auto& b : pool->backends) {
            auto k = known.find(b.name);
            if (k == known.end() || k->second != b.address.text) {
                added.insert(b.name);
            }
        }
    }
    return added;
}

std::set<std::string> held_for_first_check(const Config& before, const Config& after,
                                           const RoutingState& state,
                                           const std::map<std::string, bool>& health) {
    const std::set<std::string> new_names = added_backends(before, after);
    std::set<std::string> held;
    for (Colour c : all_colours) {
        const PoolConfig& pool = c == Colour::blue ? after.blue : after.green;
        if (!pool.health.enabled) {
            continue;  // nothing would ever let them in
        }
        std::set<std::string> added;
        unsigned kept_serving = 0;
        for (const auto& b : pool.backends) {
            if (new_names.contains(b.name)) {
                added.insert(b.name);
                continue;
            }
            auto h = health.find(b.name);
            const bool healthy = h == health.end() || h->second;
            kept_serving += healthy && state.admin_state(b.name) == AdminState::ready ? 1 : 0;
        }
        const bool takes_traffic = state.weight(c) > 0 || (state.ramp && state.ramp->colour == c);
        if (takes_traffic && kept_serving == 0) {
            continue;
        }
        held.merge(added);
    }
    return held;
}

std::optional<Colour> gaining_colour(const RoutingState& before, const RoutingState& after) {
    for (Colour c : all_colours) {
        if (after.weight(c) > before.weight(c)) {
            return c;
        }
    }
    return std::nullopt;
}

}  // namespace bg
