#include <doctest/doctest.h>

#include "command.hpp"

namespace {

bg::Command ok(std::string_view line) {
    auto parsed = bg::parse_command(line);
    INFO(line, " -> ", parsed.error);
    REQUIRE(parsed.command.has_value());
    return *parsed.command;
}

std::string error(std::string_view line) {
    auto parsed = bg::parse_command(line);
    REQUIRE_FALSE(parsed.command.has_value());
    return parsed.error;
}

}  // namespace

TEST_CASE("set takes one or both colours, summing to 100") {
    auto both = ok("set blue=87.5 green=12.5");
    CHECK(*both.blue_bp == 8750);
    CHECK(*both.green_bp == 1250);
    auto one = ok("set green=10");
    CHECK(*one.blue_bp == 9000);
    CHECK(error("set blue=60 green=30").find("sum to 100") != std::string::npos);
    CHECK(error("set green=10.123").find("two decimals") != std::string::npos);
    CHECK(error("set green=101").find("percentage") != std::string::npos);
    CHECK(error("set purple=10").find("unknown colour") != std::string::npos);
    CHECK(error("set green=10 green=10").find("twice") != std::string::npos);
    CHECK(error("set").find("usage") != std::string::npos);
    CHECK(error("set green=-1").find("percentage") != std::string::npos);
    CHECK(error("set green=1e1").find("percentage") != std::string::npos);
}

TEST_CASE("ramp, its controls, and dry runs") {
    auto ramp = ok("ramp green to=100 step=10 every=30s --dry-run");
    CHECK(ramp.verb == bg::Verb::ramp);
    CHECK(ramp.colour == bg::Colour::green);
    CHECK(ramp.to_bp == 10000);
    CHECK(ramp.step_bp == 1000);
    CHECK(ramp.every == std::chrono::seconds(30));
    CHECK(ramp.dry_run);
    CHECK(ok("ramp pause").verb == bg::Verb::ramp_pause);
    CHECK(ok("ramp abort").verb == bg::Verb::ramp_abort);
    CHECK(ok("ramp resume").verb == bg::Verb::ramp_resume);
    CHECK(error("resume").find("unknown command") != std::string::npos);
    CHECK(error("ramp green to=100 every=30s").find("usage") != std::string::npos);
    CHECK(error("ramp green step=0 every=1s").find("more than 0") != std::string::npos);
    CHECK(error("ramp green step=10 every=1ms").find("at least 100ms") != std::string::npos);
    // A repeated option is an operator's typo, not a last-one-wins override.
    CHECK(error("ramp green to=50 step=10 every=1s to=100").find("to is given twice") !=
          std::string::npos);
    CHECK(error("ramp green step=10 step=20 every=1s").find("twice") != std::string::npos);
    CHECK(error("ramp green step=10 every=1s every=2s").find("twice") != std::string::npos);
    CHECK(error("ramp green step=10 every=1s speed=2").find("unknown ramp option") !=
          std::string::npos);
}

TEST_CASE("every verb has a role; state-changing ones need operate or admin") {
    CHECK(bg::required_role(ok("status").verb) == bg::Role::read);
    CHECK(bg::required_role(ok("history 5").verb) == bg::Role::read);
    CHECK(bg::required_role(ok("watch").verb) == bg::Role::read);
    CHECK(bg::required_role(ok("flip").verb) == bg::Role::operate);
    CHECK(bg::required_role(ok("drain blue-1").verb) == bg::Role::operate);
    CHECK(bg::required_role(ok("reload").verb) == bg::Role::admin);
}

TEST_CASE("garbage is refused with a message") {
    CHECK(error("").find("empty") != std::string::npos);
    CHECK(error("frobnicate").find("unknown command 'frobnicate'") != std::string::npos);
    CHECK(error(std::string_view("fl\0ip", 5)).find("non-printable") != std::string::npos);
    CHECK(error("\xff\xfe").find("non-printable") != std::string::npos);
    CHECK(error("flip now").find("takes no arguments") != std::string::npos);
    CHECK(error("history 0").find("1 to 1000") != std::string::npos);
    CHECK(error("drain").find("usage") != std::string::npos);
}

TEST_CASE("an option only where the verb takes it, as bgctl offers them") {
    CHECK(ok("flip --skip-gate").skip_gate);
    CHECK(ok("set green=10 --skip-gate").skip_gate);
    CHECK(ok("rollback --dry-run").dry_run);
    // Accepted silently, these read as though they did something.
    CHECK(error("rollback --skip-gate").find("runs no gate") != std::string::npos);
    CHECK(error("drain blue-1 --skip-gate").find("runs no gate") != std::string::npos);
    CHECK(error("status --dry-run").find("changes nothing") != std::string::npos);
    CHECK(error("history 5 --local").find("changes nothing") != std::string::npos);
}
