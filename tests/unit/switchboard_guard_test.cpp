// The rollout guard judges every change, not only health transitions; a rollback cancels every
// gated command behind it; the ramp survives a refused step and ignores a stale one.
#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <boost/json.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include "audit_log.hpp"
#include "state_store.hpp"
#include "switchboard.hpp"
#include "table_publisher.hpp"
#include "unit_fixtures.hpp"

namespace json = boost::json;
namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

bg::Config parsed(const std::string& text) {
    auto result = bg::parse_config(text, "t");
    REQUIRE(result.errors.empty());
    return *result.config;
}

// Workers that apply a table when the test says so: a publication in flight keeps the
// Switchboard's line busy, as a slow worker does.
struct HeldPublisher final : bg::TablePublisher {
    bool hold = false;
    std::vector<std::function<void()>> held;
    void publish(bg::RoutingTablePtr, std::shared_ptr<const bg::Config>,
                 std::function<void()> on_applied) override {
        if (hold) {
            held.push_back(std::move(on_applied));
        } else {
            on_applied();
        }
    }
    void gather_load(std::function<void(bg::DataPlaneLoad)> done) override {
        done(bg::DataPlaneLoad{});
    }
    void on_failure_run(std::function<void()>) override {}
    void release() {
        auto all = std::exchange(held, {});
        for (auto& f : all) {
            f();
        }
    }
};

struct Board {
    bg::test::TempDir dir;
    asio::io_context io;
    std::filesystem::path state_dir = dir.path / "state";
    bg::FileStateStore store{(state_dir / "state.json").string()};
    bg::AuditLog audit{(dir.path / "audit.log").string()};
    bg::Switchboard board;
    bg::Caller operator_{1000, 1000, 42, bg::Role::operate};

    explicit Board(bg::Config config)
        : board(io.get_executor(), std::make_shared<const bg::Config>(std::move(config)), "", store,
                audit) {
        std::string error;
        REQUIRE(audit.open(error));
        REQUIRE(board.load(error));
    }
    Board() : Board(bg::test::two_blue_one_green()) {}

    // Runs the control thread until `done` (or a second): timers keep an attached board busy.
    template <class Done>
    void run_until(Done done) {
        const auto deadline = std::chrono::steady_clock::now() + 1s;
        while (!done() && std::chrono::steady_clock::now() < deadline) {
            io.run_for(5ms);
            io.restart();
        }
    }
    json::object run(const std::string& line) {
        json::object reply;
        board.execute(operator_, line, [&reply](const json::object& r) { reply = r; });
        run_until([&] { return !reply.empty(); });
        return reply;
    }
    void health(const std::string& backend, bool up) {
        board.on_health(backend, up, up ? "check passed" : "check failed");
        // The change and the guard's answer to it, if any.
        io.run_for(50ms);
        io.restart();
    }
    // The state directory becomes unwritable (even for root): a plain file stands in its place.
    void break_disk() {
        std::filesystem::remove_all(state_dir);
        std::ofstream(state_dir) << "in the way\n";
    }
    void mend_disk() { std::filesystem::remove(state_dir); }
    std::uint32_t green() const { return board.state().weight(bg::Colour::green); }
    std::string error_of(const json::object& reply) const {
        return reply.contains("error") ? std::string(reply.at("error").as_string()) : "";
    }
};

}  // namespace

TEST_CASE("a flip, set or ramp onto a colour failing its checks is refused, and says why") {
    Board b;
    b.health("green-1", false);
    const auto version = b.board.state().version;
    for (const char* line : {"set green=20", "flip", "ramp green to=50 step=10 every=1s"}) {
        const auto reply = b.run(line);
        CHECK_FALSE(reply.at("ok").as_bool());
        CHECK(b.error_of(reply).find("the rollout guard would undo this at once: green failed "
                                     "(0/1 healthy)") != std::string::npos);
        CHECK(b.error_of(reply).find("nothing changed") != std::string::npos);
    }
    CHECK(b.board.state().version == version);
    CHECK(b.green() == 0);
    b.health("green-1", true);
    CHECK(b.run("set green=20").at("ok").as_bool());
    CHECK(b.green() == 2000);
}

TEST_CASE("a candidate the guard reverted is not given traffic back while it still fails") {
    Board b;
    CHECK(b.run("set green=20").at("ok").as_bool());
    b.health("green-1", false);
    CHECK(b.green() == 0);
    CHECK(b.board.state().failed[bg::index_of(bg::Colour::green)]);
    // A set clears the failed mark; it used to apply, and green served at 0/1 healthy with
    // nothing to revert it until its health changed again.
    CHECK_FALSE(b.run("set green=20").at("ok").as_bool());
    CHECK(b.green() == 0);
}

TEST_CASE("a drain of the candidate's last backend is applied and the guard reverts at once") {
    Board b;
    CHECK(b.run("set green=20").at("ok").as_bool());
    const auto reply = b.run("maint green-1");
    CHECK(reply.at("ok").as_bool());
    CHECK(std::string(reply.at("note").as_string()).find("the rollout guard acts next") !=
          std::string::npos);
    b.run_until([&] { return b.green() == 0; });
    CHECK(b.green() == 0);
    CHECK(b.board.state().changed_by == "rollout guard");
    CHECK(b.board.state().failed[bg::index_of(bg::Colour::green)]);
}

TEST_CASE("a rollback during a failover, onto a stable colour still failing, fails over again") {
    Board b;
    b.health("blue-1", false);
    b.health("blue-2", false);
    REQUIRE(b.board.state().failover.has_value());
    CHECK(b.green() == 10000);
    const auto reply = b.run("rollback");
    CHECK(reply.at("ok").as_bool());
    b.run_until([&] { return b.green() == 10000; });
    CHECK(b.green() == 10000);
    CHECK(b.board.state().failover.has_value());
    CHECK(b.board.state().changed_by == "rollout guard");
}

TEST_CASE("a no-op rollback cancels a gated command whose gate passed and waits behind it") {
    // A smoke check that passes: a real listener answering 200.
    asio::io_context server_io;
    asio::ip::tcp::acceptor acceptor(server_io, {asio::ip::make_address("127.0.0.1"), 0});
    const auto port = acceptor.local_endpoint().port();
    std::function<void()> serve = [&] {
        acceptor.async_accept([&](boost::system::error_code ec, asio::ip::tcp::socket s) {
            if (ec) {
                return;
            }
            auto socket = std::make_shared<asio::ip::tcp::socket>(std::move(s));
            auto buffer = std::make_shared<asio::streambuf>();
            asio::async_read_until(
                *socket, *buffer, "\r\n\r\n", [socket, buffer](boost::system::error_code, auto) {
                    static const std::string ok =
                        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                    asio::async_write(*socket, asio::buffer(ok),
                                      [socket](boost::system::error_code, auto) {});
                });
            serve();
        });
    };
    serve();
    std::thread server([&] { server_io.run_for(3s); });
    Board b(parsed(R"(
[[listener]]
address = "127.0.0.1:0"
[pools.blue]
backends = [{ name = "blue-1", address = "127.0.0.1:1" }]
[pools.green]
backends = [{ name = "green-1", address = "127.0.0.1:)" +
                   std::to_string(port) + R"(" }]
[[gate]]
name = "root"
path = "/"
expect = 200
)"));
    HeldPublisher workers;
    b.board.attach(workers);

    json::object set_reply;
    json::object rollback_reply;
    b.board.execute(b.operator_, "set green=20",
                    [&](const json::object& r) { set_reply = r; });  // its gate starts
    workers.hold = true;
    b.board.on_health("blue-1", true, "check passed");  // a publication the workers hold
    b.board.execute(b.operator_, "rollback", [&](const json::object& r) { rollback_reply = r; });
    // The gate passes meanwhile: the set waits in line behind the rollback.
    b.run_until([&] { return false; });
    CHECK(set_reply.empty());
    CHECK(rollback_reply.empty());
    workers.hold = false;
    workers.release();
    b.run_until([&] { return !set_reply.empty() && !rollback_reply.empty(); });
    CHECK(rollback_reply.at("ok").as_bool());
    REQUIRE_FALSE(set_reply.empty());
    CHECK_FALSE(set_reply.at("ok").as_bool());
    CHECK(b.error_of(set_reply).find("cancelled: a rollback") != std::string::npos);
    CHECK(b.green() == 0);
    acceptor.close();
    server_io.stop();
    server.join();
}

// A board with workers attached (ramps step only then), ramping green by 10% every 100 ms.
struct Ramping : Board {
    HeldPublisher workers;
    explicit Ramping(const char* to) {
        board.attach(workers);
        CHECK(run(std::string("ramp green to=") + to + " step=10 every=100ms").at("ok").as_bool());
        CHECK(green() == 1000);
    }
};

TEST_CASE("a ramp step that cannot be saved is tried again, not dropped") {
    Ramping b("30");
    b.break_disk();
    b.run_until([] { return false; });  // several refused steps
    CHECK(b.green() == 1000);
    REQUIRE(b.board.state().ramp.has_value());
    b.mend_disk();
    b.run_until([&] { return b.green() == 3000; });
    CHECK(b.green() == 3000);
    CHECK_FALSE(b.board.state().ramp.has_value());
}

TEST_CASE("a ramp step armed before a new ramp replaced it is not taken") {
    Ramping b("50");
    HeldPublisher& workers = b.workers;
    workers.hold = true;
    b.board.on_health("blue-1", true, "check passed");  // the line is busy
    json::object reply;
    b.board.execute(b.operator_, "ramp green to=90 step=5 every=10s",
                    [&](const json::object& r) { reply = r; });
    // Meanwhile the old ramp's timer fires: its step waits in line behind the new ramp.
    b.io.run_for(250ms);
    b.io.restart();
    workers.hold = false;
    workers.release();
    b.run_until([&] { return !reply.empty(); });
    CHECK(reply.at("ok").as_bool());
    b.io.run_for(200ms);
    b.io.restart();
    CHECK(b.green() == 1500);  // the new ramp's first step, and no other
}

TEST_CASE("a caller that hangs up cancels its own queued command, not another's with its id") {
    Board b;
    HeldPublisher workers;
    b.board.attach(workers);
    workers.hold = true;
    b.board.on_health("blue-1", true, "check passed");  // the line is busy
    json::object reply;
    b.board.execute(b.operator_, "set green=10 --id=deploy-42",
                    [&](const json::object& r) { reply = r; });
    const bg::Caller reader{2000, 2000, 7, bg::Role::read};
    b.board.cancel(reader, "deploy-42", "the client closed the connection");
    CHECK(reply.empty());  // still waiting: not the reader's to cancel
    b.board.cancel(b.operator_, "deploy-42", "the client closed the connection");
    REQUIRE_FALSE(reply.empty());
    CHECK(b.error_of(reply).find("cancelled") != std::string::npos);
    workers.hold = false;
    workers.release();
    b.run_until([] { return false; });
    CHECK(b.green() == 0);
}
