// bgproxy: the blue-green reverse proxy daemon.

#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "access_log.hpp"
#include "admin_server.hpp"
#include "audit_log.hpp"
#include "config.hpp"
#include "control_server.hpp"
#include "descriptor_limit.hpp"
#include "fleet_store.hpp"
#include "health_checker.hpp"
#include "metrics_exporter.hpp"
#include "routing_state.hpp"
#include "state_store.hpp"
#include "switchboard.hpp"
#include "worker_group.hpp"

namespace {

int report_errors(const std::vector<bg::ConfigError>& errors) {
    for (const auto& error : errors) {
        std::cerr << error.to_string() << '\n';
    }
    return 1;
}

// Raises the descriptor limit as far as it goes and says when the config could need more: each
// client connection may hold a backend connection, and each worker pools idle ones.
void warn_if_descriptors_short(const bg::Config& config, unsigned workers) {
    const bg::DescriptorLimit limit = bg::raise_descriptor_limit();
    const std::uint64_t backends = config.blue.backends.size() + config.green.backends.size();
    const std::uint64_t needed =
        2ull * config.limits.max_connections +
        std::uint64_t{workers} * backends * config.upstream.max_idle_per_backend +
        std::uint64_t{workers} * config.listeners.size() + 64;
    if (limit.soft != 0 && needed > limit.soft) {
        spdlog::warn(
            "file descriptor limit {} (hard {}) is below the {} that max_connections={} "
            "and the upstream pools may need: near it, new clients are handled as past "
            "max_connections and backend connects answer 503, so that the control socket, "
            "admin listener and checks keep descriptors (raise LimitNOFILE or lower "
            "limits.max_connections)",
            limit.soft, limit.hard, needed, config.limits.max_connections);
    }
}

// The flags that override the config file (and make a whole config without one).
void add_override_flags(CLI::App& app, bg::ConfigOverrides& flags) {
    app.add_option("--listen", flags.listen, "listen address, e.g. 127.0.0.1:8080");
    app.add_option("--blue", flags.blue, "blue backends: ADDR[,ADDR...]");
    app.add_option("--green", flags.green, "green backends: ADDR[,ADDR...]");
    app.add_option("--weights", flags.weights, "initial split, e.g. blue=90,green=10");
    app.add_option("--workers", flags.workers,
                   "worker threads (default: the CPUs this process may run on)");
    app.add_option("--admin", flags.admin, "admin HTTP listen address");
    app.add_option("--control-socket", flags.control_socket, "control socket path");
    app.add_option(
        "--state-file", flags.state_file,
        "where routing state is kept across restarts (it wins over the config's weights)");
    app.add_option("--audit-log", flags.audit_log, "where state-changing commands are recorded");
    app.add_option("--etcd", flags.etcd,
                   "join a fleet: its etcd endpoints, URL[,URL...] (with --fleet)");
    app.add_option("--fleet", flags.fleet,
                   "the fleet's name: instances with the same name share one routing state");
    app.add_option("--metrics", flags.metrics,
                   "count per-request traffic metrics: true (default) or false (to measure "
                   "what counting costs)");
}

// Where the routing state lives: etcd in a fleet (the state file then caches the last state
// applied), else the state file, else memory.
std::unique_ptr<bg::StateStore> make_state_store(const bg::Config& config, bg::FleetStore*& fleet) {
    if (config.fleet.enabled()) {
        auto store = std::make_unique<bg::FleetStore>(config,
                                                      config.fleet.instance.empty()
                                                          ? bg::default_instance_name(config)
                                                          : config.fleet.instance,
                                                      config.control.state_file);
        fleet = store.get();
        return store;
    }
    if (config.control.state_file.empty()) {
        return std::make_unique<bg::MemoryStateStore>();
    }
    return std::make_unique<bg::FileStateStore>(config.control.state_file);
}

// What a newcomer (and the tests) read on stdout once bgproxy serves.
void print_started(const bg::Config& config, const std::vector<std::uint16_t>& ports,
                   unsigned workers, const bg::RoutingState& state, const bg::FleetStore* fleet) {
    for (std::size_t i = 0; i < config.listeners.size(); ++i) {
        const bg::ListenerConfig& listener = config.listeners[i];
        const std::string& ip = listener.address.ip;
        const std::string host = ip.find(':') == std::string::npos ? ip : "[" + ip + "]";  // a URL
        std::printf("bgproxy: listening on %s://%s:%u (%u workers)%s\n",
                    listener.tls_context ? "https" : "http", host.c_str(), ports[i], workers,
                    listener.proxy_protocol ? ", PROXY protocol header expected" : "");
    }
    std::printf("bgproxy: state version %llu: blue %s%%, green %s%%, stable %s\n",
                static_cast<unsigned long long>(state.version),
                bg::format_percent(state.weight(bg::Colour::blue)).c_str(),
                bg::format_percent(state.weight(bg::Colour::green)).c_str(),
                bg::to_string(state.stable));
    if (config.control.socket.empty()) {
        std::printf("bgproxy: no control socket (pass --control-socket PATH to use bgctl)\n");
    } else {
        std::printf("bgproxy: control socket %s\n", config.control.socket.c_str());
    }
    if (fleet != nullptr) {
        std::printf("bgproxy: fleet %s, instance %s, state in etcd at revision %lld%s\n",
                    fleet->name().c_str(), fleet->instance().c_str(),
                    static_cast<long long>(state.revision),
                    fleet->reachable() ? "" : " (etcd unreachable: the cached state)");
    } else if (config.control.state_file.empty()) {
        std::printf("bgproxy: routing state kept in memory (pass --state-file PATH to keep it)\n");
    }
}

// The config to run on: the file with the flags over it, or the flags alone (the quick start).
bg::ConfigResult startup_config(const std::string& config_path, const bg::ConfigOverrides& flags) {
    if (!config_path.empty()) {
        // The flags apply over the file before it is validated, and again at each reload.
        return bg::load_config_file(config_path, flags);
    }
    // The quick start keeps routing state in memory and opens no control socket unless
    // --state-file / --control-socket say where.
    bg::Config base;
    base.control.socket.clear();
    base.control.state_file.clear();
    base.control.audit_log.clear();
    return bg::apply_overrides(std::move(base), flags);
}

// The admin listener (health, readiness, status, metrics) on the control thread, if configured.
std::unique_ptr<bg::AdminServer> open_admin(boost::asio::io_context& control,
                                            const bg::Config& config, bg::Switchboard& switchboard,
                                            bg::WorkerGroup& group, const bg::AccessLog* access_log,
                                            std::string& error) {
    if (config.admin_listen.empty()) {
        return nullptr;
    }
    auto admin = std::make_unique<bg::AdminServer>(
        control, switchboard, config.admin_max_connections,
        [&switchboard, &group, access_log](std::function<void(std::string)> done) {
            group.gather_load(
                [&switchboard, &group, access_log, done = std::move(done)](bg::DataPlaneLoad load) {
                    done(bg::render_metrics(
                        bg::MetricsSources{switchboard, load, group.stats(), access_log}));
                });
        });
    if (!admin->open(config.admin_listen, error)) {
        return nullptr;
    }
    return admin;
}

// The running daemon's parts that signals act on; all on the control thread.
struct Daemon {
    boost::asio::io_context& control;
    const bg::Config& config;
    bg::Switchboard& switchboard;
    bg::WorkerGroup& group;
    bg::ControlServer& server;
    bg::HealthChecker& health;
    bg::AdminServer* admin;
    bg::AccessLog* access_log;
    bg::AuditLog& audit;
    bg::FleetStore* fleet;
    boost::asio::steady_timer ready_delay;
    std::thread joiner;  // waits for the workers to drain, then stops the control loop
};

// First /readyz turns 503 so a load balancer in front moves away; only then do the listeners
// close, and the workers drain what is in flight. The control loop keeps answering meanwhile.
void shut_down_gracefully(Daemon& d, int signal) {
    spdlog::info(
        "signal {}: graceful shutdown: not ready now, listeners close in {} ms, in-flight "
        "requests get {} ms",
        signal, d.config.timeouts.shutdown_ready_delay.count(),
        d.config.timeouts.shutdown_grace.count());
    if (d.admin != nullptr) {
        d.admin->set_draining();
    }
    // Meanwhile each response closes its connection, so keep-alive clients reconnect (to
    // another instance, once the load balancer has seen /readyz) rather than be cut.
    d.group.begin_closing();
    d.ready_delay.expires_after(d.config.timeouts.shutdown_ready_delay);
    d.ready_delay.async_wait([&d](boost::system::error_code) {
        d.server.close();
        d.health.stop();
        if (d.fleet != nullptr) {
            d.fleet->stop();
        }
        d.group.begin_shutdown();
        d.joiner = std::thread([&d] {
            d.group.join();
            // Commands still waiting for their reply (the fleet's answers at its stop) get it
            // written first, for client_linger at most: the loop's stop would drop them.
            boost::asio::post(d.control, [&d] {
                d.server.when_replies_written(d.config.timeouts.client_linger,
                                              [&d] { d.control.stop(); });
            });
        });
    });
}

// SIGHUP reloads the config, SIGUSR1 reopens the logs (logrotate moved them), SIGTERM and
// SIGINT shut down gracefully.
void wait_for_signal(Daemon& d, boost::asio::signal_set& signals) {
    signals.async_wait([&d, &signals](boost::system::error_code ec, int signal) {
        if (ec) {
            return;
        }
        if (signal == SIGHUP) {
            d.switchboard.reload_from_signal();
        } else if (signal == SIGUSR1) {
            if (d.access_log != nullptr) {
                d.access_log->reopen();
            }
            d.audit.reopen();
        } else {
            shut_down_gracefully(d, signal);
            return;
        }
        wait_for_signal(d, signals);
    });
}

// The control thread's loop. What is still pending on it at exit (a connection's coroutine, a
// probe, a timer) refers to the servers and checkers run() builds after it, so it is dropped
// while they live: left to the loop's destructor, an admin connection's coroutine was destroyed
// after its AdminServer, and SIGTERM with a keep-alive scraper connected crashed at exit.
class ControlLoop : public boost::asio::io_context {
  public:
    using io_context::io_context;
    // Destroys every pending handler (and so every suspended coroutine) now. Nothing posted
    // after it runs; the loop's objects may still be destroyed (as in the destructor's order).
    // Not thread-safe against a post from another thread: call it once none can come.
    void drop_pending() { shutdown(); }
};

// Opens everything, serves until a signal ends it, and drains. The main thread is the control
// thread: Switchboard, control socket, admin listener, health checks, signals.
int run(const std::shared_ptr<const bg::Config>& config, const std::string& config_path,
        const bg::ConfigOverrides& flags) {
    const unsigned workers = config->workers > 0 ? config->workers : bg::default_worker_count();
    // A write to a closed pipe (an access log read by a process that left) must fail with
    // EPIPE, not kill the proxy. Sockets already send with MSG_NOSIGNAL.
    std::signal(SIGPIPE, SIG_IGN);
    warn_if_descriptors_short(*config, workers);
    ControlLoop control(1);
    // Before any listener opens: the signal set needs descriptors of its own (asio's self-pipe),
    // which a connection flood could leave none of, and a SIGTERM that came before it would
    // kill the proxy without its graceful shutdown. Signals that come before the wait below
    // are kept for it.
    boost::asio::signal_set signals(control, SIGTERM, SIGINT, SIGHUP);
    signals.add(SIGUSR1);
    bg::FleetStore* fleet = nullptr;
    std::unique_ptr<bg::StateStore> store = make_state_store(*config, fleet);
    bg::AuditLog audit(
        config->control.audit_log,
        bg::AuditLimits{config->control.audit_log_max_size, config->control.audit_log_keep,
                        config->control.audit_command_max, 1000, config->control.audit_log_wait});
    std::string error;
    if (!audit.open(error)) {
        spdlog::error("{}", error);
        return 1;
    }
    bg::Switchboard switchboard(control.get_executor(), config, config_path, *store, audit, flags);
    if (!switchboard.load(error)) {
        spdlog::error("{}", error);
        return 1;
    }
    // The workers start from the table of the state just loaded.
    bg::WorkerGroup group(control.get_executor(), workers, config, switchboard.table());
    if (!group.bind(error)) {
        spdlog::error("{}", error);
        return 1;
    }
    std::unique_ptr<bg::AccessLog> access_log;
    if (config->access_log.target != "off") {
        access_log = std::make_unique<bg::AccessLog>(config->access_log.target, workers,
                                                     config->access_log.queue);
        if (!access_log->open(error)) {
            spdlog::error("{}", error);
            return 1;
        }
        group.set_access_log(access_log.get());
        access_log->start();
    }
    std::unique_ptr<bg::AdminServer> admin =
        open_admin(control, *config, switchboard, group, access_log.get(), error);
    bg::ControlServer server(control, config->control, switchboard);
    if ((!config->admin_listen.empty() && !admin) ||
        (!config->control.socket.empty() && !server.open(error))) {
        spdlog::error("{}", error);
        return 1;
    }
    bg::HealthChecker health(
        control.get_executor(),
        [&switchboard](const std::string& backend, bool healthy, const std::string& why) {
            switchboard.on_health(backend, healthy, why);
        });
    switchboard.on_config_change(
        [&health](const bg::Config& next, const std::set<std::string>& held) {
            health.configure(next, held);
        });
    switchboard.attach(group);
    if (fleet != nullptr) {
        switchboard.attach_fleet(*fleet);
    }
    group.start();
    server.start();
    if (admin) {
        admin->start();
        std::printf("bgproxy: admin on http://%s:%u (/healthz /readyz /status /metrics)\n",
                    bg::resolve_host_port(config->admin_listen, error)->ip.c_str(), admin->port());
    }
    health.configure(*config);
    print_started(*config, group.ports(), workers, switchboard.state(), fleet);
    std::fflush(stdout);

    Daemon daemon{control,
                  *config,
                  switchboard,
                  group,
                  server,
                  health,
                  admin.get(),
                  access_log.get(),
                  audit,
                  fleet,
                  boost::asio::steady_timer(control),
                  std::thread()};
    wait_for_signal(daemon, signals);
    control.run();
    if (daemon.joiner.joinable()) {
        daemon.joiner.join();
    }
    if (fleet != nullptr) {
        fleet->leave();  // out of the membership now, not at the lease's end
    }
    // The file writers get control.disk_timeout in all to finish. One stuck in a stalled
    // disk or mount cannot be joined (the destructors would wait for ever, and exit() could
    // block on its stdio lock): the process then exits without them, saying which; traffic is
    // drained already.
    const auto deadline = std::chrono::steady_clock::now() + config->control.disk_timeout;
    auto left = [deadline] {
        return std::max(std::chrono::milliseconds(0),
                        std::chrono::duration_cast<std::chrono::milliseconds>(
                            deadline - std::chrono::steady_clock::now()));
    };
    const bool saved = switchboard.finish_saves(deadline);
    const bool audited = audit.finish(left());
    const bool access_logged = access_log == nullptr || access_log->stop(left());
    const bool cached = fleet == nullptr || fleet->finish_cache(left());
    if (!saved || !audited || !access_logged || !cached) {
        spdlog::error("stopped with a file write stalled: {}{}{}{}",
                      saved ? "" : "the state file may not hold the last routing state; ",
                      audited ? "" : "the last audit records are not written; ",
                      access_logged ? "" : "the access log's last lines are not written; ",
                      cached ? "" : "the fleet state's local copy may be behind; ");
        spdlog::shutdown();
        std::_Exit(1);
    }
    // The persister has posted its last (finish_saves waited for it) and the workers are
    // joined: nothing else posts to the control loop now, so its pending work goes while what
    // it refers to lives.
    switchboard.stop_posting();
    control.drop_pending();
    spdlog::info("stopped");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "bgproxy: a blue-green traffic-switching reverse proxy.\n"
        "Run on a config file (--config FILE), validate one (--check FILE), or start without a\n"
        "file from flags: bgproxy --listen 127.0.0.1:8080 --blue 127.0.0.1:9001 --green "
        "127.0.0.1:9002\n"
        "Flags given together with --config override the file's values, at start and at each\n"
        "reload; the file may leave out what they give."};
    std::string config_path;
    std::string check_path;
    bg::ConfigOverrides flags;
    app.add_option("-c,--config", config_path, "run on this TOML config file")
        ->check(CLI::ExistingFile);
    app.add_option("--check", check_path,
                   "validate this config file; print each error as FILE:LINE:COLUMN: message and "
                   "exit 1, or exit 0 when it is valid");
    add_override_flags(app, flags);
    CLI11_PARSE(app, argc, argv);

    if (!check_path.empty()) {
        auto result = bg::load_config_file(check_path, flags);
        if (!result.errors.empty()) {
            return report_errors(result.errors);
        }
        std::cout << check_path << ": configuration is valid\n";
        return 0;
    }
    bg::ConfigResult merged = startup_config(config_path, flags);
    if (!merged.errors.empty()) {
        return report_errors(merged.errors);
    }
    return run(std::make_shared<const bg::Config>(std::move(*merged.config)), config_path, flags);
}
