#include "fleet_store.hpp"

#include "poll_until.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>
#include <functional>

namespace bg {

namespace asio = boost::asio;
namespace json = boost::json;

namespace {

constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);

std::optional<RoutingState> parse_state(const EtcdKeyValue& kv, std::string& why) {
    boost::system::error_code ec;
    json::value parsed = json::parse(kv.value, ec);
    if (ec) {
        why = "not JSON: " + ec.message();
        return std::nullopt;
    }
    auto state = routing_state_from_json(parsed, why);
    if (state) {
        state->revision = kv.mod_revision;  // what holds it, whatever the value says
    }
    return state;
}

json::object member_json(const FleetMember& m) {
    json::object health;
    for (const auto& [name, healthy] : m.health) {
        health[name] = healthy;
    }
    return json::object{{"instance", m.instance},
                        {"applied_version", m.applied_version},
                        {"applied_revision", m.applied_revision},
                        {"listen", m.listen},
                        {"pools", m.pools},
                        {"health", std::move(health)},
                        {"updated_at", m.updated_at}};
}

std::optional<FleetMember> parse_member(const std::string& text) {
    boost::system::error_code ec;
    json::value parsed = json::parse(text, ec);
    if (ec || !parsed.is_object()) {
        return std::nullopt;
    }
    const json::object& o = parsed.as_object();
    FleetMember m;
    try {
        m.instance = json::value_to<std::string>(o.at("instance"));
        m.applied_version = o.at("applied_version").to_number<std::uint64_t>();
        m.applied_revision = o.at("applied_revision").to_number<std::int64_t>();
        m.listen = json::value_to<std::string>(o.at("listen"));
        m.pools = json::value_to<std::string>(o.at("pools"));
        for (const auto& [name, healthy] : o.at("health").as_object()) {
            m.health[std::string(name)] = healthy.as_bool();
        }
        m.updated_at = json::value_to<std::string>(o.at("updated_at"));
    } catch (const std::exception&) {
        return std::nullopt;
    }
    return m;
}

}  // namespace

std::string pools_digest(const Config& config) {
    std::string text;
    for (const PoolConfig* pool : {&config.blue, &config.green}) {
        text += pool == &config.blue ? "blue:" : ";green:";
        for (const auto& b : pool->backends) {
            text += " " + b.name + "=" + b.address.text;
        }
    }
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016zx", std::hash<std::string>{}(text));
    return hex;
}

std::string default_instance_name(const Config& config) {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0) {
        std::snprintf(host, sizeof host, "bgproxy");
    }
    std::string name = host;
    if (!config.listeners.empty()) {
        name += "-" + std::to_string(config.listeners.front().address.port);
    }
    return name;
}

FleetStore::FleetStore(const Config& config, std::string instance, std::string cache_path)
    : fleet_(config.fleet),
      base_(config.fleet.prefix + (config.fleet.prefix.ends_with('/') ? "" : "/") +
            config.fleet.name + "/"),
      instance_(std::move(instance)),
      listen_(config.listeners.empty() ? std::string{} : config.listeners.front().address.text),
      pools_digest_(pools_digest(config)),
      client_(config.fleet.endpoints, config.fleet.request_timeout, config.fleet.tls_context) {
    if (!cache_path.empty()) {
        cache_ = std::make_unique<FileStateStore>(std::move(cache_path));
    }
    self_.instance = instance_;
    self_.listen = listen_;
    self_.pools = pools_digest_;
}

FleetStore::~FleetStore() {
    cache_writer_.join();
}

template <class Result>
Result FleetStore::run_blocking(asio::awaitable<Result> call) {
    asio::io_context io;
    std::optional<Result> out;
    asio::co_spawn(io, std::move(call), [&out](std::exception_ptr failed, Result result) {
        if (!failed) {
            out = std::move(result);
        }
    });
    io.run();
    if (!out) {
        Result failed;
        failed.error = "the etcd client failed";
        return failed;
    }
    return std::move(*out);
}

StoreLoad FleetStore::load() {
    EtcdRange read = run_blocking(client_.range(state_key()));
    StoreLoad cached;  // the state file's, read once
    if (cache_) {
        // A way back of this instance's own, applied before its restart and not yet taken by
        // the fleet: served again while etcd is away, and written there when it answers (staged
        // again on the fleet's state if that moved meanwhile), or now if the fleet's state is
        // still the one it was staged on. One the fleet moved on from while this instance was
        // down (or a cluster replaced since) is given up: the fleet's state is newer news.
        cached = cache_->load();
        if (cached.error.empty() && cached.state && cached.unwritten) {
            const std::int64_t now_at =
                read.error.empty() && !read.kvs.empty() ? read.kvs.front().mod_revision : 0;
            if (!read.error.empty() || now_at == cached.unwritten->base.revision) {
                spdlog::warn(
                    "fleet {}: serving this instance's own version {} (a way back applied "
                    "before its restart, not yet in the fleet, staged on the fleet's version "
                    "{}): it is written to the fleet {}",
                    fleet_.name, cached.state->version, cached.unwritten->base.version,
                    read.error.empty() ? "now" : "when etcd answers");
                if (!read.error.empty()) {
                    reachable_ = false;
                    unreachable_why_ = read.error;
                }
                return cached;
            }
            spdlog::warn(
                "fleet {}: giving up this instance's own version {} (a way back applied before "
                "its restart, never written): the fleet's state has moved on since (revision "
                "{}, not {})",
                fleet_.name, cached.state->version, now_at, cached.unwritten->base.revision);
        }
    }
    StoreLoad result;
    if (!read.error.empty()) {
        reachable_ = false;
        unreachable_why_ = read.error;
        if (!cache_) {
            result.error = "the fleet store is unreachable (" + read.error +
                           ") and no state file keeps this instance's last fleet state: "
                           "cannot know what the fleet serves";
            return result;
        }
        result = std::move(cached);
        if (result.error.empty() && (!result.state || result.state->revision == 0)) {
            result.state.reset();
            result.error = "the fleet store is unreachable (" + read.error +
                           ") and the state file holds no fleet state yet: cannot know what "
                           "the fleet serves";
        }
        if (result.state) {
            spdlog::warn(
                "fleet {}: etcd is unreachable ({}); serving the last fleet state this instance "
                "applied (version {}, revision {}) until it is back",
                fleet_.name, read.error, result.state->version, result.state->revision);
        }
        return result;
    }
    revision_seen_ = read.revision;
    if (read.kvs.empty()) {
        return result;  // a new fleet: the Switchboard stores its first state
    }
    std::string why;
    result.state = parse_state(read.kvs.front(), why);
    if (!result.state) {
        result.error = "the fleet's state in etcd (" + state_key() + ") is corrupt: " + why;
        return result;
    }
    remember(*result.state);
    return result;
}

SaveOutcome FleetStore::save(const RoutingState& next, StoredVersion expected,
                             const std::atomic<bool>*) {
    RoutingState stored = next;
    stored.revision = 0;  // the key's mod_revision says it
    const std::string value = json::serialize(to_json(stored));
    EtcdTxn txn = run_blocking(client_.put_if(state_key(), value, expected.revision));
    if (txn.error.empty() && !txn.succeeded && !txn.current && expected.revision != 0) {
        // Someone deleted the fleet's state: this change writes it again.
        txn = run_blocking(client_.put_if(state_key(), value, 0));
    }
    if (!txn.error.empty() && txn.maybe_applied) {
        txn = read_back(value, expected, std::move(txn));
    }
    SaveOutcome outcome;
    if (!txn.error.empty()) {
        outcome.unreachable = true;
        outcome.error = "the fleet store is unreachable: " + txn.error;
        if (txn.maybe_applied) {
            outcome.uncertain = true;
            outcome.error +=
                "; etcd may have taken the change before its answer was lost: if "
                "it did, every instance applies it once etcd answers (bgctl status)";
        }
        if (executor_) {  // said at once in status and /metrics, not at the next keepalive
            asio::post(*executor_, [this, why = txn.error] { set_reachable(false, why); });
        }
        return outcome;
    }
    if (!txn.succeeded) {
        ++conflicts_;
        outcome.conflict = true;
        outcome.error = "another change reached the fleet first";
        if (txn.current) {
            std::string why;
            outcome.current = parse_state(*txn.current, why);
            if (outcome.current) {
                outcome.error += " (now version " + std::to_string(outcome.current->version) +
                                 " by " + outcome.current->changed_by + ": '" +
                                 outcome.current->command + "')";
            }
        }
        return outcome;
    }
    outcome.ok = true;
    outcome.revision = txn.revision;
    RoutingState cached = next;
    cached.revision = txn.revision;
    remember(cached);
    return outcome;
}

// A save whose answer was lost after etcd had it: the key says whether it landed. As written,
// it did (the value carries this change's version, command and time). As it was, it did not:
// sent once more, the compare keeping a late first copy from applying twice. Anything else is a
// peer's change: the fleet's state now, a conflict.
EtcdTxn FleetStore::read_back(const std::string& value, StoredVersion expected, EtcdTxn lost) {
    EtcdRange read = run_blocking(client_.range(state_key()));
    if (!read.error.empty()) {
        lost.error += "; reading the state back: " + read.error;
        return lost;
    }
    const EtcdKeyValue* now = read.kvs.empty() ? nullptr : &read.kvs.front();
    spdlog::warn("fleet {}: a save's answer was lost ({}); read back, it {}", fleet_.name,
                 lost.error, now != nullptr && now->value == value ? "had landed" : "had not");
    EtcdTxn known;
    if (now != nullptr && now->value == value) {
        known.succeeded = true;
        known.revision = now->mod_revision;
    } else if ((now == nullptr ? 0 : now->mod_revision) == expected.revision) {
        known = run_blocking(client_.put_if(state_key(), value, expected.revision));
        // The first copy may still land late, whatever became of this one (a review).
        known.maybe_applied = known.maybe_applied || !known.error.empty();
    } else if (now != nullptr) {
        known.current = *now;
    }
    return known;
}

void FleetStore::remember(const RoutingState& state, std::optional<UnwrittenWayBack> unwritten) {
    if (!cache_) {
        return;
    }
    const std::uint64_t mine = ++cache_writes_;
    asio::post(cache_writer_, [this, state, unwritten, mine] {
        // Only the latest matters: one queued behind a stalled write is passed over.
        if (mine == cache_writes_.load()) {
            SaveOutcome written = cache_->overwrite(state, nullptr, unwritten);
            if (!written.ok) {
                spdlog::warn("fleet: cannot keep the fleet state in the state file: {}",
                             written.error);
            }
        }
        // remember() runs on the persister and the control thread: never backwards.
        std::uint64_t seen = cache_written_.load();
        while (seen < mine && !cache_written_.compare_exchange_weak(seen, mine)) {
        }
    });
}

bool FleetStore::finish_cache(std::chrono::milliseconds wait) {
    return poll_until(std::chrono::steady_clock::now() + wait,
                      [this] { return cache_written_.load() == cache_writes_.load(); });
}

void FleetStore::start(asio::any_io_executor executor, Events events) {
    executor_ = executor;
    events_ = std::move(events);
    session_timer_ = std::make_unique<asio::steady_timer>(executor);
    watch_timer_ = std::make_unique<asio::steady_timer>(executor);
    asio::co_spawn(executor, run_session(), asio::detached);
    asio::co_spawn(executor, run_watch(), asio::detached);
}

void FleetStore::stop() {
    stopped_ = true;
    if (session_timer_) {
        session_timer_->cancel();
        watch_timer_->cancel();
    }
    if (watch_handle_) {
        watch_handle_->cancel();
    }
    // Each caller waiting for the members to apply its change is answered now, with what
    // they have applied so far: the watch that would tell more ends here, and the exit would
    // otherwise drop the wait, the caller of a committed change getting no reply at all.
    std::list<Waiter> waiting = std::move(waiters_);
    waiters_.clear();
    for (Waiter& w : waiting) {
        w.timer->cancel();  // its handler finds no waiter by its id
        answer_now(w.revision, std::move(w.done));
    }
}

void FleetStore::answer_now(std::int64_t revision, std::function<void(FleetAck)> done) {
    FleetAck ack = ack_of(revision);
    ack.cut_short = !ack.complete;
    asio::post(*executor_,
               [done = std::move(done), ack = std::move(ack)]() mutable { done(std::move(ack)); });
}

void FleetStore::leave() {
    if (lease_ == 0) {
        return;
    }
    const std::string error = run_blocking(client_.revoke(lease_)).error;
    if (!error.empty()) {
        spdlog::warn("fleet {}: could not leave at once ({}): the membership ends with the lease",
                     fleet_.name, error);
    }
    lease_ = 0;
}

Duration FleetStore::backoff(unsigned failures) const {
    Duration wait = fleet_.retry_min;
    for (unsigned i = 1; i < failures && wait < fleet_.retry_max; ++i) {
        wait *= 2;
    }
    return std::min(wait, fleet_.retry_max);
}

void FleetStore::set_reachable(bool reachable, const std::string& why) {
    if (reachable == reachable_ && (reachable || why == unreachable_why_)) {
        return;
    }
    const bool changed = reachable != reachable_;
    const bool drove = drives_ramp();
    reachable_ = reachable;
    unreachable_why_ = reachable ? std::string{} : why;
    if (!changed) {
        return;
    }
    if (reachable) {
        spdlog::info("fleet {}: etcd is reachable again ({})", fleet_.name,
                     client_.current_endpoint());
    } else {
        spdlog::error("fleet {}: etcd is unreachable: {}", fleet_.name, why);
    }
    if (events_.reachability) {
        events_.reachability(reachable, unreachable_why_);
    }
    if (drove != drives_ramp() && events_.driver) {
        events_.driver();
    }
}

// The lease that keeps this instance a member, its member key, and the keepalives: one writer,
// so member updates never race each other.
asio::awaitable<void> FleetStore::run_session() {
    const auto ttl = std::chrono::duration_cast<std::chrono::seconds>(fleet_.lease_ttl);
    const Duration keepalive_every = fleet_.lease_ttl / 3;
    auto last_keepalive = std::chrono::steady_clock::now();
    unsigned failures = 0;
    while (!stopped_) {
        std::string error;
        bool answered = false;  // reachable is said only on an answer, never on no call
        if (lease_ == 0) {
            EtcdLease lease = co_await client_.grant(ttl);
            error = lease.error;
            if (error.empty()) {
                answered = true;
                lease_ = lease.id;
                member_dirty_ = true;
                last_keepalive = std::chrono::steady_clock::now();
            }
        }
        if (error.empty()) {
            error = co_await keep_membership(answered);
        }
        if (error.empty() && std::chrono::steady_clock::now() - last_keepalive >= keepalive_every) {
            EtcdLease kept = co_await client_.keepalive(lease_);
            error = kept.error;
            if (error.empty()) {
                answered = true;
                last_keepalive = std::chrono::steady_clock::now();
                if (kept.ttl <= 0) {
                    lease_ = 0;  // the lease expired: a new one, and the member key again
                    continue;
                }
            }
        }
        if (stopped_) {
            co_return;
        }
        Duration wait = keepalive_every;
        if (error.empty()) {
            failures = 0;
            if (answered) {
                set_reachable(true, {});
            }
            wait = std::chrono::duration_cast<Duration>(
                keepalive_every - (std::chrono::steady_clock::now() - last_keepalive));
        } else {
            set_reachable(false, error);
            wait = backoff(++failures);
        }
        if (member_dirty_ && error.empty()) {
            continue;
        }
        if (error.empty()) {
            co_await check_watch();
            if (stopped_) {
                co_return;
            }
        }
        session_timer_->expires_after(std::max(wait, Duration(1)));
        co_await session_timer_->async_wait(nothrow);  // report() wakes it early
    }
}

asio::awaitable<std::string> FleetStore::keep_membership(bool& answered) {
    std::string error;
    if (member_dirty_) {
        member_dirty_ = false;
        self_.updated_at = now_iso8601();
        EtcdTxn put = co_await client_.put(members_prefix() + instance_,
                                           json::serialize(member_json(self_)), lease_);
        error = put.error;
        answered = answered || error.empty();
        if (!error.empty()) {
            member_dirty_ = true;
            if (error.find("lease not found") != std::string::npos) {
                lease_ = 0;  // expired while etcd was away: join again
            }
        }
    }
    if (error.empty() && ramp_driver_.empty() && lease_ != 0) {
        // Nobody drives ramps: this instance offers to (one wins the create).
        EtcdTxn taken = co_await client_.create(driver_key(), instance_, lease_);
        error = taken.error;
        answered = answered || error.empty();
        if (error.empty() && taken.succeeded) {
            set_driver(instance_);
        } else if (error.empty() && taken.current) {
            set_driver(taken.current->value);
        }
    }
    co_return error;
}

asio::awaitable<void> FleetStore::check_watch() {
    // What the watch had seen before the read was sent: a linearizable read answers at or past
    // it (the watch may deliver later revisions while the read is on its way).
    const std::int64_t seen_before = revision_seen_;
    EtcdRange read = co_await client_.range(state_key());
    if (stopped_ || !read.error.empty() || watch_handle_ == nullptr) {
        co_return;  // (the session's own calls say whether etcd answers)
    }
    if (read.revision < seen_before) {
        spdlog::error(
            "fleet {}: etcd's revision went back from {} to {} (a cluster replaced or restored "
            "from a backup): reading the fleet afresh",
            fleet_.name, seen_before, read.revision);
        revision_seen_ = 0;
        watch_behind_since_.reset();
        read_afresh_ = true;
        if (events_.restarted) {
            events_.restarted();
        }
        watch_handle_->cancel();
        co_return;
    }
    const std::int64_t state_revision = read.kvs.empty() ? 0 : read.kvs.front().mod_revision;
    if (state_revision <= revision_seen_) {
        watch_behind_since_.reset();
        co_return;
    }
    // A change on its way through the watch (or a watch catching up) is behind for a moment;
    // one still behind a third of the lease later is not coming.
    const auto now = std::chrono::steady_clock::now();
    if (!watch_behind_since_) {
        watch_behind_since_ = now;
        co_return;
    }
    if (now - *watch_behind_since_ < fleet_.lease_ttl / 3) {
        co_return;
    }
    spdlog::warn(
        "fleet {}: the watch (through {}) has not delivered revision {} of the state: taking "
        "it from a read and watching again",
        fleet_.name, client_.current_endpoint(), state_revision);
    watch_behind_since_.reset();
    take_state(read.kvs.front());
    watch_handle_->cancel();
}

// The fleet's keys as they are now: the state and the members (after a start or a compaction).
asio::awaitable<bool> FleetStore::read_all() {
    EtcdRange read = co_await client_.range(base_, true);
    if (!read.error.empty()) {
        set_reachable(false, read.error);
        co_return false;
    }
    std::map<std::string, FleetMember> before = std::move(members_);
    members_.clear();
    for (const EtcdKeyValue& kv : read.kvs) {
        if (kv.key == state_key()) {
            take_state(kv);
        } else if (kv.key.starts_with(members_prefix())) {
            take_member(kv, false);
        } else if (kv.key == driver_key()) {
            set_driver(kv.value);
        }
    }
    if (std::none_of(read.kvs.begin(), read.kvs.end(),
                     [this](const EtcdKeyValue& kv) { return kv.key == driver_key(); })) {
        set_driver({});
    }
    revision_seen_ = std::max(revision_seen_, read.revision);
    check_waiters();
    co_return true;
}

asio::awaitable<void> FleetStore::run_watch() {
    unsigned failures = 0;
    bool need_read = true;
    std::int64_t next = 0;
    while (!stopped_) {
        if (need_read) {
            const bool ok = co_await read_all();
            if (stopped_) {
                co_return;
            }
            if (!ok) {
                watch_timer_->expires_after(backoff(++failures));
                co_await watch_timer_->async_wait(nothrow);
                continue;
            }
            need_read = false;
            next = revision_seen_ + 1;
        }
        watch_handle_ = std::make_shared<EtcdWatchHandle>();
        watch_behind_since_.reset();  // a new watch is judged afresh
        const auto started = std::chrono::steady_clock::now();
        EtcdWatchEnd end = co_await client_.watch(
            base_, next,
            [this](std::int64_t revision, const std::vector<EtcdWatchEvent>& events) {
                if (stopped_) {
                    return;  // (a batch read as the watch was stopped)
                }
                revision_seen_ = std::max(revision_seen_, revision);
                take_events(events);
            },
            watch_handle_);
        if (stopped_) {
            co_return;
        }
        // (From what was seen: a watch ended by check_watch reports no revision of its own.)
        next = std::max({next, end.next_revision, revision_seen_ + 1});
        if (std::exchange(read_afresh_, false)) {
            need_read = true;
            next = 0;
            continue;
        }
        if (end.compacted_before > 0) {
            spdlog::warn("fleet {}: revisions up to {} were compacted: reading the fleet afresh",
                         fleet_.name, end.compacted_before);
            need_read = true;
            continue;
        }
        if (std::chrono::steady_clock::now() - started > std::chrono::seconds(1)) {
            failures = 0;
        }
        if (++failures == 1 || failures % 30 == 0) {  // not a line per retry while etcd is away
            spdlog::warn("fleet {}: watch ended ({}); resuming from revision {}", fleet_.name,
                         end.error, next);
        }
        watch_timer_->expires_after(backoff(failures));
        co_await watch_timer_->async_wait(nothrow);
    }
}

void FleetStore::take_events(const std::vector<EtcdWatchEvent>& events) {
    for (const EtcdWatchEvent& event : events) {
        if (event.kv.key == state_key()) {
            if (event.deleted) {
                spdlog::error(
                    "fleet {}: the fleet's state key was deleted; keeping the state "
                    "served (the next change writes it again)",
                    fleet_.name);
            } else {
                take_state(event.kv);
            }
        } else if (event.kv.key.starts_with(members_prefix())) {
            take_member(event.kv, event.deleted);
        } else if (event.kv.key == driver_key()) {
            set_driver(event.deleted ? std::string{} : event.kv.value);
        }
    }
    check_waiters();
}

void FleetStore::set_driver(std::string driver) {
    if (driver == ramp_driver_) {
        return;
    }
    const bool was = drives_ramp();
    ramp_driver_ = std::move(driver);
    if (ramp_driver_.empty() && session_timer_) {
        session_timer_->cancel();  // the driver left: offer to take over now
    } else {
        spdlog::info("fleet {}: {} drives ramps", fleet_.name, ramp_driver_);
    }
    if (was != drives_ramp() && events_.driver) {
        events_.driver();
    }
}

void FleetStore::take_state(const EtcdKeyValue& kv) {
    std::string why;
    std::optional<RoutingState> state = parse_state(kv, why);
    if (!state) {
        spdlog::error("fleet {}: ignoring a corrupt fleet state at revision {}: {}", fleet_.name,
                      kv.mod_revision, why);
        return;
    }
    if (events_.state) {
        events_.state(std::move(*state));
    }
}

void FleetStore::take_member(const EtcdKeyValue& kv, bool deleted) {
    const std::string name = kv.key.substr(members_prefix().size());
    if (deleted) {
        if (members_.erase(name) > 0) {
            spdlog::info("fleet {}: {} left", fleet_.name, name);
        }
        return;
    }
    std::optional<FleetMember> member = parse_member(kv.value);
    if (!member) {
        spdlog::warn("fleet {}: ignoring an unreadable member record for {}", fleet_.name, name);
        return;
    }
    if (member->applied_revision >= kv.mod_revision) {
        // It wrote this after applying what it names, so at a later revision: a revision from
        // before etcd's revisions went back (a replaced cluster), not one of this cluster's.
        // It applied nothing here yet: never counted in an ack.
        member->applied_revision = 0;
    }
    if (!members_.contains(name)) {
        spdlog::info("fleet {}: {} joined (applied revision {})", fleet_.name, name,
                     member->applied_revision);
    }
    members_[name] = std::move(*member);
}

void FleetStore::refresh() {
    if (executor_ && !stopped_) {
        asio::co_spawn(*executor_, read_state(), asio::detached);
    }
}

asio::awaitable<void> FleetStore::read_state() {
    EtcdRange read = co_await client_.range(state_key());
    if (!stopped_ && read.error.empty() && !read.kvs.empty()) {
        take_state(read.kvs.front());
    }
}

void FleetStore::report(const RoutingState& applied, const std::map<std::string, bool>& health) {
    self_.applied_version = applied.version;
    self_.applied_revision = applied.revision;
    self_.health = health;
    member_dirty_ = true;
    if (session_timer_) {
        session_timer_->cancel();  // the session writes it now
    }
}

FleetAck FleetStore::ack_of(std::int64_t revision) const {
    FleetAck ack;
    ack.revision = revision;
    for (const auto& [name, member] : members_) {
        // This instance knows what it applied before etcd says so (after the stop, it never
        // will: its watch has ended).
        const bool mine = name == instance_ && self_.applied_revision > member.applied_revision;
        const FleetMember& known = mine ? self_ : member;
        if (known.applied_revision >= revision) {
            ack.applied.push_back(name);
        } else {
            ack.lagging.push_back(name + " (at version " + std::to_string(known.applied_version) +
                                  ")");
        }
    }
    // No member known (their leases expired in an outage, none re-registered yet) is no proof
    // that anyone applied it: partial, not complete.
    ack.complete = ack.lagging.empty() && !ack.applied.empty();
    return ack;
}

void FleetStore::await_applied(std::int64_t revision, std::function<void(FleetAck)> done) {
    if (stopped_) {
        answer_now(revision, std::move(done));  // a change committed during the exit's drain
        return;
    }
    Waiter& w = waiters_.emplace_back();
    w.id = ++waiter_ids_;
    w.revision = revision;
    w.done = std::move(done);
    w.timer = std::make_unique<asio::steady_timer>(*executor_, fleet_.apply_timeout);
    // Found by id, not kept by iterator: a timeout that came as check_waiters answered its
    // waiter is queued already (cancel() no longer stops it), and finds the waiter gone.
    w.timer->async_wait([this, id = w.id](boost::system::error_code ec) {
        const auto it = std::find_if(waiters_.begin(), waiters_.end(),
                                     [id](const Waiter& waiter) { return waiter.id == id; });
        if (ec || it == waiters_.end()) {
            return;  // answered (or stopping)
        }
        auto done = std::move(it->done);
        FleetAck ack = ack_of(it->revision);
        waiters_.erase(it);
        done(std::move(ack));
    });
    check_waiters();
}

void FleetStore::check_waiters() {
    for (auto it = waiters_.begin(); it != waiters_.end();) {
        FleetAck ack = ack_of(it->revision);
        if (!ack.complete) {
            ++it;
            continue;
        }
        auto done = std::move(it->done);
        it->timer->cancel();
        it = waiters_.erase(it);
        asio::post(*executor_, [done = std::move(done), ack = std::move(ack)]() mutable {
            done(std::move(ack));
        });
    }
}

json::object FleetStore::status_json() const {
    std::uint64_t newest_version = 0;
    for (const auto& [name, m] : members_) {
        newest_version = std::max(newest_version, m.applied_version);
    }
    json::array members;
    bool pools_differ = false;
    for (const auto& [name, m] : members_) {
        json::object entry = member_json(m);
        entry["versions_behind"] = newest_version - m.applied_version;
        entry["self"] = name == instance_;
        pools_differ = pools_differ || m.pools != pools_digest_;
        members.push_back(std::move(entry));
    }
    json::object out{{"name", fleet_.name},
                     {"instance", instance_},
                     {"store", "etcd"},
                     {"endpoint", client_.current_endpoint()},
                     {"reachable", reachable_},
                     {"revision_seen", revision_seen_},
                     {"ramp_driver", ramp_driver_},
                     {"members", std::move(members)},
                     {"conflicts", conflicts_.load()}};
    if (!reachable_) {
        out["error"] = unreachable_why_;
    }
    if (pools_differ) {
        out["warning"] =
            "members' pool definitions differ: the same state routes to different backends";
    }
    return out;
}

}  // namespace bg
