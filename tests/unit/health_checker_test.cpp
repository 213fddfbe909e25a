#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <map>
#include <string>

#include "health_checker.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = boost::asio;

bg::Config one_backend_at(const std::string& ip, std::uint16_t port) {
    bg::Config config;
    bg::HealthCheckConfig& health = config.blue.health;
    health.tcp_only = true;
    health.interval = 20ms;
    health.fast_interval = 20ms;
    health.timeout = 200ms;
    health.jitter = 0ms;
    health.rise = 1;
    health.fall = 1;
    config.green.health.enabled = false;
    // The same name and text, as when a reload resolves the host name to another address.
    config.blue.backends.push_back(
        {"app", bg::HostPort{"app.internal:" + std::to_string(port), ip, port}});
    return config;
}

}  // namespace

TEST_CASE("a backend whose host name moves to another ip is checked there, from its verdict") {
    asio::io_context io;
    // 127.0.0.2 is loopback too: the new address listens, the old one (same port) does not.
    asio::ip::tcp::acceptor moved(io, {asio::ip::make_address("127.0.0.2"), 0});
    const auto port = moved.local_endpoint().port();
    std::map<std::string, bool> told;
    bg::HealthChecker checker(io.get_executor(), [&](const std::string& name, bool healthy,
                                                     const std::string&) { told[name] = healthy; });
    checker.configure(one_backend_at("127.0.0.1", port));
    io.run_for(300ms);
    REQUIRE(told.contains("app"));
    CHECK_FALSE(told["app"]);  // nothing listens at the old address
    checker.configure(one_backend_at("127.0.0.2", port));
    io.run_for(300ms);
    // Checked at the new address, and told: the Switchboard still holds it down otherwise.
    CHECK(told["app"]);
    CHECK(checker.snapshot().at("app"));
    checker.stop();
    io.run_for(100ms);
}
