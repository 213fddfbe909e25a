// The Switchboard in a fleet: changes are committed to the fleet's store before any instance
// serves them, every instance applies the fleet's states as they come, and a change is answered
// once every live member has applied it.

#include <spdlog/spdlog.h>

#include <boost/json.hpp>
#include <utility>

#include "fleet_store.hpp"
#include "switchboard.hpp"

namespace bg {

namespace json = boost::json;

namespace {

json::array names_json(const std::vector<std::string>& names) {
    json::array out;
    for (const auto& n : names) {
        out.emplace_back(n);
    }
    return out;
}

std::string joined(const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names) {
        out += (out.empty() ? "" : ", ") + n;
    }
    return out;
}

// Whether the fleet's state already is the way back `next` (of `kind`) takes: another instance,
// seeing the same backends, took it first.
bool already_in(const RoutingState& fleet, SwitchKind kind, const RoutingState& next) {
    switch (kind) {
        case SwitchKind::failover:
            return fleet.failover.has_value() && fleet.weight_bp == next.weight_bp;
        default:  // the reverts
            for (Colour c : all_colours) {
                if (next.failed[index_of(c)] && !fleet.failed[index_of(c)]) {
                    return false;
                }
            }
            return fleet.weight_bp == next.weight_bp;
    }
}

}  // namespace

void Switchboard::attach_fleet(FleetStore& fleet) {
    fleet_ = &fleet;
    FleetStore::Events events;
    events.state = [this](RoutingState state) { take_fleet_state(std::move(state)); };
    events.reachability = [this](bool reachable, const std::string& why) {
        broadcast(json::object{{"event", "fleet"},
                               {"time", now_iso8601()},
                               {"reachable", reachable},
                               {"change", reachable ? "the fleet store is reachable again"
                                                    : "the fleet store is unreachable: " + why}});
        if (reachable) {
            fleet_reachable_again();
        }
    };
    events.driver = [this] { arm_ramp_timer(); };
    events.restarted = [this] {
        enqueue(Job{internal_origin("fleet store restarted", "fleet"), StoreRestarted{}});
    };
    fleet.start(executor_, std::move(events));
    report_to_fleet();
}

bool Switchboard::store_reachable() const {
    return fleet_ == nullptr || fleet_->reachable();
}

bool Switchboard::drives_ramp() const {
    return fleet_ == nullptr || fleet_->drives_ramp();
}

void Switchboard::fleet_reachable_again() {
    if (durable()) {
        return;
    }
    if (local_only_ && !fleet_bound_) {
        fleet_->refresh();  // --local changes end: the fleet's state replaces them
    } else {
        // A revert applied while it was away goes to the fleet now, not after the retry's
        // second (then the --local changes made above it end, as the fleet's state comes back).
        enqueue(Job{internal_origin("persist retry", "persist"), PersistRetry{}});
    }
}

void Switchboard::take_fleet_state(RoutingState state) {
    const std::string line = "fleet state version " + std::to_string(state.version);
    enqueue(Job{internal_origin(line, "fleet"), FleetState{std::move(state)}});
}

void Switchboard::persist_conflict(Origin origin, RoutingState current) {
    finish(origin, json::object{{"ok", false}});
    take_fleet_state(std::move(current));
}

void Switchboard::report_to_fleet() {
    if (fleet_ != nullptr) {
        fleet_->report(state_, effective_health());
    }
}

// Nothing is served before the fleet has it: a change whose transaction fails is refused, and
// of two instances' changes staged on the same state one wins. A way back (a rollback, a guard's
// revert or failover) does not wait for etcd: it is served before its save, and kept here when
// the save fails (etcd away or hung, or another change first) until the fleet has it.
void Switchboard::commit_to_fleet(Origin origin, Staged staged) {
    auto change = std::make_shared<FleetChange>(std::move(origin), std::move(staged));
    if (change->second.local) {
        if (!durable() && !local_only_) {
            // A revert waits to be written to the fleet: it still is, without this change.
            fleet_bound_ = state_;
        }
        local_only_ = true;
        change->second.next.revision = state_.revision;
        auto table = build_table(*config_, change->second.next, ids_, effective_health(),
                                 config_->rollout.tunnel_drain);
        publish(table, config_, [this, change, table] {
            applied(change->first, std::move(change->second), table);
        });
        return;
    }
    auto on_saved = [this, change](SaveOutcome saved) { fleet_saved(change, std::move(saved)); };
    const bool safety = is_safety_action(change->second.kind);
    if (safety && !store_reachable()) {
        // Known away: a way back applies at once, not after a save that would time out on
        // every endpoint first (seconds of traffic on a failing colour); the persist retry
        // writes it when the store is back.
        SaveOutcome away;
        away.unreachable = true;
        away.error = "the fleet store is unreachable";
        on_saved(std::move(away));
        return;
    }
    if (safety) {
        publish_way_back_now(change->second);
    }
    save_async(change->second.next, durable_, std::move(on_saved));
}

// Served at once: the fleet's answer only says how it is recorded. With etcd hung rather than
// down, it comes after every endpoint's timeout and a read-back (an outside probe: a revert
// served the failing colour 3 to 12 s more, a rollback 12 s).
void Switchboard::publish_way_back_now(const Staged& staged) {
    RoutingState serving = staged.next;
    serving.revision = state_.revision;
    // Kept for a restart meanwhile (the save's own success replaces it, unmarked).
    fleet_->remember(serving, UnwrittenWayBack{durable_, rollback_pending_ ||
                                                             staged.kind == SwitchKind::rollback});
    publish(build_table(*staged.config, serving, ids_, effective_health(staged.held),
                        staged.config->rollout.tunnel_drain_revert),
            staged.config, [] {});
}

// A change's save answered: publish it (committed, or a way back kept here), or refuse it.
void Switchboard::fleet_saved(const std::shared_ptr<FleetChange>& change, SaveOutcome saved) {
    Origin& origin = change->first;
    Staged& staged = change->second;
    if (saved.ok) {
        staged.next.revision = saved.revision;
        durable_ = {staged.next.version, saved.revision};
        persist_error_.clear();
        rollback_pending_ = false;
        local_only_ = false;
        fleet_bound_.reset();
    } else if (is_guard_action(staged.kind) && saved.conflict && saved.current &&
               already_in(*saved.current, staged.kind, staged.next)) {
        // Another instance took the same way back first (they see the same backends): the
        // fleet's state has it. Served as that, not as this instance's unwritten own.
        finish(origin, json::object{{"ok", true}});
        take_fleet_state(std::move(*saved.current));
        return;
    } else if (is_safety_action(staged.kind)) {
        keep_way_back(staged, saved);
    } else if (saved.uncertain) {
        // The answer was lost after etcd had the request: it may stand. Not "nothing
        // changed" (an outside probe: such a flip applied fleet-wide once etcd answered).
        uncertain(origin, saved.error);
        return;
    } else {
        refuse(origin, saved.unreachable
                           ? saved.error + " (changes need the fleet store)"
                           : saved.error + "; run the command again on the current state");
        if (saved.conflict && saved.current) {
            // The fleet moved on without this instance seeing it (its watch may be behind):
            // catch up now, not when the watch says so.
            take_fleet_state(std::move(*saved.current));
        }
        return;
    }
    const RolloutConfig& rollout = staged.config->rollout;
    auto table = build_table(
        *staged.config, staged.next, ids_, effective_health(staged.held),
        is_safety_action(staged.kind) ? rollout.tunnel_drain_revert : rollout.tunnel_drain);
    publish(table, staged.config,
            [this, change, table] { applied(change->first, std::move(change->second), table); });
}

// A way back whose save failed is never refused: the data plane serves it already (published
// before the save). It stays here, not durable, and goes to the fleet when it answers.
void Switchboard::keep_way_back(Staged& staged, SaveOutcome& saved) {
    local_only_ = false;  // this one is written when the store is back
    fleet_bound_.reset();
    const bool lost_race = saved.conflict && saved.current;
    spdlog::error(
        "{} applied on this instance only: {}; {}", to_string(staged.kind), saved.error,
        lost_race ? "staged again on the fleet's state" : "written to the fleet when it answers");
    staged.next.revision = state_.revision;  // still based on the fleet's last state
    persist_error_ = saved.error;
    rollback_pending_ = rollback_pending_ || staged.kind == SwitchKind::rollback;
    fleet_->remember(staged.next, UnwrittenWayBack{durable_, rollback_pending_});
    if (!lost_race) {
        arm_persist_retry();
        return;
    }
    // Another change reached the fleet first: a way back is not given up for it (an outside
    // probe: a revert was dropped for an operator's `set` committed while its save hung). Kept
    // here, it is staged again on the state that won, as one made while the store was away
    // (handle_fleet_state).
    take_fleet_state(std::move(*saved.current));
    enqueue(
        Job{internal_origin("guard check after a conflict", "rollout guard"), GuardCheck{false}});
}

// Another instance's change (or this one's, seen again through the watch).
void Switchboard::handle_fleet_state(Origin origin, const FleetState& fleet_state) {
    RoutingState incoming = fleet_state.state;
    // Under --local changes alone, the fleet's own state is news: it replaces them. A revert
    // waiting to be written (fleet_bound_) is based on that state: only a newer one is news.
    const bool news = durable()                      ? incoming.revision > state_.revision
                      : local_only_ && !fleet_bound_ ? incoming.revision >= durable_.revision
                                                     : incoming.revision > durable_.revision;
    if (!news) {
        finish(origin, json::object{{"ok", true}});  // served already
        return;
    }
    if (std::string dropped = reconcile_admin(incoming, *config_); !dropped.empty()) {
        spdlog::warn("fleet state names backends this instance's config does not have: {}",
                     dropped);
    }
    if (!durable() && (!local_only_ || fleet_bound_) && restage_way_back(origin, incoming)) {
        return;
    }
    local_only_ = false;
    fleet_bound_.reset();
    auto table = build_table(*config_, incoming, ids_, effective_health());
    auto staged = std::make_shared<Staged>(
        Staged{incoming, config_, "committed by another instance", SwitchKind::fleet});
    origin.by = "fleet: " + incoming.changed_by;
    origin.line = incoming.command;
    publish(table, config_, [this, origin = std::move(origin), staged, table]() mutable {
        ++counts_.fleet_states_applied;
        durable_ = {staged->next.version, staged->next.revision};
        rollback_pending_ = false;  // the fleet's state stands
        if (fleet_ != nullptr) {
            fleet_->remember(staged->next);
        }
        applied(origin, std::move(*staged), table);
    });
}

// A way back applied here and not written (while the fleet store was away, or when another
// change reached it first) is not given up for a state committed without it: staged again on
// the fleet's state and written there (without the --local changes made above it). True when
// it was (the job goes on there); false when the fleet's state stands.
bool Switchboard::restage_way_back(Origin& origin, const RoutingState& incoming) {
    const RoutingState local = fleet_bound_ ? *fleet_bound_ : state_;
    fleet_bound_.reset();
    // Not onto a failover, nor a stable colour failing here: all traffic to it would be the
    // worse way (a review); the guard check after the fleet's state judges that.
    const bool stable_serves =
        !incoming.failover &&
        !colour_failed(guard_health(incoming)[index_of(incoming.stable)], config_->rollout);
    for (Colour c : all_colours) {
        if (stable_serves && local.failed[index_of(c)] && !incoming.failed[index_of(c)] &&
            incoming.weight(c) > 0 && c != incoming.stable) {
            state_ = incoming;
            durable_ = {incoming.version, incoming.revision};
            rollback_pending_ = false;  // the revert takes all traffic to stable too
            GuardDecision decision = revert_to_stable(
                incoming, c,
                "reverted on " + fleet_->instance() + " while the fleet store was away");
            apply_guard(std::move(origin), std::move(decision));
            return true;
        }
    }
    if (std::exchange(rollback_pending_, false) && stable_serves &&
        incoming.weight(incoming.stable) < 10000) {
        // An operator's rollback is not given up either: all traffic to the stable colour
        // of the state that won, written there.
        state_ = incoming;
        durable_ = {incoming.version, incoming.revision};
        Command rollback;
        rollback.verb = Verb::rollback;
        RoutingState next = stage_change(incoming, *config_, rollback).next;
        next.failover.reset();  // (as stage() drops it when an operator sets weights)
        commit(std::move(origin),
               Staged{std::move(next), config_,
                      "rolled back on " + fleet_->instance() +
                          " while the fleet store was away: applied again on the fleet's state",
                      SwitchKind::rollback});
        return true;
    }
    if (local.failover && !incoming.failover && local.stable == incoming.stable &&
        incoming.weight(incoming.stable) > 0) {
        // A failover is not given up either while its cause holds: a failing stable colour
        // (its checks), or one that answered nothing (stalled: no check tells when it
        // answers again).
        const auto health = guard_health(incoming);
        const std::string why =
            "failed over on " + fleet_->instance() + " while its save met another change";
        // (Through the guard's own rules: the candidate healthy, not marked failed,
        // rollout.stable_failure.)
        GuardDecision decision = local.failover->stalled
                                     ? fail_over_stalled(incoming, health, config_->rollout, why)
                                     : evaluate_guard(incoming, health, config_->rollout);
        if (decision.kind != SwitchKind::failover) {
            decision.changed = false;
        }
        if (decision.changed) {
            state_ = incoming;
            durable_ = {incoming.version, incoming.revision};
            apply_guard(std::move(origin), std::move(decision));
            return true;
        }
    }
    persist_error_.clear();  // the fleet's state stands (it has the revert, or it is moot)
    return false;
}

void Switchboard::handle_store_restarted(Origin origin) {
    // The state served stays; the fleet's, read afresh, follows this job (an outside probe:
    // after etcd was rebuilt empty, the instances that had not made the first change there
    // ignored it, its revision below theirs, and still counted in its ack).
    state_.revision = 0;
    durable_.revision = 0;
    if (fleet_bound_) {
        fleet_bound_->revision = 0;
    }
    if (!durable() && !local_only_) {
        // A way back waiting to be written: its mark in the state file names the new
        // cluster's revisions too.
        fleet_->remember(fleet_bound_ ? *fleet_bound_ : state_,
                         UnwrittenWayBack{durable_, rollback_pending_});
    } else if (durable()) {
        // The served state is written back to a cluster that has none (a create: a state
        // there, read afresh next, wins), so an instance starting later does not store the
        // config's weights as the fleet's first state (a review).
        durable_.version = 0;
        persist_error_ = "etcd's revisions went back: writing the served state to it again";
        arm_persist_retry();
    }
    report_to_fleet();
    finish(origin, json::object{{"ok", true}});
}

void Switchboard::answer_applied(Origin& origin, json::object reply) {
    if (fleet_ == nullptr || origin.internal || !durable()) {
        report_to_fleet();
        if (local_only_) {
            reply["fleet"] = json::object{{"local", true}};
        } else if (fleet_ != nullptr && !durable()) {
            reply["fleet"] = json::object{{"complete", false},
                                          {"error", "not written to the fleet: " + persist_error_}};
        }
        finish(origin, reply);
        return;
    }
    // The line moves on now; this caller is answered when the fleet has applied the change.
    Reply answer = std::move(origin.reply);
    origin.reply = [](const json::object&) {};
    finish(origin, reply);
    report_to_fleet();
    fleet_->await_applied(state_.revision, [this, answer = std::move(answer),
                                            reply = std::move(reply)](FleetAck ack) mutable {
        reply["fleet"] = json::object{{"revision", ack.revision},
                                      {"complete", ack.complete},
                                      {"applied", names_json(ack.applied)},
                                      {"lagging", names_json(ack.lagging)}};
        if (ack.complete) {
            ++counts_.fleet_acks_complete;
        } else {
            ++counts_.fleet_acks_partial;
            const std::string within = ack.cut_short
                                           ? "before this instance stopped (shutting down)"
                                           : "within fleet.apply_timeout";
            reply["warning"] =
                ack.lagging.empty()
                    ? "committed to the fleet, but no member is known to have applied it " + within
                    : "committed to the fleet, but not applied by every member " + within + ": " +
                          joined(ack.lagging);
        }
        answer(reply);
    });
}

}  // namespace bg
