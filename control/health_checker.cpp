#include "health_checker.hpp"

#include "http_probe.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <optional>
#include <random>
#include <utility>

namespace bg {

namespace asio = boost::asio;

namespace {
constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);
}

struct HealthChecker::Probe {
    std::string name;
    HostPort address;
    HealthCheckConfig check;
    ProbeRequest transport;  // how to connect: as the data path does to the pool
    bool healthy = true;
    bool first_at_once = false;   // the first check without waiting an interval
    bool awaiting_first = false;  // held down until the first check: one pass brings it up
    unsigned successes = 0;
    unsigned failures = 0;
    bool stopped = false;
    std::string last_error;
    asio::steady_timer timer;
    Probe(asio::any_io_executor executor) : timer(executor) {}
};

namespace {

enum class Check { passed, failed, not_run };

// One probe: passed when the backend answered as expected; `why` says what went wrong
// otherwise. Not run when the proxy itself ran out (descriptors...): that is no verdict on the
// backend, and counting it would take every backend down, and trip the guard, in a descriptor
// flood. `request` carries how to connect (TLS, PROXY header); the check fills in the rest.
asio::awaitable<Check> probe_once(const HostPort& address, const HealthCheckConfig& check,
                                  ProbeRequest request, std::string& why) {
    request.method = check.method;
    request.path = check.path;
    request.host = check.host;
    request.timeout = check.timeout;
    request.tcp_only = check.tcp_only;
    ProbeResult result = co_await http_probe(address, request);
    if (!result.answered) {
        why = result.error;
        co_return result.local_failure ? Check::not_run : Check::failed;
    }
    if (!check.tcp_only &&
        std::find(check.expect.begin(), check.expect.end(), result.status) == check.expect.end()) {
        why = "status " + std::to_string(result.status);
        co_return Check::failed;
    }
    co_return Check::passed;
}

}  // namespace

HealthChecker::HealthChecker(asio::any_io_executor executor, Transition on_transition)
    : executor_(std::move(executor)), on_transition_(std::move(on_transition)) {}

HealthChecker::~HealthChecker() {
    stop();
}

void HealthChecker::stop() {
    for (auto& [name, probe] : probes_) {
        probe->stopped = true;
        probe->timer.cancel();
    }
    probes_.clear();
}

std::map<std::string, bool> HealthChecker::snapshot() const {
    std::map<std::string, bool> out;
    for (const auto& [name, probe] : probes_) {
        out[name] = probe->healthy;
    }
    return out;
}

namespace {

// The wait before a probe's next check: fast_interval while the backend is between states (as
// HAProxy's fastinter), none before a first check asked at once, plus up to `jitter`.
Duration next_wait(HealthChecker::Probe& probe, std::minstd_rand& jitter_rng) {
    const bool changing =
        probe.successes > 0 && !probe.healthy ? true : probe.failures > 0 && probe.healthy;
    Duration wait = changing ? probe.check.fast_interval : probe.check.interval;
    if (std::exchange(probe.first_at_once, false)) {
        wait = Duration(0);
    }
    if (probe.check.jitter.count() > 0) {
        wait += Duration(jitter_rng() % (probe.check.jitter.count() + 1));
    }
    return wait;
}

}  // namespace

asio::awaitable<void> HealthChecker::run(std::shared_ptr<Probe> probe) {
    std::minstd_rand jitter_rng(std::hash<std::string>{}(probe->name));
    for (;;) {
        probe->timer.expires_after(next_wait(*probe, jitter_rng));
        co_await probe->timer.async_wait(nothrow);
        if (probe->stopped) {
            co_return;
        }
        std::string why;
        Check check = Check::not_run;
        try {
            check = co_await probe_once(probe->address, probe->check, probe->transport, why);
        } catch (const std::exception& e) {
            // (SSL_new or an allocation failing under memory pressure): this loop must go on,
            // or the backend's verdict would freeze where it is.
            why = e.what();
        }
        if (probe->stopped) {
            co_return;
        }
        if (check == Check::not_run) {
            spdlog::warn("health check of {} not run (not counted): {}", probe->name, why);
            continue;
        }
        record(*probe, check == Check::passed, why);
    }
}

// Counts a check's result; past rise or fall (or a held backend's first check), a transition.
void HealthChecker::record(Probe& probe, bool ok, const std::string& why) {
    if (std::exchange(probe.awaiting_first, false)) {
        // Down already (held): a pass is the way in, a failure says why.
        probe.healthy = ok;
        (ok ? probe.successes : probe.failures) = 1;
        probe.last_error = why;
        on_transition_(probe.name, ok, ok ? "first check passed" : "first check failed: " + why);
        return;
    }
    if (ok) {
        probe.failures = 0;
        ++probe.successes;
        if (!probe.healthy && probe.successes >= probe.check.rise) {
            probe.healthy = true;
            on_transition_(probe.name, true, std::to_string(probe.successes) + " checks passed");
        }
        return;
    }
    probe.successes = 0;
    ++probe.failures;
    probe.last_error = why;
    if (probe.healthy && probe.failures >= probe.check.fall) {
        probe.healthy = false;
        on_transition_(probe.name, false,
                       std::to_string(probe.failures) + " checks failed, last: " + why);
    }
}

void HealthChecker::configure(const Config& config, const std::set<std::string>& held) {
    std::map<std::string, std::shared_ptr<Probe>> next;
    for (const PoolConfig* pool : {&config.blue, &config.green}) {
        for (const auto& backend : pool->backends) {
            auto old = probes_.find(backend.name);
            std::optional<bool> moved_from;  // the verdict at the address it had
            if (old != probes_.end() && old->second->address.text == backend.address.text &&
                old->second->address.ip != backend.address.ip && pool->health.enabled) {
                // A reload resolved its host name to another ip: its checks go where its
                // traffic goes, from the verdict the Switchboard holds (probes report only
                // changes), so a backend that was down reports when it passes there.
                moved_from = old->second->healthy;
            } else if (old != probes_.end() && old->second->address.text == backend.address.text &&
                       pool->health.enabled) {
                old->second->check = pool->health;  // takes effect at the next probe
                old->second->transport = connecting_as(*pool);
                next[backend.name] = old->second;
                probes_.erase(old);
                continue;
            }
            if (!pool->health.enabled) {
                continue;
            }
            auto probe = std::make_shared<Probe>(executor_);
            probe->name = backend.name;
            probe->address = backend.address;
            probe->check = pool->health;
            probe->transport = connecting_as(*pool);
            probe->first_at_once = configured_;
            probe->awaiting_first = held.contains(backend.name);
            probe->healthy = moved_from.value_or(!probe->awaiting_first);
            next[backend.name] = probe;
            // Each loop holds its probe; `stopped` ends it when the backend leaves the config.
            asio::co_spawn(executor_, run(probe), asio::detached);
        }
    }
    // What is left in probes_ was removed from the config.
    for (auto& [name, probe] : probes_) {
        probe->stopped = true;
        probe->timer.cancel();
    }
    probes_ = std::move(next);
    configured_ = true;
}

}  // namespace bg
