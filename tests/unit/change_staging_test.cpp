#include <doctest/doctest.h>

#include "change_staging.hpp"
#include "unit_fixtures.hpp"

namespace {

bg::Command command(std::string_view line) {
    auto parsed = bg::parse_command(line);
    REQUIRE(parsed.command.has_value());
    return *parsed.command;
}

bg::StagedChange stage(const bg::RoutingState& state, std::string_view line) {
    static const bg::Config config = bg::test::two_blue_one_green();
    return bg::stage_change(state, config, command(line));
}

}  // namespace

TEST_CASE("staging is pure: the same input gives the same change, the input is untouched") {
    bg::RoutingState state;
    const bg::RoutingState before = state;
    auto a = stage(state, "set green=30");
    auto b = stage(state, "set green=30");
    CHECK(a.error.empty());
    CHECK(a.next.weight_bp == b.next.weight_bp);
    CHECK(a.next.weight_bp == std::array<std::uint32_t, 2>{7000, 3000});
    CHECK(state.weight_bp == before.weight_bp);
    CHECK(state.version == before.version);  // versions are the Switchboard's to give
    CHECK(a.next.version == before.version);
}

TEST_CASE("flip moves all traffic to the other colour and ends a ramp; needs a primary") {
    bg::RoutingState state;
    state.ramp = bg::RampState{bg::Colour::green, 10000, 1000, std::chrono::seconds(30), false};
    state.failed[1] = true;
    auto flip = stage(state, "flip");
    CHECK(flip.next.weight(bg::Colour::green) == 10000);
    CHECK_FALSE(flip.next.failed[1]);  // flipping to it is the operator's decision
    CHECK_FALSE(flip.next.ramp);
    CHECK(flip.note == "the ramp in progress was aborted");
    state.weight_bp = {5000, 5000};
    CHECK(stage(state, "flip").error.find("one colour taking most traffic") != std::string::npos);
}

TEST_CASE("set gives traffic to a colour marked failed only with its mark cleared") {
    bg::RoutingState state;
    state.failed[1] = true;
    // Failed on 43f2a07: the mark stayed, and the guard, which skipped marked colours, let a
    // failing green take half the traffic.
    const auto half = stage(state, "set green=50");
    CHECK_FALSE(half.next.failed[1]);
    CHECK(half.note == "green was marked failed: the rollout guard watches it again");
    const auto none = stage(state, "set green=0");
    CHECK(none.next.failed[1]);  // no traffic: the mark stays
    CHECK(none.note.empty());
}

TEST_CASE("a ramp giving a colour marked failed traffic clears its mark, whichever it names") {
    bg::RoutingState state;
    state.failed[1] = true;
    // Failed on 523726c: `ramp blue to=0` gave green half the traffic and kept its mark (the
    // failed role and alert on a colour serving; no failover to it).
    const auto down = stage(state, "ramp blue to=0 step=50 every=1h");
    REQUIRE(down.error.empty());
    CHECK(down.next.weight(bg::Colour::green) == 5000);
    CHECK_FALSE(down.next.failed[1]);
    CHECK(down.note.find("green was marked failed") != std::string::npos);
    const auto up = stage(state, "ramp green to=20 step=10 every=1h");
    CHECK_FALSE(up.next.failed[1]);
}

TEST_CASE("during a failover, ramp pause and abort act on the ramp it stopped") {
    bg::RoutingState state;
    state.weight_bp = {0, 10000};
    state.failover = bg::FailoverState{{8000, 2000}, "2026-12-06T00:00:00Z"};
    state.failover->ramp =
        bg::RampState{bg::Colour::green, 10000, 1000, std::chrono::seconds(30), false};
    const auto paused = stage(state, "ramp pause");
    REQUIRE(paused.error.empty());
    CHECK(paused.next.failover->ramp->paused);
    CHECK(paused.next.weight_bp == state.weight_bp);
    const auto aborted = stage(state, "ramp abort");
    REQUIRE(aborted.error.empty());
    CHECK_FALSE(aborted.next.failover->ramp);
    CHECK(aborted.note == "the failback will not resume it");
    CHECK(bg::describe_change(state, aborted.next) == "the stopped ramp dropped");
    state.failover->ramp.reset();
    CHECK(stage(state, "ramp abort").error == "no ramp in progress");
}

TEST_CASE("a ramp that replaces a ramp in progress says so") {
    // Found by an outside probe: `ramp green to=50` during a ramp to 100 answered as a first
    // ramp would (the change named only the weights' step).
    bg::RoutingState state;
    state.weight_bp = {8000, 2000};
    state.ramp = bg::RampState{bg::Colour::green, 10000, 1000, std::chrono::seconds(30), false};
    const auto replaced = stage(state, "ramp green to=50 step=5 every=10s");
    REQUIRE(replaced.error.empty());
    CHECK(replaced.note == "replaces the ramp in progress; first step taken; next in 10000ms");
    CHECK(bg::describe_change(state, replaced.next) ==
          "blue 80% -> 75%, green 20% -> 25%, ramp replaced: green to 50% by 5% every 10000ms");
    // The same plan again (only its pause undone): resumed, not replaced.
    bg::RoutingState paused = state;
    paused.ramp->paused = true;
    CHECK(bg::describe_change(paused, state) == "ramp resumed");
    CHECK(stage(paused, "ramp green to=50 step=5 every=10s")
              .note.starts_with("replaces the paused ramp; "));
    CHECK(stage(state, "ramp green to=100 step=10 every=30s")
              .note.starts_with("restarts the ramp in progress; "));
    // One a failover stopped, to resume at the failback: the new ramp ends the failover and it.
    bg::RoutingState failed_over;
    failed_over.weight_bp = {0, 10000};
    failed_over.failover = bg::FailoverState{{8000, 2000}, "2026-12-06T00:00:00Z"};
    failed_over.failover->ramp = state.ramp;
    CHECK(stage(failed_over, "ramp blue to=50 step=10 every=10s")
              .note.starts_with("replaces the ramp the failover stopped; "));
}

TEST_CASE("rollback returns to stable; promote needs one colour; clear needs a failed mark") {
    bg::RoutingState state;
    state.weight_bp = {2000, 8000};
    CHECK(stage(state, "rollback").next.weight(bg::Colour::blue) == 10000);
    CHECK(stage(state, "promote").error.find("all traffic on one colour") != std::string::npos);
    state.weight_bp = {0, 10000};
    CHECK(stage(state, "promote").next.stable == bg::Colour::green);
    CHECK(stage(state, "clear").error == "no colour is marked failed");
    state.failed[1] = true;
    CHECK_FALSE(stage(state, "clear").next.failed[1]);
}

TEST_CASE("a rollback withdraws the release it takes traffic from; a set or a ramp does not") {
    // Found by an outside probe: only the guard's revert cut the requests waiting on a hung
    // release, so an operator's quicker rollback left them waiting out upstream_try.
    bg::RoutingState state;
    state.weight_bp = {5000, 5000};
    CHECK(stage(state, "rollback").next.withdrawn == std::array<bool, 2>{false, true});
    CHECK(stage(state, "set green=0").next.withdrawn == std::array<bool, 2>{false, false});
    // A ramp on its way to green, still at 0 after its abort: its colour is the release.
    state.weight_bp = {10000, 0};
    CHECK(stage(state, "rollback").next.withdrawn == std::array<bool, 2>{false, false});
    state.ramp = bg::RampState{bg::Colour::green, 10000, 1000, std::chrono::seconds(30), false};
    CHECK(stage(state, "rollback").next.withdrawn == std::array<bool, 2>{false, true});
    // Ending a failover, green hung since (found by an outside probe: its GETs waited 10 s).
    state.ramp.reset();
    state.weight_bp = {0, 10000};
    state.failover = bg::FailoverState{{10000, 0}, "2026-12-05T00:00:00Z"};
    CHECK(stage(state, "rollback").next.withdrawn == std::array<bool, 2>{false, true});
}

TEST_CASE("ramp takes its first step now and the rest by stage_ramp_step, up or down") {
    bg::RoutingState state;
    auto ramp = stage(state, "ramp green to=25 step=10 every=1s");
    REQUIRE(ramp.error.empty());
    CHECK(ramp.next.weight(bg::Colour::green) == 1000);
    REQUIRE(ramp.next.ramp);
    auto second = bg::stage_ramp_step(ramp.next);
    CHECK(second.next.weight(bg::Colour::green) == 2000);
    auto last = bg::stage_ramp_step(second.next);
    CHECK(last.next.weight(bg::Colour::green) == 2500);  // never past `to`
    CHECK_FALSE(last.next.ramp);
    CHECK(last.note == "ramp complete");
    CHECK(bg::stage_ramp_step(last.next).error == "no ramp to step");
    CHECK(stage(last.next, "ramp green to=25 step=5 every=1s").error.find("already at") !=
          std::string::npos);
    auto down = stage(last.next, "ramp green to=0 step=20 every=1s");
    CHECK(down.next.weight(bg::Colour::green) == 500);
    auto paused = stage(down.next, "ramp pause");
    CHECK(paused.next.ramp->paused);
    CHECK(bg::stage_ramp_step(paused.next).error == "no ramp to step");
    CHECK(stage(state, "ramp abort").error == "no ramp in progress");
}

TEST_CASE("admin states name known backends only; reconcile drops the unknown") {
    bg::RoutingState state;
    CHECK(stage(state, "drain blue-9").error.find("unknown backend 'blue-9'") != std::string::npos);
    auto drained = stage(state, "drain blue-2");
    CHECK(drained.next.admin_state("blue-2") == bg::AdminState::drain);
    CHECK(stage(drained.next, "ready blue-2").next.admin_state("blue-2") == bg::AdminState::ready);
    drained.next.admin["gone-1"] = bg::AdminState::maint;
    CHECK(bg::reconcile_admin(drained.next, bg::test::two_blue_one_green()) ==
          "gone-1 (was maint)");
    CHECK(drained.next.admin.size() == 1);
}

TEST_CASE("the colour gaining traffic is the one the gate checks") {
    bg::RoutingState before;
    auto set = stage(before, "set green=10");
    CHECK(bg::gaining_colour(before, set.next) == bg::Colour::green);
    CHECK_FALSE(bg::gaining_colour(before, stage(before, "drain blue-1").next));
}

TEST_CASE("a reload's new backends wait for a first check unless their colour has none else") {
    const bg::Config before = bg::test::two_blue_one_green();
    auto parsed = bg::parse_config(R"(
[[listener]]
address = "127.0.0.1:0"
[pools.blue]
backends = [{ name = "blue-1", address = "127.0.0.1:1" }, { name = "blue-2", address = "127.0.0.1:2" },
            { name = "blue-3", address = "127.0.0.1:4" }]
[pools.green]
backends = [{ name = "green-1", address = "127.0.0.1:5" }, { name = "green-2", address = "127.0.0.1:6" }]
)",
                                   "t");
    REQUIRE(parsed.errors.empty());
    const bg::Config after = *parsed.config;
    const std::set<std::string> all_new{"blue-3", "green-1", "green-2"};  // green-1 moved
    CHECK(bg::added_backends(before, after) == all_new);

    bg::RoutingState blue_live;  // all traffic on blue
    CHECK(bg::held_for_first_check(before, after, blue_live, {}) == all_new);
    // Blue serves from nothing else it keeps: its new backend serves at once (no revert).
    std::map<std::string, bool> blue_down{{"blue-1", false}, {"blue-2", true}};
    blue_live.admin["blue-2"] = bg::AdminState::drain;
    CHECK(bg::held_for_first_check(before, after, blue_live, blue_down) ==
          std::set<std::string>{"green-1", "green-2"});
    // Green at 10% keeps no backend of its own: the same.
    auto canary = stage(bg::RoutingState{}, "set green=10").next;
    CHECK(bg::held_for_first_check(before, after, canary, {}) == std::set<std::string>{"blue-3"});
    // Without active checks nothing would let them in: not held.
    bg::Config unchecked = after;
    unchecked.blue.health.enabled = false;
    unchecked.green.health.enabled = false;
    CHECK(bg::held_for_first_check(before, unchecked, blue_live, {}).empty());
    CHECK(bg::added_backends(after, after).empty());
}
