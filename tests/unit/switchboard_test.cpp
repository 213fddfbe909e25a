#include <doctest/doctest.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/json.hpp>
#include <filesystem>
#include <fstream>

#include "audit_log.hpp"
#include "state_store.hpp"
#include "switchboard.hpp"
#include "unit_fixtures.hpp"

namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

// A Switchboard with no data plane attached: changes apply as soon as they are persisted.
struct Fixture {
    bg::test::TempDir dir;
    boost::asio::io_context io;
    bg::FileStateStore store{(dir.path / "state.json").string()};
    bg::AuditLog audit{(dir.path / "audit.log").string()};
    bg::Switchboard board;
    bg::Caller operator_{1000, 1000, 42, bg::Role::operate};

    Fixture()
        : board(io.get_executor(),
                std::make_shared<const bg::Config>(bg::test::two_blue_one_green()), "", store,
                audit) {
        std::string error;
        REQUIRE(audit.open(error));
        REQUIRE(board.load(error));
    }

    json::object run(const std::string& line, bg::Caller caller) {
        json::object reply;
        board.execute(caller, line, [&reply](const json::object& r) { reply = r; });
        io.run();
        io.restart();
        return reply;
    }
    json::object run(const std::string& line) { return run(line, operator_); }
};

}  // namespace

TEST_CASE("flip, promote, rollback move weights and the stable colour") {
    Fixture f;
    CHECK(f.board.state().stable == bg::Colour::blue);
    auto reply = f.run("flip");
    CHECK(reply.at("ok").as_bool());
    CHECK(f.board.state().weight(bg::Colour::green) == 10000);
    CHECK(f.board.state().stable == bg::Colour::blue);  // the old colour is the fallback
    CHECK(f.board.state().version == 2);
    CHECK(f.run("rollback").at("ok").as_bool());
    CHECK(f.board.state().weight(bg::Colour::blue) == 10000);
    f.run("flip");
    CHECK(f.run("promote").at("ok").as_bool());
    CHECK(f.board.state().stable == bg::Colour::green);
    f.run("set green=50");
    auto refused = f.run("flip");
    CHECK_FALSE(refused.at("ok").as_bool());
    CHECK(std::string(refused.at("error").as_string()).find("nothing changed") !=
          std::string::npos);
    CHECK_FALSE(f.run("promote").at("ok").as_bool());
}

TEST_CASE("a split keeps the version it began at through its steps; a new split, its own") {
    Fixture f;
    CHECK(f.board.state().split_since == 0);
    REQUIRE(f.run("set green=10").at("ok").as_bool());
    const std::uint64_t began = f.board.state().version;
    CHECK(f.board.state().split_since == began);
    REQUIRE(f.run("set green=30").at("ok").as_bool());  // a step of the same rollout
    CHECK(f.board.state().split_since == began);
    REQUIRE(f.run("rollback").at("ok").as_bool());
    CHECK(f.board.state().split_since == 0);
    REQUIRE(f.run("set green=10").at("ok").as_bool());
    CHECK(f.board.state().split_since == f.board.state().version);
    CHECK(f.board.state().split_since != began);
    // Kept with the state: a restart goes on with the same split.
    std::string error;
    const auto saved = bg::routing_state_from_json(bg::to_json(f.board.state()), error);
    REQUIRE(saved);
    CHECK(saved->split_since == f.board.state().split_since);
}

TEST_CASE("a refused or dry-run command changes nothing") {
    Fixture f;
    const auto version = f.board.state().version;
    CHECK_FALSE(f.run("drain nope").at("ok").as_bool());
    CHECK_FALSE(f.run("set blue=1 green=1").at("ok").as_bool());
    auto dry = f.run("set green=30 --dry-run");
    CHECK(dry.at("dry_run").as_bool());
    CHECK(std::string(dry.at("change").as_string()) == "blue 100% -> 70%, green 0% -> 30%");
    // A dry ramp's note says what applying would do, not that a step was taken (an outside
    // probe).
    auto ramp = f.run("ramp green to=50 step=10 every=30s --dry-run");
    CHECK(std::string(ramp.at("note").as_string()).starts_with("if applied: first step taken"));
    CHECK(f.board.state().version == version);
    CHECK(f.board.state().weight(bg::Colour::green) == 0);
}

TEST_CASE("roles: read may look, not change; refusals are audited") {
    Fixture f;
    bg::Caller reader{2000, 2000, 7, bg::Role::read};
    CHECK(f.run("status", reader).at("ok").as_bool());
    auto refused = f.run("flip", reader);
    CHECK_FALSE(refused.at("ok").as_bool());
    CHECK(std::string(refused.at("error").as_string()).find("needs the operate role") !=
          std::string::npos);
    CHECK(f.board.state().weight(bg::Colour::blue) == 10000);
    auto last = f.audit.last(1);
    REQUIRE(last.size() == 1);
    auto record = json::parse(last.front()).as_object();
    CHECK(record.at("result").as_string() == "refused");
    CHECK(record.at("uid").to_number<int>() == 2000);
}

TEST_CASE("state survives a restart and a corrupt file is an error, not a reset") {
    bg::test::TempDir dir;
    auto path = (dir.path / "state.json").string();
    {
        Fixture f;
        f.run("set green=25");
        f.run("drain blue-2");
        fs::copy_file(f.dir.path / "state.json", path);
    }
    boost::asio::io_context io;
    bg::FileStateStore store(path);
    bg::AuditLog audit("");
    bg::Switchboard board(io.get_executor(),
                          std::make_shared<const bg::Config>(bg::test::two_blue_one_green()), "",
                          store, audit);
    std::string error;
    REQUIRE(board.load(error));
    CHECK(board.state().weight(bg::Colour::green) == 2500);
    CHECK(board.state().admin_state("blue-2") == bg::AdminState::drain);
    CHECK(board.table()->pool(bg::Colour::blue).eligible.size() == 1);

    std::ofstream(path) << "{\"format\":1,\"version\":";
    bg::FileStateStore broken(path);
    auto loaded = broken.load();
    CHECK_FALSE(loaded.state.has_value());
    CHECK(loaded.error.find("not valid JSON") != std::string::npos);
}

TEST_CASE("the store refuses a save derived from a version it no longer has") {
    bg::test::TempDir dir;
    bg::FileStateStore store((dir.path / "s.json").string());
    CHECK_FALSE(store.load().state.has_value());
    bg::RoutingState state;
    CHECK(store.save(state, {0, 0}).ok);
    state.version = 2;
    CHECK(store.save(state, {1, 0}).ok);
    state.version = 3;
    const bg::SaveOutcome refused = store.save(state, {1, 0});
    CHECK_FALSE(refused.ok);
    CHECK(refused.conflict);
    CHECK(refused.error.find("changed underneath") != std::string::npos);
}

TEST_CASE("a ramp takes its first step at once and ends at its target") {
    Fixture f;
    auto reply = f.run("ramp green to=30 step=10 every=100ms");
    CHECK(reply.at("ok").as_bool());
    CHECK(f.board.state().weight(bg::Colour::green) == 1000);
    REQUIRE(f.board.state().ramp.has_value());
    CHECK_FALSE(f.run("ramp green to=10 step=10 every=1s").at("ok").as_bool());  // already there
    CHECK(f.run("ramp pause").at("ok").as_bool());
    CHECK(f.board.state().ramp->paused);
    CHECK(f.run("ramp abort").at("ok").as_bool());
    CHECK_FALSE(f.board.state().ramp.has_value());
    CHECK(f.board.state().weight(bg::Colour::green) == 1000);
    CHECK_FALSE(f.run("ramp resume").at("ok").as_bool());
}

TEST_CASE("a read-only caller's refusals are audited up to a rate; an operator's always") {
    Fixture f;
    bg::Caller reader{2000, 2000, 7, bg::Role::read};
    for (int i = 0; i < 50; ++i) {
        CHECK_FALSE(f.run("no such command", reader).at("ok").as_bool());
    }
    CHECK_FALSE(f.run("flip --bogus").at("ok").as_bool());  // the operator's
    const auto records = f.audit.last(1000);
    CHECK(records.size() == 21);  // audit_refusals_per_second (20), then the operator's
    CHECK(json::parse(records.back()).as_object().at("uid").to_number<int>() == 1000);
}
