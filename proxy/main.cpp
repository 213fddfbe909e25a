// bgproxy: the blue-green reverse proxy daemon.

#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <cstdio>
#include <iostream>
#include <memory>
#include <vector>

#include "config.hpp"
#include "routing_table.hpp"
#include "worker.hpp"

namespace {

int report_errors(const std::vector<bg::ConfigError>& errors) {
    for (const auto& error : errors) {
        std::cerr << error.to_string() << '\n';
    }
    return 1;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "bgproxy: a blue-green traffic-switching reverse proxy.\n"
        "Run on a config file (--config FILE), validate one (--check FILE), or start without a\n"
        "file from flags: bgproxy --listen 127.0.0.1:8080 --blue 127.0.0.1:9001 --green "
        "127.0.0.1:9002\n"
        "Flags given together with --config override the file's values."};
    std::string config_path;
    std::string check_path;
    bg::ConfigOverrides flags;
    app.add_option("-c,--config", config_path, "run on this TOML config file")
        ->check(CLI::ExistingFile);
    app.add_option("--check", check_path,
                   "validate this config file; print each error as FILE:LINE:COLUMN: message and "
                   "exit 1, or exit 0 when it is valid");
    app.add_option("--listen", flags.listen, "listen address, e.g. 127.0.0.1:8080");
    app.add_option("--blue", flags.blue, "blue backends: ADDR[,ADDR...]");
    app.add_option("--green", flags.green, "green backends: ADDR[,ADDR...]");
    app.add_option("--weights", flags.weights, "initial split, e.g. blue=90,green=10");
    app.add_option("--workers", flags.workers,
                   "worker threads (default: the CPUs this process may run on)");
    app.add_option("--admin", flags.admin, "admin HTTP listen address");
    app.add_option("--control-socket", flags.control_socket, "control socket path");
    CLI11_PARSE(app, argc, argv);

    if (!check_path.empty()) {
        auto result = bg::load_config_file(check_path);
        if (!result.errors.empty()) {
            return report_errors(result.errors);
        }
        std::cout << check_path << ": configuration is valid\n";
        return 0;
    }

    bg::Config base;
    if (!config_path.empty()) {
        auto loaded = bg::load_config_file(config_path);
        if (!loaded.errors.empty()) {
            return report_errors(loaded.errors);
        }
        base = std::move(*loaded.config);
    }
    auto merged = bg::apply_overrides(std::move(base), flags);
    if (!merged.errors.empty()) {
        return report_errors(merged.errors);
    }
    auto config = std::make_shared<const bg::Config>(std::move(*merged.config));
    const unsigned workers = config->workers > 0 ? config->workers : bg::default_worker_count();

    auto table = bg::make_initial_table(*config);
    std::vector<std::unique_ptr<bg::Worker>> pool;
    std::vector<std::uint16_t> ports;
    for (unsigned i = 0; i < workers; ++i) {
        pool.push_back(std::make_unique<bg::Worker>(i, config, table));
        std::string error;
        if (!pool.back()->bind(ports, error)) {
            spdlog::error("{}", error);
            return 1;
        }
    }
    for (auto& worker : pool) {
        worker->start();
    }
    for (std::size_t i = 0; i < config->listeners.size(); ++i) {
        std::printf("bgproxy: listening on http://%s:%u (%u workers)\n",
                    config->listeners[i].address.ip.c_str(), ports[i], workers);
    }
    std::printf("bgproxy: blue %u.%02u%% (%zu backends), green %u.%02u%% (%zu backends)\n",
                config->blue_weight_bp / 100, config->blue_weight_bp % 100,
                config->blue.backends.size(), config->green_weight_bp / 100,
                config->green_weight_bp % 100, config->green.backends.size());
    std::fflush(stdout);

    // The control thread: for now it waits for a signal to shut down gracefully.
    boost::asio::io_context control;
    boost::asio::signal_set signals(control, SIGTERM, SIGINT);
    signals.async_wait([&](boost::system::error_code ec, int signal) {
        if (ec) {
            return;
        }
        spdlog::info("signal {}: graceful shutdown (grace {} ms)", signal,
                     config->timeouts.shutdown_grace.count());
        for (auto& worker : pool) {
            worker->begin_shutdown();
        }
    });
    control.run();
    for (auto& worker : pool) {
        worker->join();
    }
    spdlog::info("stopped");
    return 0;
}
