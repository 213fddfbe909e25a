#include "switchboard.hpp"

#include "smoke_gate.hpp"

#include <spdlog/spdlog.h>

#include <unistd.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/json.hpp>
#include <set>

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

constexpr std::string_view ramp_step_line = "ramp step";
constexpr std::string_view sighup_line = "reload";
constexpr std::string_view health_line = "health";

json::object weights_json(const RoutingState& state) {
    return json::object{{"blue", percent_json(state.weight(Colour::blue))},
                        {"green", percent_json(state.weight(Colour::green))}};
}

json::object error_reply(const std::string& message, std::uint64_t version) {
    return json::object{
        {"ok", false}, {"error", message + "; nothing changed"}, {"version", version}};
}

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

}  // namespace

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
      outlier_(config_->outlier),
      canary_(config_->canary) {}

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
        std::set<std::string> names;
        for (const PoolConfig* pool : {&config_->blue, &config_->green}) {
            for (const auto& b : pool->backends) {
                names.insert(b.name);
            }
        }
        for (auto it = state_.admin.begin(); it != state_.admin.end();) {
            if (!names.contains(it->first)) {
                spdlog::warn(
                    "state file names backend '{}' ({}), which the config does not have: "
                    "dropping its admin state",
                    it->first, to_string(it->second));
                it = state_.admin.erase(it);
            } else {
                ++it;
            }
        }
        spdlog::info("routing state version {} loaded: blue {}%, green {}%, stable {}",
                     state_.version, format_percent(state_.weight(Colour::blue)),
                     format_percent(state_.weight(Colour::green)), to_string(state_.stable));
    } else {
        state_ = initial_state(*config_);
        if (!store_.save(state_, 0, error)) {
            return false;
        }
    }
    durable_version_ = state_.version;
    table_ = build_table(*config_, state_, ids_, health_);
    return true;
}

void Switchboard::on_health(const std::string& backend, bool healthy, const std::string& why) {
    const Caller self = process_caller();
    Job job{self, std::string(health_line) + " " + backend + (healthy ? " up: " : " down: ") + why,
            [](const json::object&) {}, true};
    job.backend = backend;
    job.healthy = healthy;
    job.why = why;
    queue_.push_back(std::move(job));
    run_next();
}

std::array<std::pair<unsigned, unsigned>, 2> Switchboard::colour_health() const {
    std::array<std::pair<unsigned, unsigned>, 2> out{};
    for (Colour c : all_colours) {
        const PoolConfig& pool = c == Colour::blue ? config_->blue : config_->green;
        for (const auto& b : pool.backends) {
            auto h = health_.find(b.name);
            bool healthy = h == health_.end() || h->second;
            out[index_of(c)].first +=
                healthy && state_.admin_state(b.name) == AdminState::ready ? 1 : 0;
            out[index_of(c)].second += 1;
        }
    }
    return out;
}

void Switchboard::handle_health(Job job) {
    health_[job.backend] = job.healthy;
    if (job.healthy) {
        down_because_.erase(job.backend);
    } else {
        down_because_[job.backend] = job.why;
    }
    spdlog::info("{}", job.line);
    broadcast(json::object{{"event", "health"},
                           {"time", now_iso8601()},
                           {"backend", job.backend},
                           {"healthy", job.healthy},
                           {"change", job.line}});
    GuardDecision decision = evaluate_guard(state_, guard_health(), config_->rollout);
    if (decision.changed) {
        apply_guard(std::move(job), std::move(decision));
        return;
    }
    publish_health(std::move(job));
}

void Switchboard::attach(TablePublisher& publisher) {
    publisher_ = &publisher;
    arm_ramp_timer();
    arm_sample_timer();
}

std::map<std::string, bool> Switchboard::effective_health() const {
    std::map<std::string, bool> out = health_;
    for (const auto& [name, ejected] : outlier_.ejected_map()) {
        out[name] = false;
    }
    return out;
}

std::optional<Colour> Switchboard::watched_colour() const {
    const Colour candidate = other(state_.stable);
    if (state_.weight(candidate) > 0 || (state_.ramp && state_.ramp->colour == candidate)) {
        return candidate;
    }
    return std::nullopt;
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
        if (ec || publisher_ == nullptr) {
            return;
        }
        publisher_->gather_load([this](DataPlaneLoad load) {
            observe_outliers(load);
            observe_canary(load);
            arm_sample_timer();
        });
    });
}

void Switchboard::observe_outliers(const DataPlaneLoad& load) {
    auto verdicts =
        outlier_.observe(*table_, load, OutlierDetector::Clock::now(), watched_colour(), health_);
    if (!verdicts.empty()) {
        Job job{process_caller(), "outlier detection", [](const json::object&) {}, true};
        job.outlier = std::move(verdicts);
        queue_.push_back(std::move(job));
        run_next();
    }
}

void Switchboard::observe_canary(const DataPlaneLoad& load) {
    const std::optional<Colour> candidate = watched_colour();
    const CanaryVerdict& verdict = canary_.observe(CanaryAnalysis::Clock::now(),
                                                   colour_figures(load), candidate, state_.stable);
    if (verdict.state == CanaryVerdict::State::failing && candidate &&
        !state_.failed[index_of(*candidate)]) {
        Job job{process_caller(), "canary analysis", [](const json::object&) {}, true};
        job.canary = verdict;
        queue_.push_back(std::move(job));
        run_next();
    }
}

std::array<ColourFigures, 2> Switchboard::colour_figures(const DataPlaneLoad& load) const {
    std::array<ColourFigures, 2> out;
    for (Colour c : all_colours) {
        ColourFigures& f = out[index_of(c)];
        for (const Backend& b : table_->pool(c).backends) {
            f.requests += b.id < load.requests.size() ? load.requests[b.id] : 0;
            if (b.id < load.failure_kinds.size()) {
                for (std::size_t k = 0; k < failure_kind_count; ++k) {
                    f.errors += config_->canary.errors[k] ? load.failure_kinds[b.id][k] : 0;
                }
            }
        }
        f.latency = load.traffic.request_duration[index_of(c)];
    }
    return out;
}

// A failing verdict, once it reaches the head of the queue: reverted if the colour is still
// the candidate (a command in between may have reverted or promoted it already).
void Switchboard::handle_canary(Job job) {
    const CanaryVerdict& verdict = *job.canary;
    if (!verdict.candidate || watched_colour() != verdict.candidate ||
        state_.failed[index_of(*verdict.candidate)] || state_.failover) {
        // Gone, already failed, or serving because stable failed: never reverted onto it.
        finish(job, json::object{{"ok", true}});
        return;
    }
    broadcast(json::object{{"event", "canary"},
                           {"time", now_iso8601()},
                           {"colour", to_string(*verdict.candidate)},
                           {"verdict", to_json(verdict)},
                           {"change", "canary analysis: " + verdict.reason}});
    job.backend = "canary";  // reported as the rollout guard
    GuardDecision decision =
        revert_to_stable(state_, *verdict.candidate, "canary analysis: " + verdict.reason);
    decision.kind = "canary_revert";
    apply_guard(std::move(job), std::move(decision));
}

bool Switchboard::is_safety_action(const std::string& kind) {
    return kind == "rollback" || kind == "auto_revert" || kind == "canary_revert" ||
           kind == "failover";
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
        if (ec || durable_version_ == state_.version) {
            return;
        }
        std::string error;
        if (store_.save(state_, durable_version_, error)) {
            spdlog::warn("routing state version {} is durable again", state_.version);
            durable_version_ = state_.version;
            persist_error_.clear();
        } else {
            persist_error_ = error;
            arm_persist_retry();
        }
    });
}

std::array<ColourHealth, 2> Switchboard::guard_health() const {
    auto counts = colour_health();
    return {ColourHealth{counts[0].first, counts[0].second},
            ColourHealth{counts[1].first, counts[1].second}};
}

// After any change: a failover whose stable colour is healthy again fails back after
// failback_hold of continuous health (auto); a relapse restarts the wait.
void Switchboard::consider_failback() {
    const bool due = state_.failover && config_->rollout.failback_auto &&
                     evaluate_failback(state_, guard_health(), config_->rollout).changed;
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
    failback_timer_.expires_after(config_->rollout.failback_hold);
    failback_timer_.async_wait([this](boost::system::error_code ec) {
        if (ec) {
            return;
        }
        failback_armed_ = false;
        Job job{process_caller(), "failback", [](const json::object&) {}, true};
        job.failback = true;
        queue_.push_back(std::move(job));
        run_next();
    });
}

void Switchboard::handle_failback(Job job) {
    GuardDecision decision = evaluate_failback(state_, guard_health(), config_->rollout);
    if (!decision.changed || !config_->rollout.failback_auto) {
        finish(job, json::object{{"ok", true}});
        return;
    }
    apply_guard(std::move(job), std::move(decision));
}

void Switchboard::handle_outlier(Job job) {
    const auto& v = *job.outlier;
    counts_.ejections += v.ejected.size();
    for (const auto& name : v.ejected) {
        spdlog::warn("outlier detection: {} {}", name, v.reasons.at(name));
        broadcast(json::object{{"event", "ejection"},
                               {"time", now_iso8601()},
                               {"backend", name},
                               {"ejected", true},
                               {"change", name + ": " + v.reasons.at(name)}});
    }
    for (const auto& name : v.returned) {
        spdlog::info("outlier detection: {} returns", name);
        broadcast(json::object{{"event", "ejection"},
                               {"time", now_iso8601()},
                               {"backend", name},
                               {"ejected", false},
                               {"change", name + " returns"}});
    }
    if (v.failed_colour && !state_.failed[index_of(*v.failed_colour)] &&
        *v.failed_colour != state_.stable) {
        outlier_.reset_window();
        job.backend = "outlier";  // reported as the rollout guard
        apply_guard(std::move(job), revert_to_stable(state_, *v.failed_colour, v.colour_reason));
        return;
    }
    publish_health(std::move(job));
}

void Switchboard::apply_guard(Job job, GuardDecision decision) {
    spdlog::warn("rollout guard: {}", decision.reason);
    if (decision.next.failover && !state_.failover) {
        decision.next.failover->at = now_iso8601();
    }
    Staged staged{decision.next, config_, decision.reason, decision.kind};
    commit(std::move(job), decision.kind, std::move(staged));
}

void Switchboard::publish_health(Job job) {
    // Only health changed: a new table, the same routing state.
    auto table = build_table(*config_, state_, ids_, effective_health());
    auto done = [this, job = std::move(job), table]() mutable {
        table_ = table;
        finish(job, json::object{{"ok", true}});
    };
    if (publisher_ == nullptr) {
        done();
    } else {
        publisher_->publish(table, config_, std::move(done));
    }
}

void Switchboard::execute(const Caller& caller, std::string line, Reply reply) {
    queue_.push_back(Job{caller, std::move(line), std::move(reply)});
    run_next();
}

void Switchboard::reload_from_signal() {
    const Caller self = process_caller();
    queue_.push_back(Job{self, std::string(sighup_line),
                         [](const json::object& reply) {
                             if (reply.at("ok").as_bool()) {
                                 spdlog::info("SIGHUP reload: {}", json::serialize(reply));
                             } else {
                                 spdlog::error("SIGHUP reload refused: {}", json::serialize(reply));
                             }
                         },
                         true});
    run_next();
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

void Switchboard::finish(Job& job, const json::object& reply) {
    consider_failback();
    job.reply(reply);
    busy_ = false;
    // Not recursively: let the reply's write start first.
    boost::asio::post(executor_, [this] { run_next(); });
}

json::object Switchboard::audit_record(const Job& job, const char* result,
                                       const RoutingState* after, const std::string& error) const {
    json::object record{{"time", now_iso8601()},
                        {"uid", job.caller.uid},
                        {"gid", job.caller.gid},
                        {"pid", job.caller.pid},
                        {"role", to_string(job.caller.role)},
                        {"command", job.line},
                        {"result", result},
                        {"before", to_json(state_)}};
    record["after"] = after != nullptr ? json::value(to_json(*after)) : json::value(nullptr);
    if (!error.empty()) {
        record["error"] = error;
    }
    return record;
}

void Switchboard::run(Job job) {
    if (job.internal && job.canary) {
        handle_canary(std::move(job));
        return;
    }
    if (job.internal && job.failback) {
        handle_failback(std::move(job));
        return;
    }
    if (job.internal && job.outlier) {
        handle_outlier(std::move(job));
        return;
    }
    if (job.internal && !job.backend.empty()) {
        handle_health(std::move(job));
        return;
    }
    ParsedCommand parsed;
    if (job.internal && job.line == ramp_step_line) {
        parsed.command.emplace();
        parsed.command->verb = Verb::ramp;
    } else {
        parsed = parse_command(job.line);
    }
    if (!parsed.command) {
        // Unparsable input is audited too: it was an attempt to control the proxy.
        audit_.append(audit_record(job, "refused", nullptr, parsed.error));
        finish(job, error_reply(parsed.error, state_.version));
        return;
    }
    Command cmd = *parsed.command;
    if (!job.internal && job.caller.role < required_role(cmd.verb)) {
        std::string message = std::string("'") + verb_name(cmd.verb) + "' needs the " +
                              to_string(required_role(cmd.verb)) + " role; " +
                              job.caller.describe() + " has " + to_string(job.caller.role);
        if (changes_state(cmd.verb)) {
            audit_.append(audit_record(job, "refused", nullptr, message));
        }
        finish(job, error_reply(message, state_.version));
        return;
    }
    switch (cmd.verb) {
        case Verb::status:
            reply_status(std::move(job));
            return;
        case Verb::help:
            finish(job, json::object{{"ok", true}, {"help", protocol_help()}});
            return;
        case Verb::history: {
            json::array records;
            for (const auto& line : audit_.last(cmd.count)) {
                boost::system::error_code ec;
                auto value = json::parse(line, ec);
                records.push_back(ec ? json::value(line) : value);
            }
            finish(job, json::object{{"ok", true}, {"history", std::move(records)}});
            return;
        }
        case Verb::watch:
            // The control server streams events itself; here it only answers the first line.
            finish(job,
                   json::object{{"ok", true}, {"watching", true}, {"version", state_.version}});
            return;
        default:
            break;
    }

    Staged staged{state_, config_, {}, verb_name(cmd.verb)};
    if (job.internal && job.line == ramp_step_line) {
        staged.kind = "ramp_step";
    }
    std::string error = stage(cmd, job.caller, staged);
    if (error.empty() && staged.next.failover && staged.next.weight_bp != state_.weight_bp) {
        // An operator (or the ramp) set weights after a failover: theirs stand, no failback.
        staged.next.failover.reset();
    }
    if (!error.empty() && cmd.verb == Verb::reload) {
        ++counts_.reloads_refused;
    }
    if (!error.empty()) {
        audit_.append(audit_record(job, "refused", nullptr, error));
        finish(job, error_reply(error, state_.version));
        return;
    }
    // The pre-promotion gate: a colour about to gain traffic by flip, set or ramp must pass the
    // smoke checks first. Rollback is never gated: it is the way out.
    std::optional<Colour> gaining;
    if ((cmd.verb == Verb::flip || cmd.verb == Verb::set || cmd.verb == Verb::ramp) &&
        staged.kind != "ramp_step") {
        for (Colour c : all_colours) {
            if (staged.next.weight(c) > state_.weight(c)) {
                gaining = c;
            }
        }
    }
    if (gaining && !config_->gate.empty() && !cmd.skip_gate) {
        run_smoke_gate(executor_, *config_, *gaining,
                       [this, job = std::move(job), cmd,
                        staged = std::move(staged)](std::string failure) mutable {
                           if (!failure.empty()) {
                               std::string message = "pre-promotion gate: " + failure;
                               audit_.append(audit_record(job, "refused", nullptr, message));
                               finish(job, error_reply(message, state_.version));
                               return;
                           }
                           proceed(std::move(job), cmd, std::move(staged));
                       });
        return;
    }
    proceed(std::move(job), cmd, std::move(staged));
}

void Switchboard::proceed(Job job, const Command& cmd, Staged staged) {
    const std::string change = describe_change(state_, staged.next);
    const bool config_changed = staged.config != config_;
    if (cmd.dry_run) {
        audit_.append(audit_record(job, "dry-run", &staged.next, {}));
        json::object reply{{"ok", true},
                           {"dry_run", true},
                           {"change", change},
                           {"would_be", to_json(staged.next)}};
        if (!staged.note.empty()) {
            reply["note"] = staged.note;
        }
        finish(job, reply);
        return;
    }
    if (change == "no change" && !config_changed) {
        audit_.append(audit_record(job, "no-change", &staged.next, {}));
        json::object reply{{"ok", true}, {"change", change}, {"version", state_.version}};
        if (!staged.note.empty()) {
            reply["note"] = staged.note;
        }
        finish(job, reply);
        return;
    }
    commit(std::move(job), verb_name(cmd.verb), std::move(staged));
}

std::string Switchboard::stage(const Command& cmd, const Caller& caller, Staged& out) {
    RoutingState& next = out.next;
    (void)caller;
    switch (cmd.verb) {
        case Verb::set: {
            next.weight_bp = {*cmd.blue_bp, *cmd.green_bp};
            if (next.ramp) {
                next.ramp.reset();
                out.note = "the ramp in progress was aborted";
            }
            return {};
        }
        case Verb::flip: {
            auto from = primary_colour(state_);
            if (!from) {
                return "flip needs one colour taking most traffic (now blue " +
                       format_percent(state_.weight(Colour::blue)) + "%, green " +
                       format_percent(state_.weight(Colour::green)) + "%): use set";
            }
            Colour to = other(*from);
            set_weight(next, to, 10000);
            next.failed[index_of(to)] = false;
            if (next.ramp) {
                next.ramp.reset();
                out.note = "the ramp in progress was aborted";
            }
            return {};
        }
        case Verb::rollback: {
            set_weight(next, state_.stable, 10000);
            if (next.ramp) {
                next.ramp.reset();
                out.note = "the ramp in progress was aborted";
            }
            return {};
        }
        case Verb::promote: {
            auto sole = state_.sole_colour();
            if (!sole) {
                return "promote needs all traffic on one colour (now blue " +
                       format_percent(state_.weight(Colour::blue)) + "%, green " +
                       format_percent(state_.weight(Colour::green)) +
                       "%): finish the ramp or flip first";
            }
            next.stable = *sole;
            next.failed[index_of(*sole)] = false;
            return {};
        }
        case Verb::clear: {
            // The failed marks the rollout guard set; routing itself does not move.
            if (!state_.failed[0] && !state_.failed[1]) {
                return "no colour is marked failed";
            }
            next.failed = {false, false};
            return {};
        }
        case Verb::ramp: {
            if (out.kind == "ramp_step") {
                if (!state_.ramp || state_.ramp->paused) {
                    return "no ramp to step";
                }
                const RampState& ramp = *state_.ramp;
                std::uint32_t current = state_.weight(ramp.colour);
                std::uint32_t target =
                    current < ramp.to_bp
                        ? std::min(ramp.to_bp, current + ramp.step_bp)
                        : std::max(ramp.to_bp, current > ramp.step_bp ? current - ramp.step_bp : 0);
                set_weight(next, ramp.colour, target);
                if (target == ramp.to_bp) {
                    next.ramp.reset();
                    out.note = "ramp complete";
                }
                return {};
            }
            std::uint32_t current = state_.weight(cmd.colour);
            if (current == cmd.to_bp) {
                return std::string(to_string(cmd.colour)) + " is already at " +
                       format_percent(current) + "%";
            }
            RampState ramp{cmd.colour, cmd.to_bp, cmd.step_bp, cmd.every, false};
            // The first step is taken now; the next ones every interval.
            std::uint32_t target =
                current < cmd.to_bp
                    ? std::min(cmd.to_bp, current + cmd.step_bp)
                    : std::max(cmd.to_bp, current > cmd.step_bp ? current - cmd.step_bp : 0);
            set_weight(next, cmd.colour, target);
            next.failed[index_of(cmd.colour)] = false;
            next.ramp = target == cmd.to_bp ? std::nullopt : std::optional<RampState>(ramp);
            out.note = next.ramp
                           ? "first step taken; next in " + std::to_string(cmd.every.count()) + "ms"
                           : "reached in one step";
            return {};
        }
        case Verb::ramp_pause:
        case Verb::ramp_resume:
        case Verb::ramp_abort: {
            if (!state_.ramp) {
                return "no ramp in progress";
            }
            if (cmd.verb == Verb::ramp_abort) {
                next.ramp.reset();
                out.note = "weights stay where the ramp left them";
            } else {
                next.ramp->paused = cmd.verb == Verb::ramp_pause;
            }
            return {};
        }
        case Verb::drain:
        case Verb::maint:
        case Verb::ready: {
            bool known = false;
            std::string names;
            for (const PoolConfig* pool : {&config_->blue, &config_->green}) {
                for (const auto& b : pool->backends) {
                    known = known || b.name == cmd.backend;
                    names += (names.empty() ? "" : ", ") + b.name;
                }
            }
            if (!known) {
                return "unknown backend '" + cmd.backend + "' (backends: " + names + ")";
            }
            AdminState want = cmd.verb == Verb::drain   ? AdminState::drain
                              : cmd.verb == Verb::maint ? AdminState::maint
                                                        : AdminState::ready;
            if (want == AdminState::ready) {
                next.admin.erase(cmd.backend);
            } else {
                next.admin[cmd.backend] = want;
            }
            return {};
        }
        case Verb::reload:
            return stage_reload(out);
        default:
            return "not a state-changing command";
    }
}

std::string Switchboard::stage_reload(Staged& out) {
    if (config_path_.empty()) {
        return "no config file to reload: bgproxy was started from flags only";
    }
    ConfigResult loaded = load_config_file(config_path_, flags_);
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
    Config fresh = std::move(*loaded.config);
    fresh.workers = config_->workers;
    fresh.control = config_->control;
    fresh.admin_listen = config_->admin_listen;
    std::string restart;
    if (fresh.listeners.size() != config_->listeners.size()) {
        restart = "listeners";
    } else {
        for (std::size_t i = 0; i < fresh.listeners.size(); ++i) {
            if (fresh.listeners[i].address.text != config_->listeners[i].address.text) {
                restart = "listeners";
            }
        }
    }
    if (fresh.limits.buffer_size != config_->limits.buffer_size ||
        fresh.upstream.balance != config_->upstream.balance ||
        fresh.upstream.max_idle_per_backend != config_->upstream.max_idle_per_backend ||
        fresh.upstream.idle_timeout != config_->upstream.idle_timeout) {
        restart += restart.empty() ? "" : ", ";
        restart += "server.buffer_size or upstream pool settings";
    }
    if (!restart.empty()) {
        return "changes to " + restart + " need a restart";
    }
    std::set<std::string> names;
    for (const PoolConfig* pool : {&fresh.blue, &fresh.green}) {
        for (const auto& b : pool->backends) {
            names.insert(b.name);
        }
    }
    std::string reconciled;
    for (auto it = out.next.admin.begin(); it != out.next.admin.end();) {
        if (!names.contains(it->first)) {
            reconciled += (reconciled.empty() ? "" : ", ") + it->first + " (was " +
                          to_string(it->second) + ")";
            it = out.next.admin.erase(it);
        } else {
            ++it;
        }
    }
    out.note = "weights kept from the state (the config's weights apply only to a first start)";
    if (!reconciled.empty()) {
        out.note += "; dropped admin state of backends no longer configured: " + reconciled;
        spdlog::warn("reload: {}", out.note);
    }
    out.config = std::make_shared<const Config>(std::move(fresh));
    return {};
}

void Switchboard::commit(Job job, std::string command_name, Staged staged) {
    RoutingState next = std::move(staged.next);
    next.version = state_.version + 1;
    next.changed_at = now_iso8601();
    next.changed_by = !job.internal                ? job.caller.describe()
                      : staged.kind == "ramp_step" ? "ramp"
                      : !job.backend.empty()       ? "rollout guard"
                                                   : job.caller.describe();
    next.command = job.line;
    std::string error;
    if (store_.save(next, durable_version_, error)) {
        durable_version_ = next.version;
        persist_error_.clear();
    } else if (is_safety_action(staged.kind)) {
        // A way back must not depend on the disk: applied now, persisted when writing works.
        spdlog::error("{} applied but NOT durable: {}; retrying every second", staged.kind, error);
        persist_error_ = error;
        arm_persist_retry();
    } else {
        audit_.append(audit_record(job, "refused", nullptr, error));
        finish(job, error_reply("cannot persist the new state: " + error, state_.version));
        return;
    }
    const RolloutConfig& rollout = staged.config->rollout;
    auto table = build_table(
        *staged.config, next, ids_, effective_health(),
        is_safety_action(staged.kind) ? rollout.tunnel_drain_revert : rollout.tunnel_drain);
    auto apply = [this, job = std::move(job), next, table, config = staged.config,
                  note = std::move(staged.note), kind = std::move(staged.kind),
                  command_name = std::move(command_name)]() mutable {
        const std::string change = describe_change(state_, next);
        ++counts_.switches[kind];
        counts_.last_switch_unix =
            std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
                .count();
        if (kind == "reload") {
            ++counts_.reloads_applied;
        }
        json::object record = audit_record(job, "applied", &next, {});
        if (!note.empty()) {
            record["note"] = note;
        }
        if (durable_version_ != next.version) {
            record["durable"] = false;
            record["persist_error"] = persist_error_;
        }
        state_ = next;
        table_ = table;
        if (config_ != config) {
            config_ = config;
            outlier_.reconfigure(config_->outlier);
            canary_.reconfigure(config_->canary);
            if (config_listener_) {
                config_listener_(*config_);
            }
        }
        bool audited = audit_.append(record);
        json::object reply{{"ok", true},
                           {"command", command_name},
                           {"version", state_.version},
                           {"change", change},
                           {"weights", weights_json(state_)}};
        if (!note.empty()) {
            reply["note"] = note;
        }
        if (!audited) {
            reply["warning"] = "the change is applied but the audit log could not be written";
        }
        if (!durable()) {
            reply["durable"] = false;
            reply["warning"] = "applied but not durable (retrying every second): " + persist_error_;
        }
        finish(job, reply);
        broadcast(json::object{{"event", "switch"},
                               {"kind", kind},
                               {"reason", note},
                               {"time", state_.changed_at},
                               {"by", state_.changed_by},
                               {"version", state_.version},
                               {"change", change},
                               {"weights", weights_json(state_)}});
        arm_ramp_timer();
    };
    if (publisher_ == nullptr) {
        apply();
    } else {
        publisher_->publish(table, staged.config, std::move(apply));
    }
}

void Switchboard::arm_ramp_timer() {
    ramp_timer_.cancel();
    if (!state_.ramp || state_.ramp->paused || publisher_ == nullptr) {
        return;
    }
    ramp_timer_.expires_after(state_.ramp->every);
    ramp_timer_.async_wait([this](boost::system::error_code ec) {
        if (!ec) {
            ramp_tick();
        }
    });
}

void Switchboard::ramp_tick() {
    const Caller ramp = process_caller();
    queue_.push_back(Job{ramp, std::string(ramp_step_line),
                         [](const json::object& reply) {
                             if (!reply.at("ok").as_bool()) {
                                 spdlog::warn("ramp step: {}", json::serialize(reply));
                             }
                         },
                         true});
    run_next();
}

void Switchboard::reply_status(Job job) {
    auto build = [this, job = std::move(job)](DataPlaneLoad load) mutable {
        auto count = [](const std::vector<std::uint32_t>& v, std::uint32_t id) {
            return id < v.size() ? v[id] : 0u;
        };
        json::object colours;
        for (Colour c : all_colours) {
            const ColourPool& pool = table_->pool(c);
            json::array backends;
            std::uint32_t healthy = 0;
            for (const Backend& b : pool.backends) {
                healthy += b.healthy ? 1 : 0;
                json::object entry{{"name", b.name},
                                   {"address", b.address.text},
                                   {"admin", to_string(b.admin)},
                                   {"healthy", b.healthy},
                                   {"in_flight", count(load.in_flight, b.id)},
                                   {"upgraded", count(load.upgraded, b.id)}};
                if (auto why = down_because_.find(b.name); why != down_because_.end()) {
                    entry["check"] = why->second;  // as HAProxy's "last check" says
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
        json::object reply{{"ok", true},
                           {"version", state_.version},
                           {"changed_at", state_.changed_at},
                           {"changed_by", state_.changed_by},
                           {"last_command", state_.command},
                           {"stable", to_string(state_.stable)},
                           {"panic", table_->panic()},
                           {"colours", std::move(colours)}};
        if (state_.ramp) {
            reply["ramp"] = json::object{{"colour", to_string(state_.ramp->colour)},
                                         {"to", percent_json(state_.ramp->to_bp)},
                                         {"step", percent_json(state_.ramp->step_bp)},
                                         {"every_ms", state_.ramp->every.count()},
                                         {"paused", state_.ramp->paused}};
        } else {
            reply["ramp"] = nullptr;
        }
        reply["canary"] = to_json(canary_.verdict());
        reply["durable"] = durable();
        if (!durable()) {
            reply["persist_error"] = persist_error_;
        }
        if (state_.failover) {
            reply["failover"] = json::object{
                {"since", state_.failover->at},
                {"weights", json::object{{"blue", percent_json(state_.failover->weight_bp[0])},
                                         {"green", percent_json(state_.failover->weight_bp[1])}}},
                {"failback", !config_->rollout.failback_auto ? "manual (bgctl rollback)"
                             : failback_armed_ ? "pending: the stable colour is healthy"
                                               : "when the stable colour is healthy"}};
        } else {
            reply["failover"] = nullptr;
        }
        finish(job, reply);
    };
    if (publisher_ == nullptr) {
        build(DataPlaneLoad{});
    } else {
        publisher_->gather_load(std::move(build));
    }
}

}  // namespace bg
