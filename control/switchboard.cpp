#include "switchboard.hpp"

#include "fleet_store.hpp"
#include "poll_until.hpp"

#include "smoke_gate.hpp"

#include <spdlog/spdlog.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/post.hpp>
#include <boost/json.hpp>
#include <mutex>
#include <thread>
#include <utility>

namespace bg {

namespace json = boost::json;

namespace {

// The process itself, for what it does on its own: ramp steps, health reverts, SIGHUP.
Caller process_caller() {
    Caller self;
    self.uid = static_cast<std::uint32_t>(::geteuid());
    self.gid = static_cast<std::uint32_t>(::getegid());
    self.pid = static_cast<std::int32_t>(::getpid());
    self.role = Role::admin;
    return self;
}

json::object weights_json(const RoutingState& state) {
    return json::object{{"blue", percent_json(state.weight(Colour::blue))},
                        {"green", percent_json(state.weight(Colour::green))}};
}

json::object error_reply(const std::string& message, std::uint64_t version) {
    return json::object{
        {"ok", false}, {"error", message + "; nothing changed"}, {"version", version}};
}

void ignore_reply(const json::object&) {}

// The routing a state sets, without its history (which version, when, by whom, by what).
json::object routing_of(const RoutingState& state) {
    json::object routing = to_json(state);
    for (const char* history : {"version", "revision", "changed_at", "changed_by", "command"}) {
        routing.erase(history);
    }
    return routing;
}

// What a reload cannot change in place, named; empty when nothing.
std::string needs_restart(const Config& current, const Config& fresh) {
    std::string restart;
    // Which listener, by its place in the file: the listeners are matched by their order (two
    // swapped were refused as "listeners", naming none: an outside probe).
    if (fresh.listeners.size() != current.listeners.size()) {
        restart = "listeners (" + std::to_string(fresh.listeners.size()) +
                  " [[listener]] tables, " + std::to_string(current.listeners.size()) + " before)";
    }
    for (std::size_t i = 0; restart.empty() && i < fresh.listeners.size(); ++i) {
        const ListenerConfig& now = fresh.listeners[i];
        const ListenerConfig& before = current.listeners[i];
        if (now.address.text != before.address.text || now.smart_accept != before.smart_accept ||
            now.defer_accept != before.defer_accept || now.send_buffer != before.send_buffer) {
            restart =
                "listeners ([[listener]] " + std::to_string(i + 1) + ", " + now.address.text +
                (now.address.text != before.address.text
                     ? ", was " + before.address.text + ": listeners are matched by their order"
                     : ": its smart_accept, defer_accept or send_buffer") +
                ")";
        }
    }
    if (fresh.limits.buffer_size != current.limits.buffer_size ||
        fresh.upstream.balance != current.upstream.balance ||
        fresh.upstream.max_idle_per_backend != current.upstream.max_idle_per_backend ||
        fresh.upstream.idle_timeout != current.upstream.idle_timeout ||
        fresh.upstream.recheck_after != current.upstream.recheck_after ||
        fresh.upstream.watch_after != current.upstream.watch_after) {
        restart += restart.empty() ? "" : ", ";
        restart += "server.buffer_size or upstream pool settings";
    }
    const FleetConfig& a = current.fleet;
    const FleetConfig& b = fresh.fleet;
    auto texts = [](const FleetConfig& f) {
        std::string out;
        for (const auto& e : f.endpoints) {
            out += e.text + ",";
        }
        return out;
    };
    if (a.name != b.name || a.instance != b.instance || a.prefix != b.prefix ||
        texts(a) != texts(b) || a.etcd_tls != b.etcd_tls || a.lease_ttl != b.lease_ttl ||
        a.request_timeout != b.request_timeout || a.apply_timeout != b.apply_timeout ||
        a.retry_min != b.retry_min || a.retry_max != b.retry_max || a.tls != b.tls) {
        restart += restart.empty() ? "" : ", ";
        restart += "[fleet] settings";
    }
    // Read once at start (the control socket and its roles, the admin listener, the access
    // log's writer, the worker threads): refused rather than kept in silence. Roles above all:
    // a reload that removes an operator must not answer "ok" and leave them in.
    const std::pair<bool, const char*> at_start[] = {
        {fresh.workers != current.workers, "server.workers"},
        {!(fresh.control == current.control), "[control] (socket, roles, audit log)"},
        {fresh.admin_listen != current.admin_listen ||
             fresh.admin_max_connections != current.admin_max_connections,
         "server.admin_listen or admin_max_connections"},
        {!(fresh.access_log == current.access_log), "[access_log]"},
        {fresh.timeouts.shutdown_ready_delay != current.timeouts.shutdown_ready_delay,
         "timeouts.shutdown_ready_delay"},
    };
    for (const auto& [changed, what] : at_start) {
        if (changed) {
            restart += restart.empty() ? "" : ", ";
            restart += what;
        }
    }
    return restart;
}

}  // namespace

// The reader threads' way back to the control thread, closed when the Switchboard goes. The
// threads hold nothing else of the control thread's (no timer, no reply): one that returns
// late, even during the exit, touches no io_context.
struct Switchboard::ConfigReads {
    explicit ConfigReads(boost::asio::any_io_executor control) : executor(std::move(control)) {}
    boost::asio::any_io_executor executor;
    std::mutex lock;
    bool closed = false;
};

Switchboard::Switchboard(boost::asio::any_io_executor executor,
                         std::shared_ptr<const Config> config, std::string config_path,
                         StateStore& store, AuditLog& audit, ConfigOverrides flags)
    : executor_(executor),
      config_(std::move(config)),
      config_path_(std::move(config_path)),
      flags_(std::move(flags)),
      store_(store),
      audit_(audit),
      ramp_timer_(executor),
      sample_timer_(executor),
      failback_timer_(executor),
      persist_timer_(executor),
      persister_(1),
      outlier_(config_->outlier),
      canary_(config_->canary),
      config_reads_(std::make_shared<ConfigReads>(executor)) {}

Switchboard::~Switchboard() {
    stop_posting();
}

void Switchboard::stop_posting() {
    std::lock_guard guard(config_reads_->lock);
    config_reads_->closed = true;  // a reader still stuck in a file posts nothing now
}

bool Switchboard::load(std::string& error) {
    StoreLoad loaded = store_.load();
    if (!loaded.error.empty()) {
        error = loaded.error;
        return false;
    }
    if (loaded.state) {
        state_ = *loaded.state;
        // Reconcile with the config explicitly: admin states of backends the config no longer
        // has are dropped, and said so.
        if (std::string dropped = reconcile_admin(state_, *config_); !dropped.empty()) {
            spdlog::warn(
                "the state file names backends the config does not have: dropping the "
                "admin state of {}",
                dropped);
        }
        spdlog::info("routing state version {} loaded: blue {}%, green {}%, stable {}",
                     state_.version, format_percent(state_.weight(Colour::blue)),
                     format_percent(state_.weight(Colour::green)), to_string(state_.stable));
    } else {
        state_ = initial_state(*config_);
        SaveOutcome saved = store_.save(state_, {});
        if (saved.ok) {
            state_.revision = saved.revision;
        } else if (saved.conflict && saved.current) {
            state_ = *saved.current;  // another instance of the fleet stored the first state
        } else {
            error = saved.error;
            return false;
        }
    }
    durable_ = {state_.version, state_.revision};
    if (loaded.unwritten && store_.shared()) {
        // This instance's own way back, not in the fleet yet: not durable, written by the
        // persist retry (staged again on the fleet's state if that moved on).
        durable_ = loaded.unwritten->base;
        rollback_pending_ = loaded.unwritten->rollback;
        persist_error_ = "applied on this instance before its restart, not yet in the fleet";
        arm_persist_retry();
    }
    table_ = build_table(*config_, state_, ids_, health_);
    return true;
}

Switchboard::Origin Switchboard::internal_origin(std::string line, std::string by) const {
    return Origin{process_caller(), std::move(line), ignore_reply, {}, std::move(by), true};
}

void Switchboard::enqueue(Job job) {
    queue_.push_back(std::move(job));
    run_next();
}

void Switchboard::on_health(const std::string& backend, bool healthy, const std::string& why) {
    enqueue(Job{internal_origin("health " + backend + (healthy ? " up: " : " down: ") + why,
                                "rollout guard"),
                HealthChange{backend, healthy, why}});
}

std::optional<std::chrono::system_clock::time_point> Switchboard::tunnel_deadline(
    Colour colour) const {
    const auto& deadline = tunnel_deadline_[index_of(colour)];
    if (deadline && *deadline > std::chrono::system_clock::now()) {
        return deadline;
    }
    return std::nullopt;
}

// Each colour's backends that serve (healthy by checks and outlier detection, admin ready in
// `state`) of those known: what the guard judges by.
std::array<ColourHealth, 2> Switchboard::guard_health(const RoutingState& state) const {
    std::array<ColourHealth, 2> out{};
    for (Colour c : all_colours) {
        const PoolConfig& pool = c == Colour::blue ? config_->blue : config_->green;
        for (const auto& b : pool.backends) {
            if (awaiting_first_check_.contains(b.name)) {
                continue;  // not known yet: neither failing nor serving
            }
            auto h = health_.find(b.name);
            bool healthy = h == health_.end() || h->second;
            out[index_of(c)].healthy +=
                healthy && state.admin_state(b.name) == AdminState::ready ? 1 : 0;
            out[index_of(c)].total += 1;
        }
    }
    return out;
}

void Switchboard::handle_health(Origin origin, const HealthChange& change) {
    const auto before = guard_health(state_);
    const bool panic_before =
        colour_failed(before[0], config_->rollout) && colour_failed(before[1], config_->rollout);
    health_[change.backend] = change.healthy;
    awaiting_first_check_.erase(change.backend);
    if (change.healthy) {
        down_because_.erase(change.backend);
    } else {
        down_because_[change.backend] = change.why;
    }
    spdlog::info("{}", origin.line);
    broadcast(json::object{{"event", "health"},
                           {"time", now_iso8601()},
                           {"backend", change.backend},
                           {"healthy", change.healthy},
                           {"change", origin.line}});
    GuardDecision decision = evaluate_guard(state_, guard_health(state_), config_->rollout);
    if (decision.changed) {
        if (decision.kind == SwitchKind::failover && panic_before) {
            // Both colours down (a shared dependency, say) and the idle one's checks passed a
            // moment first: the stable colour did not fail on its own, and a 30 s hold on what
            // may be an unvetted release is no guard against its flapping (an outside probe:
            // blue back 0.3 s after green, green kept all traffic for failback_hold).
            panic_failover_began_ = std::chrono::steady_clock::now();
        }
        apply_guard(std::move(origin), std::move(decision));
        return;
    }
    publish_health(std::move(origin));
}

void Switchboard::attach(TablePublisher& publisher) {
    publisher_ = &publisher;
    publisher.on_failure_run([this] { sample(); });
    arm_ramp_timer();
    arm_sample_timer();
    // A failover restored from the state file fails back as one that began here does: the
    // health checker reports only changes, and a stable colour healthy from the start has none.
    consider_failback();
}

std::map<std::string, bool> Switchboard::effective_health(const std::set<std::string>& held) const {
    std::map<std::string, bool> out = health_;
    for (const auto& [name, ejected] : outlier_.ejected_map()) {
        out[name] = false;
    }
    for (const auto& name : held) {
        out[name] = false;
    }
    return out;
}

void Switchboard::adopt_new_backends(const Config& before, const Config& after,
                                     const std::set<std::string>& held) {
    // A pool whose checks a reload turns off, or on, starts without the old verdicts: off,
    // nothing would ever clear a "down"; on, the new probes start healthy and report only a
    // change, so an old "down" would stay.
    for (Colour c : all_colours) {
        const PoolConfig& was = c == Colour::blue ? before.blue : before.green;
        const PoolConfig& now = c == Colour::blue ? after.blue : after.green;
        if (was.health.enabled == now.health.enabled) {
            continue;
        }
        for (const auto& b : now.backends) {
            health_.erase(b.name);
            down_because_.erase(b.name);
            awaiting_first_check_.erase(b.name);
        }
    }
    for (const auto& name : added_backends(before, after)) {
        // A backend back under its old name, or at a new address, is another backend: its
        // failures in a row start afresh (an old run of 4 and one new failure are not 5).
        ids_.failure_run(ids_.id_of(name))->restart();
        if (held.contains(name)) {
            health_[name] = false;
            down_because_[name] = "added by a reload: waiting for its first health check";
            awaiting_first_check_.insert(name);
        } else {
            health_.erase(name);
            down_because_.erase(name);
            awaiting_first_check_.erase(name);
        }
    }
}

namespace {
// The colour a state's canary analysis judges: the one taking traffic (or being ramped onto)
// that is not the stable one.
std::optional<Colour> candidate_in(const RoutingState& state) {
    const Colour candidate = other(state.stable);
    if (state.weight(candidate) > 0 || (state.ramp && state.ramp->colour == candidate)) {
        return candidate;
    }
    return std::nullopt;
}

// Whether the traffic after the change from `before` to `after` is a candidacy of its own for
// canary analysis, not the one before it going on (as through a ramp's steps, a second `set`
// or a flip of the same candidate). Judged on the states, not on the command, so that a fleet
// peer applying the change resets as the instance that made it. A failover's traffic carried
// into a following `set` was judged as the canary's: all backends slow during the failover,
// fast again by the `set`, and green's p99 over the window (92 ms, most of it from the
// failover) against stable's since (3 ms) reverted a healthy green (an outside probe; also
// with `rollback; set` 9 ms apart, within one sample).
bool begins_candidacy(const RoutingState& before, const RoutingState& after) {
    return candidate_in(before) != candidate_in(after) || before.stable != after.stable ||
           before.failover.has_value() || after.failover.has_value();
}
}  // namespace

std::optional<Colour> Switchboard::watched_colour() const {
    return candidate_in(state_);
}

// One sample of the data plane's counters feeds both passive outlier detection and canary
// analysis (one gather across the workers, not one each).
void Switchboard::arm_sample_timer() {
    // Several samples per outlier window, so it slides smoothly; at least four a second, so a
    // stalled backend is ejected within a quarter second of stalled_after; and at least as
    // often as [canary] interval.
    auto tick = std::clamp<Duration>(config_->outlier.window / 10, Duration(100), Duration(250));
    tick = std::min(tick, config_->canary.interval);
    sample_timer_.expires_after(tick);
    sample_timer_.async_wait([this](boost::system::error_code ec) {
        if (!ec) {
            sample();
        }
    });
}

// One sample at a time; asked for during one (a worker's alarm), another follows at once, as
// the one in flight may have gathered before what raised the alarm.
void Switchboard::sample() {
    if (publisher_ == nullptr) {
        return;
    }
    if (sampling_) {
        sample_again_ = true;
        return;
    }
    sampling_ = true;
    sample_timer_.cancel();
    publisher_->gather_load([this](DataPlaneLoad load) {
        sampling_ = false;
        observe_outliers(load);
        observe_canary(load);
        if (std::exchange(sample_again_, false)) {
            sample();
        } else {
            arm_sample_timer();
        }
    });
}

void Switchboard::observe_outliers(const DataPlaneLoad& load) {
    auto verdicts =
        outlier_.observe(*table_, load, OutlierDetector::Clock::now(), watched_colour(), health_);
    if (!verdicts.empty()) {
        enqueue(Job{internal_origin("outlier detection", "rollout guard"),
                    OutlierFindings{std::move(verdicts)}});
    }
}

void Switchboard::observe_canary(const DataPlaneLoad& load) {
    const std::optional<Colour> candidate = watched_colour();
    const CanaryVerdict& verdict = canary_.observe(
        CanaryAnalysis::Clock::now(), tally_.figures(*table_, load, config_->canary.errors),
        candidate, state_.stable);
    // A colour marked failed that takes traffic again (a set, a fleet peer's state) is
    // reverted again: the mark never shields a failing colour from the guard.
    if (verdict.state == CanaryVerdict::State::failing && candidate) {
        enqueue(Job{internal_origin("canary analysis", "rollout guard"), CanaryFailure{verdict}});
    }
}

// A failing verdict, once it reaches the head of the queue: reverted if the colour is still
// the candidate (a command in between may have reverted or promoted it already).
void Switchboard::handle_canary(Origin origin, const CanaryFailure& failure) {
    const CanaryVerdict& verdict = failure.verdict;
    if (!verdict.candidate || watched_colour() != verdict.candidate || state_.failover) {
        // Gone (reverted already), or serving because stable failed: never reverted onto it.
        finish(origin, json::object{{"ok", true}});
        return;
    }
    broadcast(json::object{{"event", "canary"},
                           {"time", now_iso8601()},
                           {"colour", to_string(*verdict.candidate)},
                           {"verdict", to_json(verdict)},
                           {"change", "canary analysis: " + verdict.reason}});
    GuardDecision decision =
        revert_to_stable(state_, *verdict.candidate, "canary analysis: " + verdict.reason);
    decision.kind = SwitchKind::canary_revert;
    apply_guard(std::move(origin), std::move(decision));
}

// While the state on disk is behind the state served: try again every second.
void Switchboard::arm_persist_retry() {
    if (persist_retry_armed_) {
        return;
    }
    persist_retry_armed_ = true;
    persist_timer_.expires_after(std::chrono::seconds(1));
    persist_timer_.async_wait([this](boost::system::error_code ec) {
        persist_retry_armed_ = false;
        if (!ec && !durable()) {
            // In line with the changes, so one save runs at a time and in order.
            enqueue(Job{internal_origin("persist retry", "persist"), PersistRetry{}});
        }
    });
}

void Switchboard::handle_persist_retry(Origin origin) {
    if (durable()) {
        finish(origin, json::object{{"ok", true}});
        return;
    }
    if (local_only_ && !fleet_bound_) {  // --local changes are never written to the fleet
        finish(origin, json::object{{"ok", true}});
        return;
    }
    if (!store_reachable()) {
        // Not a save that waits out every endpoint (seconds with etcd hung) with the line held:
        // a way back after this one would wait behind it (a review). The store's return
        // queues a retry (fleet_reachable_again).
        finish(origin, json::object{{"ok", true}});
        return;
    }
    // Under --local changes, the revert they were made above.
    const RoutingState& unwritten = fleet_bound_ ? *fleet_bound_ : state_;
    const std::uint64_t version = unwritten.version;
    save_async(unwritten, durable_,
               [this, origin = std::move(origin), version](SaveOutcome saved) mutable {
                   if (!saved.ok && saved.conflict && saved.current && store_.shared()) {
                       persist_conflict(std::move(origin), std::move(*saved.current));
                       return;
                   }
                   if (!saved.warning.empty()) {
                       spdlog::error("{}", saved.warning);
                   }
                   if (saved.ok && fleet_bound_ && fleet_bound_->version == version) {
                       // The fleet has the revert; the --local changes end as its state
                       // comes back.
                       spdlog::warn("the revert of version {} is written to the fleet", version);
                       durable_ = {version, saved.revision};
                       fleet_bound_.reset();
                       persist_error_.clear();
                       rollback_pending_ = false;
                       fleet_->refresh();
                   } else if (saved.ok && state_.version == version) {
                       spdlog::warn("routing state version {} is durable again", version);
                       state_.revision = saved.revision;
                       durable_ = {version, saved.revision};
                       persist_error_.clear();
                       rollback_pending_ = false;
                       report_to_fleet();
                   } else if (!saved.ok) {
                       persist_error_ = saved.error;
                       arm_persist_retry();
                   }
                   finish(origin, json::object{{"ok", saved.ok}});
               });
}

// A save in flight outside a fleet: answered once, by the store or by its timeout, whichever
// comes first.
struct Switchboard::PendingSave {
    PendingSave(boost::asio::any_io_executor executor, std::function<void(SaveOutcome)> then)
        : timer(executor), done(std::move(then)) {}
    boost::asio::steady_timer timer;  // control thread
    std::function<void(SaveOutcome)> done;
    bool answered = false;              // control thread
    std::atomic<bool> given_up{false};  // read by the persister
    std::chrono::steady_clock::time_point posted = std::chrono::steady_clock::now();
};

// An fsync takes milliseconds: saves run on their own thread, so publication never waits for
// one. `done` runs on the control thread. Outside a fleet a save is given up on after
// control.disk_timeout, so a stalled disk or mount never holds the control plane (a
// fleet's etcd requests have timeouts of their own).
void Switchboard::save_async(RoutingState next, StoredVersion expected,
                             std::function<void(SaveOutcome)> done) {
    auto guard = boost::asio::make_work_guard(executor_);
    if (store_.shared()) {
        ++saves_running_;
        boost::asio::post(persister_, [this, next = std::move(next), expected,
                                       done = std::move(done), guard = std::move(guard)]() mutable {
            SaveOutcome saved = store_.save(next, expected);
            // What belongs to the control loop goes with the post: after the count drops, this
            // thread touches nothing of it (the exit may be destroying what is pending there).
            boost::asio::post(executor_,
                              [done = std::move(done), saved = std::move(saved),
                               guard = std::move(guard)]() mutable { done(std::move(saved)); });
            --saves_running_;  // after the post: no save in flight means none still posting
        });
        return;
    }
    if (overdue_saves_ > 0) {
        // It would only queue behind the save that has not returned.
        SaveOutcome refused;
        refused.error = stalled_save_error();
        boost::asio::post(
            executor_, [done = std::move(done), refused = std::move(refused)] { done(refused); });
        return;
    }
    expected.whatever_stored = store_unknown_;
    auto pending = std::make_shared<PendingSave>(executor_, std::move(done));
    pending->timer.expires_after(config_->control.disk_timeout);
    pending->timer.async_wait([this, pending](boost::system::error_code ec) {
        if (!ec && !pending->answered) {
            give_up_save(*pending);
        }
    });
    ++saves_running_;
    boost::asio::post(persister_, [this, pending, next = std::move(next), expected,
                                   guard = std::move(guard)]() mutable {
        SaveOutcome saved;
        const bool written = !pending->given_up.load();
        if (written) {
            saved = store_.save(next, expected, &pending->given_up);
        }
        // (pending and guard go with the post, as above)
        boost::asio::post(
            executor_, [this, pending = std::move(pending), written, saved = std::move(saved),
                        guard = std::move(guard)]() mutable {
                if (pending->answered) {
                    late_save(saved, written);
                    return;
                }
                pending->answered = true;
                pending->timer.cancel();
                if (saved.ok && overdue_saves_ == 0) {
                    store_unknown_ = false;  // the persister runs in order: nothing is left behind
                }
                auto done = std::move(pending->done);
                done(std::move(saved));
            });
        --saves_running_;  // after the post: no save in flight means none still posting
    });
}

// The store may still take the save given up on, or not: what it holds is unknown until a
// later save returns in time (saves run in order), and later ones replace whatever it holds.
void Switchboard::give_up_save(PendingSave& save) {
    save.answered = true;
    save.given_up = true;
    if (overdue_saves_++ == 0) {
        stalled_since_ = save.posted;
    }
    store_unknown_ = true;
    persist_error_ = stalled_save_error();
    spdlog::error("{}", persist_error_);
    SaveOutcome outcome;
    outcome.error = persist_error_;
    auto done = std::move(save.done);
    done(std::move(outcome));
}

void Switchboard::late_save(const SaveOutcome& saved, bool written) {
    --overdue_saves_;
    if (written) {
        const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::steady_clock::now() - stalled_since_);
        spdlog::warn("the state-file save given up on returned after {} ms: {}", took.count(),
                     saved.ok ? "written" : saved.error);
    }
    // Whatever it wrote, the state served is written again, in line with the changes.
    arm_persist_retry();
}

// The control loop has stopped: nothing else touches the state now.
bool Switchboard::finish_saves(std::chrono::steady_clock::time_point deadline) {
    auto idle_by_deadline = [this, deadline] {
        return poll_until(deadline, [this] { return saves_running_ == 0; });
    };
    if (!idle_by_deadline()) {
        return false;
    }
    if (store_.shared() || durable()) {
        return true;
    }
    // Not durable (a way back applied while the disk failed, or a save given up on that may
    // have landed): the state served is written now, so a restart serves it.
    auto outcome = std::make_shared<SaveOutcome>();
    StoredVersion whatever;
    whatever.whatever_stored = true;
    ++saves_running_;
    boost::asio::post(persister_, [this, state = state_, whatever, outcome] {
        *outcome = store_.save(state, whatever);
        --saves_running_;
    });
    if (!idle_by_deadline()) {
        return false;
    }
    if (outcome->ok) {
        spdlog::warn("routing state version {} written at exit", state_.version);
    } else {
        spdlog::error("routing state version {} could not be written at exit: {}", state_.version,
                      outcome->error);
    }
    return true;
}

std::string Switchboard::stalled_save_error() const {
    const auto stalled = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - stalled_since_);
    return "the state file has not finished a save for " + std::to_string(stalled.count()) +
           " ms (control.disk_timeout " + std::to_string(config_->control.disk_timeout.count()) +
           " ms): a stalled disk or mount? A rollback or a rollout-guard revert applies all "
           "the same, not durable";
}

void Switchboard::publish(RoutingTablePtr table, std::shared_ptr<const Config> config,
                          std::function<void()> done) {
    if (publisher_ == nullptr) {
        done();
    } else {
        publisher_->publish(std::move(table), std::move(config), std::move(done));
    }
}

// After any change: a failover whose stable colour is healthy again fails back after
// failback_hold of continuous health (auto); a relapse restarts the wait.
void Switchboard::consider_failback() {
    if (!state_.failover) {
        panic_failover_began_.reset();
    }
    const bool due = state_.failover && config_->rollout.failback_auto &&
                     evaluate_failback(state_, guard_health(state_), config_->rollout).changed;
    if (!due) {
        if (failback_armed_) {
            failback_timer_.cancel();
            failback_armed_ = false;
        }
        return;
    }
    if (failback_armed_) {
        return;
    }
    failback_armed_ = true;
    Duration hold = config_->rollout.failback_hold;
    if (panic_failover_began_) {
        hold = std::min(hold, std::chrono::duration_cast<Duration>(
                                  std::chrono::steady_clock::now() - *panic_failover_began_));
    }
    failback_timer_.expires_after(hold);
    failback_timer_.async_wait([this](boost::system::error_code ec) {
        if (ec) {
            return;
        }
        failback_armed_ = false;
        enqueue(Job{internal_origin("failback", "rollout guard"), FailbackDue{}});
    });
}

void Switchboard::handle_failback(Origin origin) {
    GuardDecision decision = evaluate_failback(state_, guard_health(state_), config_->rollout);
    if (!decision.changed || !config_->rollout.failback_auto) {
        finish(origin, json::object{{"ok", true}});
        return;
    }
    apply_guard(std::move(origin), std::move(decision));
}

GuardDecision Switchboard::guard_after(const RoutingState& next) const {
    return evaluate_guard(next, guard_health(next), config_->rollout);
}

// Health is judged on every change, not only when it changes: a colour an operator gives traffic
// to (a set clears its failed mark), a rollback onto a failing stable colour, a drain of the last
// healthy backend, a reload that lowers min_healthy or a fleet peer's state.
void Switchboard::handle_guard_check(Origin origin, const GuardCheck& check) {
    GuardDecision decision = guard_after(state_);
    const bool republish = std::exchange(republish_health_, false);  // (a revert builds its own)
    if (!decision.changed || (check.revert_only && decision.kind != SwitchKind::auto_revert)) {
        if (republish) {
            publish_health(std::move(origin));
            return;
        }
        finish(origin, json::object{{"ok", true}});
        return;
    }
    apply_guard(std::move(origin), std::move(decision));
}

void Switchboard::handle_outlier(Origin origin, const OutlierFindings& findings) {
    const auto& v = findings.verdicts;
    counts_.ejections += v.ejected.size();
    for (const auto& name : v.ejected) {
        spdlog::warn("outlier detection: {} {}", name, v.reasons.at(name));
        ejected_because_[name] = v.reasons.at(name) + " (at " + now_iso8601() + ")";
        broadcast(json::object{{"event", "ejection"},
                               {"time", now_iso8601()},
                               {"backend", name},
                               {"ejected", true},
                               {"change", name + ": " + v.reasons.at(name)}});
    }
    for (const auto& name : v.returned) {
        spdlog::info("outlier detection: {} returns", name);
        ejected_because_.erase(name);
        broadcast(json::object{{"event", "ejection"},
                               {"time", now_iso8601()},
                               {"backend", name},
                               {"ejected", false},
                               {"change", name + " returns"}});
    }
    // Marked failed once; reverted again whenever it takes traffic again while still failing.
    // (Not while it serves for a failing stable colour: never reverted onto that.)
    if (v.failed_colour && *v.failed_colour != state_.stable && !state_.failover &&
        (!state_.failed[index_of(*v.failed_colour)] || watched_colour() == v.failed_colour)) {
        outlier_.reset_window();
        GuardDecision decision = revert_to_stable(state_, *v.failed_colour, v.colour_reason);
        decision.kind = SwitchKind::outlier_revert;
        apply_guard(std::move(origin), std::move(decision));
        return;
    }
    if (v.stalled_stable && *v.stalled_stable == state_.stable) {
        GuardDecision decision =
            fail_over_stalled(state_, guard_health(state_), config_->rollout, v.stable_reason);
        if (decision.changed) {
            outlier_.reset_window();
            apply_guard(std::move(origin), std::move(decision));
            return;
        }
    }
    publish_health(std::move(origin));
}

void Switchboard::apply_guard(Origin origin, GuardDecision decision) {
    spdlog::warn("rollout guard: {}", decision.reason);
    if (decision.next.failover && !state_.failover) {
        decision.next.failover->at = now_iso8601();
    }
    commit(std::move(origin), Staged{decision.next, config_, decision.reason, decision.kind});
}

void Switchboard::publish_health(Origin origin) {
    // Only health changed: a new table, the same routing state.
    auto table = build_table(*config_, state_, ids_, effective_health());
    auto done = [this, origin = std::move(origin), table]() mutable {
        table_ = table;
        report_to_fleet();  // what this instance sees of the backends
        finish(origin, json::object{{"ok", true}});
    };
    if (publisher_ == nullptr) {
        done();
    } else {
        publisher_->publish(table, config_, std::move(done));
    }
}

std::string Switchboard::execute(const Caller& caller, std::string line, Reply reply) {
    Origin origin{caller, std::move(line), std::move(reply), {}, caller.describe(), false};
    ParsedCommand parsed = parse_command(origin.line);
    origin.id = parsed.command && !parsed.command->id.empty() ? parsed.command->id
                                                              : "s" + std::to_string(next_id_++);
    const std::string id = origin.id;
    if (parsed.command && !parsed.command->id.empty()) {
        // The id is a field of its own in the audit record and the reply.
        const std::string token = "--id=" + parsed.command->id;
        const auto at = origin.line.find(token);
        origin.line.erase(at > 0 && origin.line[at - 1] == ' ' ? at - 1 : at,
                          token.size() + (at > 0 && origin.line[at - 1] == ' ' ? 1 : 0));
    }
    if (!parsed.command) {
        // Unparsable input is audited too: it was an attempt to control the proxy.
        if (audits_refusal(caller)) {
            audit_.append(audit_record(origin, "refused", nullptr, parsed.error));
        }
        // A command the proxy cannot read is a usage error (bgctl's exit code 2), whether
        // bgctl's own parser or the proxy's found it.
        json::object reply = error_reply(parsed.error, state_.version);
        reply["usage"] = true;
        origin.reply(reply);
        return id;
    }
    const Command& cmd = *parsed.command;
    if (caller.role < required_role(cmd.verb)) {
        std::string message = std::string("'") + verb_name(cmd.verb) + "' needs the " +
                              to_string(required_role(cmd.verb)) + " role; " + caller.describe() +
                              " has " + to_string(caller.role);
        if (changes_state(cmd.verb) && audits_refusal(caller)) {
            audit_.append(audit_record(origin, "refused", nullptr, message));
        }
        origin.reply(error_reply(message, state_.version));
        return id;
    }
    if (!changes_state(cmd.verb)) {
        answer_read(std::move(origin), cmd);
    } else {
        enqueue(Job{std::move(origin), OperatorCommand{cmd}});
    }
    return id;
}

// Operators' refusals are all audited; a lesser caller's, up to audit_refusals_per_second.
bool Switchboard::audits_refusal(const Caller& caller) {
    if (caller.role >= Role::operate) {
        return true;
    }
    const auto now = std::chrono::steady_clock::now();
    if (now - refusals_since_ >= std::chrono::seconds(1)) {
        if (refusals_unaudited_ > 0) {
            spdlog::warn(
                "{} refused control lines from callers below the operate role were not "
                "audited ([control] audit_refusals_per_second)",
                refusals_unaudited_);
        }
        refusals_since_ = now;
        refusals_audited_ = 0;
        refusals_unaudited_ = 0;
    }
    if (refusals_audited_ < config_->control.audit_refusals_per_second) {
        ++refusals_audited_;
        return true;
    }
    ++refusals_unaudited_;
    return false;
}

void Switchboard::cancel(const Caller& caller, const std::string& id, const std::string& why) {
    // Ids are the callers' own: another caller's command with the same id is not theirs to end.
    auto theirs = [&](const Origin& origin) {
        return !origin.internal && origin.id == id && origin.caller.uid == caller.uid &&
               origin.caller.pid == caller.pid;
    };
    auto cancelled = [&](Origin& origin) {
        audit_.append(audit_record(origin, "cancelled", nullptr, why));
        spdlog::info("command {} ({}) cancelled: {}", origin.id, origin.line, why);
        origin.reply(error_reply("cancelled: " + why, state_.version));
    };
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
        if (theirs(it->origin)) {
            cancelled(it->origin);
            queue_.erase(it);
            return;
        }
    }
    if (auto gate = gates_.find(id); gate != gates_.end() && theirs(gate->second.origin)) {
        cancelled(gate->second.origin);
        gates_.erase(gate);
        return;
    }
    for (auto& [seq, read] : reads_) {  // a reload reading its files
        if (!read.cancelled && theirs(read.origin)) {
            cancelled(read.origin);
            // Its timer runs on: a read that never returns is still known stuck.
            read.cancelled = true;
            return;
        }
    }
}

void Switchboard::reload_from_signal() {
    Origin origin = internal_origin("reload", "SIGHUP");
    origin.reply = [](const json::object& reply) {
        if (reply.at("ok").as_bool()) {
            spdlog::info("SIGHUP reload: {}", json::serialize(reply));
        } else {
            spdlog::error("SIGHUP reload refused: {}", json::serialize(reply));
        }
    };
    Command reload;
    reload.verb = Verb::reload;
    enqueue(Job{std::move(origin), OperatorCommand{reload}});
}

std::uint64_t Switchboard::subscribe(Watcher watcher) {
    watchers_[next_watcher_] = std::move(watcher);
    return next_watcher_++;
}

void Switchboard::unsubscribe(std::uint64_t id) {
    watchers_.erase(id);
}

void Switchboard::broadcast(const json::object& event) {
    // Copy: a watcher may unsubscribe while being told.
    auto watchers = watchers_;
    for (auto& [id, watcher] : watchers) {
        watcher(event);
    }
}

void Switchboard::run_next() {
    if (busy_ || queue_.empty()) {
        return;
    }
    Job job = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    run(std::move(job));
}

void Switchboard::finish(Origin& origin, const json::object& reply) {
    consider_failback();
    origin.reply(reply);
    busy_ = false;
    // Not recursively: let the reply's write start first.
    boost::asio::post(executor_, [this] { run_next(); });
}

void Switchboard::refuse(Origin& origin, const std::string& error) {
    audit_.append(audit_record(origin, "refused", nullptr, error));
    finish(origin, error_reply(error, state_.version));
}

void Switchboard::uncertain(Origin& origin, const std::string& error) {
    audit_.append(audit_record(origin, "uncertain", nullptr, error));
    finish(origin, json::object{{"ok", false},
                                {"uncertain", true},
                                {"error", error + "; not applied here (yet)"},
                                {"version", state_.version}});
}

json::object Switchboard::audit_record(const Origin& origin, const char* result,
                                       const RoutingState* after, const std::string& error) const {
    json::object record{{"time", now_iso8601()},
                        {"uid", origin.caller.uid},
                        {"gid", origin.caller.gid},
                        {"pid", origin.caller.pid},
                        {"role", to_string(origin.caller.role)},
                        {"command", origin.line},
                        {"result", result},
                        {"before", to_json(state_)}};
    if (!origin.id.empty()) {
        record["id"] = origin.id;
    }
    record["after"] = after != nullptr ? json::value(to_json(*after)) : json::value(nullptr);
    if (!error.empty()) {
        record["error"] = error;
    }
    return record;
}

void Switchboard::run(Job job) {
    std::visit(
        [this, &job](auto& work) {
            using W = std::decay_t<decltype(work)>;
            Origin& origin = job.origin;
            if constexpr (std::is_same_v<W, OperatorCommand>) {
                run_command(std::move(origin), work.command);
            } else if constexpr (std::is_same_v<W, GatePassed>) {
                run_gate_passed(std::move(origin), work);
            } else if constexpr (std::is_same_v<W, RampStep>) {
                handle_ramp_step(std::move(origin), work);
            } else if constexpr (std::is_same_v<W, HealthChange>) {
                handle_health(std::move(origin), work);
            } else if constexpr (std::is_same_v<W, OutlierFindings>) {
                handle_outlier(std::move(origin), work);
            } else if constexpr (std::is_same_v<W, CanaryFailure>) {
                handle_canary(std::move(origin), work);
            } else if constexpr (std::is_same_v<W, GuardCheck>) {
                handle_guard_check(std::move(origin), work);
            } else if constexpr (std::is_same_v<W, PersistRetry>) {
                handle_persist_retry(std::move(origin));
            } else if constexpr (std::is_same_v<W, FleetState>) {
                handle_fleet_state(std::move(origin), work);
            } else if constexpr (std::is_same_v<W, StoreRestarted>) {
                handle_store_restarted(std::move(origin));
            } else if constexpr (std::is_same_v<W, ConfigRead>) {
                if (work.seq < newest_read_staged_) {
                    // Reads return in any order: the one begun last wins.
                    count_refused_reload(work.command);
                    refuse(origin,
                           "a later reload read the config files after this one and came first");
                } else {
                    run_staged(std::move(origin), work.command, work.loaded.get(), work.seq);
                }
            } else {
                static_assert(std::is_same_v<W, FailbackDue>);
                handle_failback(std::move(origin));
            }
        },
        job.work);
}

void Switchboard::answer_read(Origin origin, const Command& cmd) {
    switch (cmd.verb) {
        case Verb::status:
            reply_status(std::move(origin));
            return;
        case Verb::help:
            origin.reply(json::object{{"ok", true}, {"help", protocol_help()}});
            return;
        case Verb::history:
            origin.reply(reply_history(cmd));
            return;
        case Verb::watch:
            // The control server streams events itself; here it only answers the first line.
            origin.reply(
                json::object{{"ok", true}, {"watching", true}, {"version", state_.version}});
            return;
        default:
            origin.reply(error_reply("not a read command", state_.version));
    }
}

json::object Switchboard::reply_history(const Command& cmd) const {
    // With --id: that command's records (queued, cancelled, refused, applied) among the last
    // ones kept; else the last N.
    json::array records;
    for (const auto& line : audit_.last(cmd.id.empty() ? cmd.count : 1000)) {
        boost::system::error_code ec;
        json::value value = json::parse(line, ec);
        if (!cmd.id.empty()) {
            const json::value* id =
                ec || !value.is_object() ? nullptr : value.as_object().if_contains("id");
            if (id == nullptr || !id->is_string() || id->as_string() != cmd.id) {
                continue;
            }
        }
        records.push_back(ec ? json::value(line) : value);
    }
    if (!cmd.id.empty() && records.empty()) {
        // An id that matches nothing is most often mistyped: say so rather than print nothing.
        return json::object{
            {"ok", false},
            {"error", "no record of command id " + cmd.id + " among the last 1000 kept"},
            {"version", state_.version}};
    }
    return json::object{{"ok", true}, {"history", std::move(records)}};
}

void Switchboard::run_command(Origin origin, const Command& cmd) {
    if (cmd.verb == Verb::reload && !config_path_.empty() && !cmd.local) {
        read_config(std::move(origin), cmd);
        return;
    }
    run_staged(std::move(origin), cmd, nullptr);
}

// One detached thread per read: one stuck in a stalled mount holds neither the line nor the
// exit.
void Switchboard::read_config(Origin origin, const Command& cmd) {
    if (!stuck_reads_.empty()) {
        const auto stuck = std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::steady_clock::now() - stuck_reads_.begin()->second);
        count_refused_reload(cmd);
        refuse(origin, "a read of the config files has not returned for " +
                           std::to_string(stuck.count()) +
                           " ms (a stalled disk or mount, or a resolver not answering for a "
                           "backend's host name?): reloads are refused until it does");
        return;
    }
    const std::uint64_t seq = ++reads_started_;
    auto timer = std::make_unique<boost::asio::steady_timer>(executor_);
    timer->expires_after(config_->control.disk_timeout);
    timer->async_wait([this, seq](boost::system::error_code ec) {
        if (!ec) {
            config_read_timed_out(seq);
        }
    });
    try {
        std::thread([reads = config_reads_, seq, path = config_path_, flags = flags_, this] {
            auto loaded = std::make_shared<const ConfigResult>(load_config_file(path, flags));
            std::lock_guard guard(reads->lock);
            if (!reads->closed) {
                boost::asio::post(reads->executor,
                                  [this, seq, loaded] { config_read_returned(seq, loaded); });
            }
        }).detach();
    } catch (const std::system_error& e) {  // no thread to be had (a pids limit)
        count_refused_reload(cmd);
        refuse(origin, std::string("cannot start reading the config files: ") + e.what());
        return;
    }
    reads_.emplace(seq, PendingRead{std::move(origin), cmd, std::move(timer),
                                    std::chrono::steady_clock::now(), false});
    busy_ = false;
    boost::asio::post(executor_, [this] { run_next(); });
}

// Outside the line (it moved on): answered and audited here, as a gate's failure.
void Switchboard::config_read_timed_out(std::uint64_t seq) {
    auto it = reads_.find(seq);
    if (it == reads_.end()) {
        return;
    }
    PendingRead read = std::move(it->second);
    reads_.erase(it);
    stuck_reads_.emplace(seq, read.started);
    if (read.cancelled) {
        return;  // answered already
    }
    count_refused_reload(read.command);
    const std::string message =
        "the config files were not read within control.disk_timeout (" +
        std::to_string(config_->control.disk_timeout.count()) +
        " ms): a stalled disk or mount, or a resolver not answering for a backend's host name?";
    audit_.append(audit_record(read.origin, "refused", nullptr, message));
    read.origin.reply(error_reply(message, state_.version));
}

void Switchboard::config_read_returned(std::uint64_t seq,
                                       std::shared_ptr<const ConfigResult> loaded) {
    stuck_reads_.erase(seq);
    auto it = reads_.find(seq);
    if (it == reads_.end()) {
        return;  // given up on, or its caller left: answered already
    }
    PendingRead read = std::move(it->second);
    reads_.erase(it);
    if (!read.cancelled) {
        enqueue(Job{std::move(read.origin), ConfigRead{read.command, std::move(loaded), seq}});
    }
}

void Switchboard::run_staged(Origin origin, const Command& cmd, const ConfigResult* loaded,
                             std::uint64_t read) {
    Staged staged{state_, config_, {}, switch_kind_of(cmd.verb)};
    if (std::string error = stage(cmd, staged, loaded); !error.empty()) {
        if (cmd.verb == Verb::reload) {
            count_refused_reload(cmd);
        }
        refuse(origin, error);
        return;
    }
    if (!cmd.dry_run) {
        // A valid file read later than any other being read: older reads are refused.
        newest_read_staged_ = std::max(newest_read_staged_, read);
    }
    // The pre-promotion gate: a colour about to gain traffic by flip, set or ramp must pass the
    // smoke checks first. Rollback is never gated: it is the way out.
    const std::optional<Colour> gaining = gaining_colour(state_, staged.next);
    if (spec_of(cmd.verb).gated && gaining && !config_->gate.empty() && !cmd.skip_gate) {
        start_gate(std::move(origin), cmd, *gaining);
        return;
    }
    proceed(std::move(origin), cmd, std::move(staged));
}

// The gate runs beside the line: the next job runs at once, and the command comes back in
// line when its checks are done, if nothing cancelled it meanwhile.
void Switchboard::start_gate(Origin origin, const Command& cmd, Colour gaining) {
    const std::string id = origin.id;
    if (gates_.contains(id)) {
        refuse(origin, "a command with id " + id + " is already waiting on its gate");
        return;
    }
    auto basis = std::make_shared<GateBasis>(GateBasis{state_, gaining, gate_target(gaining)});
    // Numbered: a command cancelled while its checks ran may come again with the same id,
    // and the first run's verdict must not answer the second.
    const std::uint64_t run = ++gate_runs_;
    gates_.emplace(id, PendingGate{std::move(origin), cmd, run});
    busy_ = false;
    boost::asio::post(executor_, [this] { run_next(); });
    run_smoke_gate(executor_, *config_, gaining,
                   [this, id, run, basis = std::move(basis)](std::string failure) {
                       gate_done(id, run, basis, failure);
                   });
}

Switchboard::GateTarget Switchboard::gate_target(Colour c) const {
    const PoolConfig& pool = c == Colour::blue ? config_->blue : config_->green;
    GateTarget target{{}, pool.tls, pool.send_proxy_protocol, config_->gate};
    for (const BackendConfig& b : pool.backends) {
        // Resolved: a reload re-resolves names, and a name may now lead elsewhere.
        target.backends.emplace_back(b.name,
                                     b.address.ip + " port " + std::to_string(b.address.port));
    }
    return target;
}

void Switchboard::gate_done(const std::string& id, std::uint64_t run,
                            std::shared_ptr<const GateBasis> basis, const std::string& failure) {
    auto it = gates_.find(id);
    if (it == gates_.end() || it->second.run != run) {
        return;  // cancelled while the checks ran: already answered and audited
    }
    PendingGate pending = std::move(it->second);
    gates_.erase(it);
    if (!failure.empty()) {
        const std::string message = "pre-promotion gate: " + failure;
        audit_.append(audit_record(pending.origin, "refused", nullptr, message));
        pending.origin.reply(error_reply(message, state_.version));
        return;
    }
    enqueue(Job{std::move(pending.origin), GatePassed{pending.command, std::move(basis)}});
}

void Switchboard::run_gate_passed(Origin origin, const GatePassed& passed) {
    // What the gate checked was a change to the state it started on, onto the backends it
    // probed, as it probed them: if another change came first, this one is not applied on
    // top of it unseen. A reload that changed none of it (a config management run's SIGHUP)
    // is no such change.
    const GateBasis& basis = *passed.basis;
    if (routing_of(state_) != routing_of(basis.state)) {
        refuse(origin, "the routing state changed while the gate ran (version " +
                           std::to_string(basis.state.version) + ", now " +
                           std::to_string(state_.version) + "): run the command again");
        return;
    }
    if (gate_target(basis.gaining) != basis.target) {
        refuse(origin, std::string("a reload changed the ") + to_string(basis.gaining) +
                           " backends, their TLS or PROXY settings or the gate's checks while "
                           "the gate ran: run the command again");
        return;
    }
    Staged staged{state_, config_, {}, switch_kind_of(passed.command.verb)};
    if (std::string error = stage(passed.command, staged); !error.empty()) {
        refuse(origin, error);
        return;
    }
    proceed(std::move(origin), passed.command, std::move(staged));
}

void Switchboard::cancel_gates(SwitchKind because) {
    const std::string why =
        std::string("a ") + to_string(because) + " was applied while its gate ran";
    auto cancelled = [&](Origin& origin) {
        audit_.append(audit_record(origin, "cancelled", nullptr, why));
        origin.reply(error_reply("cancelled: " + why, state_.version));
    };
    for (auto& [id, pending] : gates_) {
        cancelled(pending.origin);
    }
    gates_.clear();
    // Those whose gate has passed and that wait in line behind this one: the state they would
    // apply to may be unchanged (a rollback onto the colour already serving), but the operator
    // asked for the way back after them.
    std::erase_if(queue_, [&](Job& job) {
        if (!std::holds_alternative<GatePassed>(job.work)) {
            return false;
        }
        cancelled(job.origin);
        return true;
    });
}

void Switchboard::handle_ramp_step(Origin origin, const RampStep& tick) {
    if (ramp_course() != tick.course || tick.armed != ramp_armings_) {
        // Armed for a course a change replaced while this step waited in line (a new ramp, a
        // pause, a step already taken, even one that led back to the same course): that change
        // armed its own timer.
        finish(origin, json::object{{"ok", true}});
        return;
    }
    StagedChange step = stage_ramp_step(state_);
    if (!step.error.empty()) {
        refuse(origin, step.error);
        return;
    }
    commit(std::move(origin),
           Staged{std::move(step.next), config_, std::move(step.note), SwitchKind::ramp_step});
}

// bgproxy_config_reloads_total{result="refused"} counts reloads, not dry runs (nor does
// "applied" count a dry run that would apply).
void Switchboard::count_refused_reload(const Command& cmd) {
    if (!cmd.dry_run) {
        ++counts_.reloads_refused;
    }
}

void Switchboard::proceed(Origin origin, const Command& cmd, Staged staged) {
    std::string change = describe_change(state_, staged.next);
    const bool config_changed = staged.config != config_;
    if (cmd.dry_run && config_changed) {
        // As applied() says it: a dry run of a reload that adds backends said "no change".
        change = change == "no change" ? "config reloaded" : change + "; config reloaded";
    }
    if (!cmd.dry_run && change == "no change" && is_safety_action(staged.kind)) {
        cancel_gates(staged.kind);  // a rollback onto the colour already serving still cancels
    }
    if (cmd.dry_run || (change == "no change" && !config_changed)) {
        audit_.append(
            audit_record(origin, cmd.dry_run ? "dry-run" : "no-change", &staged.next, {}));
        json::object reply{{"ok", true}, {"id", origin.id}, {"change", change}};
        if (cmd.dry_run) {
            reply["dry_run"] = true;
            reply["would_be"] = to_json(staged.next);
        } else {
            reply["version"] = state_.version;
        }
        if (!staged.note.empty()) {
            // A dry run's note says what applying would do ("first step taken"...).
            reply["note"] = (cmd.dry_run ? "if applied: " : "") + staged.note;
        }
        finish(origin, reply);
        return;
    }
    commit(std::move(origin), std::move(staged));
}

std::string Switchboard::stage(const Command& cmd, Staged& out, const ConfigResult* loaded) {
    if (!cmd.local && local_only_ && store_.shared() && store_reachable() &&
        !is_safety_action(switch_kind_of(cmd.verb))) {
        // Staged on this instance's state, the change would carry its --local changes to the
        // whole fleet. A way back is not held for this: it goes on (and carries them).
        return "this instance still serves --local changes, which the fleet's state replaces "
               "now that the fleet store is back: run the command again in a moment";
    }
    if (cmd.verb == Verb::reload) {
        if (cmd.local) {
            return "--local is not for reload: a reload changes this instance's config only";
        }
        return stage_reload(loaded, out);
    }
    StagedChange change = stage_change(state_, *config_, cmd);
    if (!change.error.empty()) {
        return change.error;
    }
    out.next = std::move(change.next);
    out.note = std::move(change.note);
    if (cmd.local) {
        if (!store_.shared()) {
            return "--local is for an instance of a fleet; this one is not";
        }
        if (store_reachable()) {
            return "--local is for when the fleet store is unreachable; it is reachable: change "
                   "the fleet (without --local)";
        }
        out.local = true;
        out.note =
            "applied to this instance only (--local): the fleet's state replaces it "
            "when the fleet store is back";
    }
    if (out.next.failover && (cmd.verb == Verb::set || out.next.weight_bp != state_.weight_bp ||
                              out.next.stable != state_.stable)) {
        // An operator set weights, or promoted the colour that took over, after a failover:
        // theirs stand, no failback (to a colour that failed and is no longer stable). A `set`
        // to the weights the failover gave ends it too: the operator chose them.
        out.next.failover.reset();
    }
    return judge_by_guard(cmd, out);
}

// A flip, set or ramp the guard would undo at once is refused: it would give traffic to a
// failing colour for as long as one change takes. Anything else is applied and the guard acts
// next (a rollback is the way out; a drain is the operator's to make), as the note says.
std::string Switchboard::judge_by_guard(const Command& cmd, Staged& staged) const {
    const GuardDecision decision = guard_after(staged.next);
    if (!decision.changed) {
        return {};
    }
    if (spec_of(cmd.verb).gated) {
        return "the rollout guard would undo this at once: " + decision.reason;
    }
    staged.note += std::string(staged.note.empty() ? "" : "; ") +
                   "the rollout guard acts next: " + decision.reason;
    return {};
}

std::string Switchboard::stage_reload(const ConfigResult* read, Staged& out) {
    if (config_path_.empty()) {
        return "no config file to reload: bgproxy was started from flags only";
    }
    if (read == nullptr) {  // (run_command sends each reload with a file to read_config)
        return "the config files were not read";
    }
    const ConfigResult& loaded = *read;
    if (!loaded.errors.empty()) {
        std::string message = "the config has errors:";
        for (const auto& e : loaded.errors) {
            message += " " + e.to_string() + ";";
        }
        message.pop_back();
        return message;
    }
    // The flags given at start are applied over the file above; what needs a restart to change
    // stays as it is.
    Config fresh = *loaded.config;
    if (std::string restart = needs_restart(*config_, fresh); !restart.empty()) {
        return "changes to " + restart + " need a restart";
    }
    out.note = "weights kept from the state (the config's weights apply only to a first start)";
    if (std::string dropped = reconcile_admin(out.next, fresh); !dropped.empty()) {
        out.note += "; dropped admin state of backends no longer configured: " + dropped;
        spdlog::warn("reload: {}", out.note);
    }
    out.held = held_for_first_check(*config_, fresh, out.next, effective_health());
    if (!out.held.empty()) {
        std::string names;
        for (const auto& name : out.held) {
            names += (names.empty() ? "" : ", ") + name;
        }
        out.note += "; new backends serve once their first health check passes: " + names;
    }
    out.config = std::make_shared<const Config>(std::move(fresh));
    return {};
}

// Publication and persistence run together: the new table is live on every worker at once
// (WorkerGroup's slot), the save's fsync beside it; the ack waits for both ("acked means live
// and durable").
void Switchboard::commit(Origin origin, Staged staged) {
    RoutingState& next = staged.next;
    next.version = state_.version + 1;
    // A split that goes on keeps its beginning (a ramp's steps, a drain), and so does one a
    // failover interrupts (its failback restores the weights, and the cookies hold again); a
    // new one begins here.
    const bool through_failover = next.failover || state_.failover;
    if (!next.split() && !next.failover) {
        next.split_since = 0;
    } else if ((state_.split() || through_failover) && state_.split_since != 0) {
        next.split_since = state_.split_since;
    } else {
        next.split_since = next.split() ? next.version : 0;
    }
    for (Colour c : all_colours) {
        // Given traffic again (by any change): no longer taken out.
        next.withdrawn[index_of(c)] = next.withdrawn[index_of(c)] && next.weight(c) == 0;
    }
    next.changed_at = now_iso8601();
    next.changed_by = origin.by;
    // Bounded as the audit log bounds it: the state (file, status, every later audit record)
    // carries it.
    next.command = origin.line.substr(0, config_->control.audit_command_max);
    if (store_.shared()) {
        commit_to_fleet(std::move(origin), std::move(staged));
        return;
    }
    if (overdue_saves_ > 0 && !is_safety_action(staged.kind)) {
        refuse(origin, "cannot persist the new state (not applied): " + stalled_save_error());
        return;
    }
    const RolloutConfig& rollout = staged.config->rollout;
    auto table = build_table(
        *staged.config, next, ids_, effective_health(staged.held),
        is_safety_action(staged.kind) ? rollout.tunnel_drain_revert : rollout.tunnel_drain);
    auto change = std::make_shared<Committing>(
        Committing{std::move(origin), std::move(staged), table, false, false, false, {}});
    // Publication first: the save wakes another thread, which must not delay the table.
    publish(table, change->staged.config, [this, change] {
        change->published = true;
        if (change->saved) {
            settle(*change);
        }
    });
    save_async(change->staged.next, durable_, [this, change](SaveOutcome saved) {
        change->saved = true;
        change->save_ok = saved.ok;
        change->save_error = std::move(saved.error);
        if (!saved.warning.empty()) {
            spdlog::error("{}", saved.warning);
            change->staged.note += (change->staged.note.empty() ? "" : "; ") + saved.warning;
        }
        if (change->published) {
            settle(*change);
        }
    });
}

void Switchboard::settle(Committing& change) {
    if (change.save_ok) {
        durable_ = {change.staged.next.version, 0};
        persist_error_.clear();
    } else if (is_safety_action(change.staged.kind)) {
        // A way back must not depend on the disk: applied now, persisted when writing works.
        spdlog::error("{} applied but NOT durable: {}; retrying every second",
                      to_string(change.staged.kind), change.save_error);
        persist_error_ = change.save_error;
        arm_persist_retry();
    } else {
        // Refused: the table before it goes back to the workers first (it was live for as long
        // as the failed save took).
        auto refused = std::make_shared<Committing>(std::move(change));
        publish(table_, config_, [this, refused] {
            refuse(refused->origin, "cannot persist the new state (withdrawn from the workers): " +
                                        refused->save_error);
        });
        return;
    }
    applied(change.origin, std::move(change.staged), change.table);
}

// As each worker does (Worker::follow_share): a colour that loses its whole share has its
// tunnels closed after the table's drain; one that gets a share back keeps them.
void Switchboard::follow_tunnel_deadlines(const RoutingState& next, const RoutingTable& table) {
    for (Colour c : all_colours) {
        if (next.weight(c) > 0) {
            tunnel_deadline_[index_of(c)].reset();
        } else if (state_.weight(c) > 0) {
            tunnel_deadline_[index_of(c)] = std::chrono::system_clock::now() + table.tunnel_drain();
        }
    }
}

// What the change makes new for canary analysis (a candidacy of its own) and outlier detection
// (a colour given a share it did not have): judged on what comes after.
void Switchboard::judge_afresh(const RoutingState& next, const RoutingTable& table) {
    if (begins_candidacy(state_, next)) {
        canary_.reset();
    }
    for (Colour c : all_colours) {
        if (table_->pool(c).weight_bp == 0 && table.pool(c).weight_bp > 0) {
            outlier_.colour_gains_share(c);
        }
    }
}

// Every worker has the new table: the change is live. Audit, answer, tell the watchers.
void Switchboard::applied(Origin& origin, Staged staged, RoutingTablePtr table) {
    const RoutingState& next = staged.next;
    std::string change = describe_change(state_, next);
    if (staged.config != config_) {
        // A reload's own change is its config (an outside probe: a reload that moved a backend
        // answered "no change", so an operator could not tell it from one that read nothing new).
        change = change == "no change" ? "config reloaded" : change + "; config reloaded";
    }
    ++counts_.switches[staged.kind];
    counts_.last_switch_unix =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    if (staged.kind == SwitchKind::reload) {
        ++counts_.reloads_applied;
    }
    follow_tunnel_deadlines(next, *table);
    json::object record = audit_record(origin, "applied", &next, {});
    if (!staged.note.empty()) {
        record["note"] = staged.note;
    }
    if (durable_.version != next.version) {
        record["durable"] = false;
        record["persist_error"] = persist_error_;
    }
    judge_afresh(next, *table);
    state_ = next;
    table_ = std::move(table);
    if (config_ != staged.config) {
        const auto verdicts = effective_health(staged.held);
        adopt_new_backends(*config_, *staged.config, staged.held);
        // The table just published was built on the verdicts before: the guard check after
        // this change publishes one on the new ones.
        republish_health_ = effective_health(staged.held) != verdicts;
        config_ = staged.config;
        outlier_.reconfigure(config_->outlier, *table_);
        canary_.reconfigure(config_->canary);
        if (config_listener_) {
            config_listener_(*config_, staged.held);
        }
    }
    if (is_safety_action(staged.kind)) {
        cancel_gates(staged.kind);
    }
    if (!is_guard_action(staged.kind)) {
        // Before anything else runs: the guard judges the state this change made.
        queue_.push_front(
            Job{internal_origin(std::string("guard check after ") + to_string(staged.kind),
                                "rollout guard"),
                GuardCheck{staged.kind == SwitchKind::fleet}});
    }
    const bool audited = audit_.append(record);
    json::object reply{{"ok", true},
                       {"id", origin.id},
                       {"command", to_string(staged.kind)},
                       {"version", state_.version},
                       {"change", change},
                       {"weights", weights_json(state_)}};
    if (!staged.note.empty()) {
        reply["note"] = staged.note;
    }
    if (!audited) {
        reply["warning"] =
            "the change is applied but its audit record is not written (yet): see the log";
    }
    if (!durable()) {
        reply["durable"] = false;
        reply["warning"] = "applied but not durable (retrying every second): " + persist_error_;
    }
    answer_applied(origin, std::move(reply));
    broadcast(json::object{{"event", "switch"},
                           {"kind", to_string(staged.kind)},
                           {"reason", staged.note},
                           {"time", state_.changed_at},
                           {"by", state_.changed_by},
                           {"version", state_.version},
                           {"change", change},
                           {"weights", weights_json(state_)}});
    arm_ramp_timer();
}

std::optional<Switchboard::RampCourse> Switchboard::ramp_course() const {
    if (!state_.ramp) {
        return std::nullopt;
    }
    return RampCourse{*state_.ramp, state_.weight(state_.ramp->colour)};
}

// After every applied change. One that leaves the ramp where it stands (a reload, a drain, a
// guard check) leaves its step due when it was: re-armed each time, frequent changes would
// hold a ramp back for good.
void Switchboard::arm_ramp_timer() {
    const std::optional<RampCourse> course = ramp_course();
    // (In a fleet, one instance takes the steps; the others apply them.)
    if (!course || course->ramp.paused || publisher_ == nullptr || !drives_ramp()) {
        ramp_timer_.cancel();
        ramp_armed_.reset();
        return;
    }
    if (ramp_armed_ == course) {
        return;
    }
    ramp_timer_.cancel();
    ramp_armed_ = course;
    ramp_timer_.expires_after(course->ramp.every);
    ramp_timer_.async_wait(
        [this, course = *course, armed = ++ramp_armings_](boost::system::error_code ec) {
            if (!ec) {
                ramp_tick(course, armed);
            }
        });
}

// The step waits in line as the timer's: a change applied meanwhile that leaves the course as
// it was arms no other timer, and the step still goes.
void Switchboard::ramp_tick(RampCourse course, std::uint64_t armed) {
    Origin origin = internal_origin("ramp step", "ramp");
    origin.reply = [this](const json::object& reply) {
        if (!reply.at("ok").as_bool()) {
            // Refused (the state could not be saved...): the ramp stays in progress, as status
            // says, and the step is tried again an interval later.
            spdlog::warn("ramp step: {}; trying again in an interval", json::serialize(reply));
            ramp_armed_.reset();
            arm_ramp_timer();
        }
    };
    enqueue(Job{std::move(origin), RampStep{course, armed}});
}

namespace {

std::uint32_t count_of(const std::vector<std::uint32_t>& v, std::uint32_t id) {
    return id < v.size() ? v[id] : 0u;
}

}  // namespace

namespace {

json::value ramp_status(const std::optional<RampState>& ramp) {
    if (!ramp) {
        return nullptr;
    }
    return json::object{{"colour", to_string(ramp->colour)},
                        {"to", percent_json(ramp->to_bp)},
                        {"step", percent_json(ramp->step_bp)},
                        {"every_ms", ramp->every.count()},
                        {"paused", ramp->paused}};
}

}  // namespace

json::object Switchboard::status_colours(const DataPlaneLoad& load) const {
    json::object colours;
    for (Colour c : all_colours) {
        json::array backends;
        std::uint32_t healthy = 0;
        for (const Backend& b : table_->pool(c).backends) {
            healthy += b.healthy ? 1 : 0;
            json::object entry{{"name", b.name},
                               {"address", b.address.text},
                               {"admin", to_string(b.admin)},
                               {"healthy", b.healthy},
                               {"in_flight", count_of(load.in_flight, b.id)},
                               {"upgraded", count_of(load.upgraded, b.id)}};
            if (auto why = down_because_.find(b.name); why != down_because_.end()) {
                entry["check"] = why->second;  // as HAProxy's "last check" says
            }
            if (auto why = ejected_because_.find(b.name);
                why != ejected_because_.end() && outlier_.ejected(b.name)) {
                entry["ejected"] = why->second;  // its checks may pass: down for this
            }
            backends.push_back(std::move(entry));
        }
        const char* role = state_.failed[index_of(c)] ? "failed"
                           : c == state_.stable       ? "stable"
                           : state_.weight(c) > 0 || (state_.ramp && state_.ramp->colour == c)
                               ? "candidate"
                               : "idle";
        colours[to_string(c)] = json::object{{"weight", percent_json(state_.weight(c))},
                                             {"role", role},
                                             {"healthy", healthy},
                                             {"backends", std::move(backends)}};
    }
    return colours;
}

// Tunnels left per colour, and when those of a colour that lost its share close.
json::object Switchboard::status_tunnels(const DataPlaneLoad& load) const {
    json::object tunnels;
    for (Colour c : all_colours) {
        std::uint32_t open = 0;
        for (const Backend& b : table_->pool(c).backends) {
            open += count_of(load.upgraded, b.id);
        }
        const auto deadline = tunnel_deadline(c);
        tunnels[to_string(c)] = json::object{
            {"open", open},
            {"closing_at", deadline ? json::value(format_iso8601(*deadline)) : nullptr}};
    }
    return tunnels;
}

void Switchboard::reply_status(Origin origin) {
    auto build = [this, origin = std::move(origin)](DataPlaneLoad load) mutable {
        json::object reply{{"ok", true},
                           {"version", state_.version},
                           {"changed_at", state_.changed_at},
                           {"changed_by", state_.changed_by},
                           {"last_command", state_.command},
                           {"stable", to_string(state_.stable)},
                           {"panic", table_->panic()},
                           {"colours", status_colours(load)}};
        reply["ramp"] = ramp_status(state_.ramp);
        reply["canary"] = to_json(canary_.verdict());
        reply["durable"] = durable();
        if (!durable()) {
            reply["persist_error"] = persist_error_;
        }
        reply["failover"] = nullptr;
        if (state_.failover) {
            reply["failover"] = json::object{
                {"since", state_.failover->at},
                {"weights", json::object{{"blue", percent_json(state_.failover->weight_bp[0])},
                                         {"green", percent_json(state_.failover->weight_bp[1])}}},
                {"stalled", state_.failover->stalled},
                {"ramp", ramp_status(state_.failover->ramp)},  // to resume at the failback
                {"failback", state_.failover->stalled
                                 ? "manual (bgctl rollback): the stable colour answered nothing"
                             : !config_->rollout.failback_auto ? "manual (bgctl rollback)"
                             : failback_armed_ ? "pending: the stable colour is healthy"
                                               : "when the stable colour is healthy"}};
        }
        reply["waiting"] = json::object{{"queued", queue_.size()}, {"on_gate", gates_.size()}};
        reply["tunnels"] = status_tunnels(load);
        if (fleet_ != nullptr) {
            reply["fleet"] = fleet_->status_json();
        }
        origin.reply(reply);
    };
    if (publisher_ == nullptr) {
        build(DataPlaneLoad{});
    } else {
        publisher_->gather_load(std::move(build));
    }
}

}  // namespace bg
