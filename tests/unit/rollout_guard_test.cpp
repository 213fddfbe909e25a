#include <doctest/doctest.h>

#include "rollout_guard.hpp"

namespace {

bg::RoutingState weights(std::uint32_t blue_bp, bg::Colour stable = bg::Colour::blue) {
    bg::RoutingState state;
    state.weight_bp = {blue_bp, 10000 - blue_bp};
    state.stable = stable;
    return state;
}

std::array<bg::ColourHealth, 2> healthy(unsigned blue, unsigned green) {
    return {bg::ColourHealth{blue, 2}, bg::ColourHealth{green, 2}};
}

}  // namespace

TEST_CASE("a failing candidate taking traffic reverts to the stable colour and is marked") {
    bg::RolloutConfig rollout;
    auto d = bg::evaluate_guard(weights(0), healthy(2, 0), rollout);  // flipped to green
    REQUIRE(d.changed);
    CHECK(d.kind == bg::SwitchKind::auto_revert);
    CHECK(d.next.weight(bg::Colour::blue) == 10000);
    CHECK(d.next.failed[1]);
    CHECK(d.next.stable == bg::Colour::blue);

    auto during_ramp = weights(7000);
    during_ramp.ramp = bg::RampState{};
    auto r = bg::evaluate_guard(during_ramp, healthy(2, 0), rollout);
    REQUIRE(r.changed);
    CHECK_FALSE(r.next.ramp.has_value());
}

TEST_CASE("an idle candidate failing changes no routing") {
    bg::RolloutConfig rollout;
    CHECK_FALSE(bg::evaluate_guard(weights(10000), healthy(2, 0), rollout).changed);
    CHECK_FALSE(bg::evaluate_guard(weights(0), healthy(2, 1), rollout).changed);  // 1 >= min 1
}

TEST_CASE("min_healthy as a count or a fraction") {
    bg::RolloutConfig rollout;
    rollout.min_healthy = 2;
    CHECK(bg::colour_failed({1, 2}, rollout));
    CHECK_FALSE(bg::colour_failed({2, 2}, rollout));
    rollout.min_healthy = 0.5;
    CHECK_FALSE(bg::colour_failed({1, 2}, rollout));
    CHECK(bg::colour_failed({1, 4}, rollout));  // needs 2 of 4
    CHECK(bg::colour_failed({1, 3}, rollout));
    CHECK(bg::colour_failed({0, 0}, rollout));
}

TEST_CASE("the stable colour failing: failover (temporary) or hold") {
    bg::RolloutConfig rollout;
    auto before = weights(9000);
    auto d = bg::evaluate_guard(before, healthy(0, 2), rollout);
    REQUIRE(d.changed);
    CHECK(d.kind == bg::SwitchKind::failover);
    CHECK(d.next.weight(bg::Colour::green) == 10000);
    // Blue stays the stable colour, and the operator's weights are kept for the failback.
    CHECK(d.next.stable == bg::Colour::blue);
    CHECK_FALSE(d.next.failed[0]);
    REQUIRE(d.next.failover);
    CHECK(d.next.failover->weight_bp == before.weight_bp);
    // No second failover while failed over; no failback while blue is still down.
    CHECK_FALSE(bg::evaluate_guard(d.next, healthy(0, 2), rollout).changed);
    CHECK_FALSE(bg::evaluate_failback(d.next, healthy(0, 2), rollout).changed);
    // Blue healthy again: back to 90/10.
    auto back = bg::evaluate_failback(d.next, healthy(2, 2), rollout);
    REQUIRE(back.changed);
    CHECK(back.kind == bg::SwitchKind::failback);
    CHECK(back.next.weight_bp == before.weight_bp);
    CHECK_FALSE(back.next.failover);
    // Green failing while it carries the failover and blue is back: reverted to blue.
    auto revert = bg::evaluate_guard(d.next, healthy(2, 0), rollout);
    REQUIRE(revert.changed);
    CHECK(revert.next.weight(bg::Colour::blue) == 10000);
    CHECK_FALSE(revert.next.failover);
    rollout.stable_failure = bg::StableFailurePolicy::hold;
    CHECK_FALSE(bg::evaluate_guard(weights(10000), healthy(0, 2), rollout).changed);
}

TEST_CASE("a colour that only carried a failover and fails is not marked as a release") {
    // Found by an outside probe: blue failed (failover to green), then green too (panic), then
    // both came back, blue first: green was reverted and marked failed, its alert firing and
    // failover disarmed until `bgctl clear`, though no release of it was ever tried.
    bg::RolloutConfig rollout;
    auto d = bg::evaluate_guard(weights(10000), healthy(0, 2), rollout);
    REQUIRE(d.kind == bg::SwitchKind::failover);
    auto back = bg::evaluate_guard(d.next, healthy(2, 0), rollout);
    REQUIRE(back.changed);
    // A revert still (a safety action: applied with the store out of reach), unmarked.
    CHECK(back.kind == bg::SwitchKind::auto_revert);
    CHECK(back.next.weight(bg::Colour::blue) == 10000);
    CHECK_FALSE(back.next.failed[1]);
    CHECK_FALSE(back.next.failover);
    CHECK(back.reason.find("green failed (0/2 healthy) while it carried the failover") !=
          std::string::npos);
}

TEST_CASE("a ramp a failover stopped resumes at the failback") {
    // Found by a review (523726c): the failback restored the weights and dropped the ramp, and
    // the release stayed at the step it had reached.
    bg::RolloutConfig rollout;
    bg::RoutingState ramping = weights(8000);
    ramping.ramp = bg::RampState{bg::Colour::green, 10000, 1000, std::chrono::seconds(30), false};
    auto d = bg::evaluate_guard(ramping, healthy(0, 2), rollout);
    REQUIRE(d.changed);
    CHECK_FALSE(d.next.ramp);  // no steps while failed over
    const std::string change = bg::describe_change(ramping, d.next);
    CHECK(change.find("ramp suspended until the failback") != std::string::npos);
    CHECK(change.find("ramp ended") == std::string::npos);
    auto back = bg::evaluate_failback(d.next, healthy(2, 2), rollout);
    REQUIRE(back.changed);
    CHECK(back.next.weight_bp == ramping.weight_bp);
    CHECK(back.next.ramp == ramping.ramp);
    CHECK(back.reason.find("the ramp resumes") != std::string::npos);
}

TEST_CASE("a stable colour hung everywhere fails over, and fails back only by an operator") {
    // Found by an outside probe: blue hung on every backend, its checks passing, green healthy
    // and idle: GETs got 504 after 20 s (blue-1, then blue-2), nothing failed over.
    bg::RolloutConfig rollout;
    const std::string why = "blue answered nothing for 5000ms";
    auto d = bg::fail_over_stalled(weights(10000), healthy(2, 2), rollout, why);
    REQUIRE(d.changed);
    CHECK(d.kind == bg::SwitchKind::failover);
    CHECK(d.next.weight_bp == std::array<std::uint32_t, 2>{0, 10000});
    REQUIRE(d.next.failover);
    CHECK(d.next.failover->stalled);
    CHECK(d.next.failover->weight_bp == std::array<std::uint32_t, 2>{10000, 0});
    CHECK(d.next.withdrawn[0]);  // blue's waiting requests are cut for green
    CHECK(d.next.stable == bg::Colour::blue);
    CHECK(d.reason.find(why) != std::string::npos);
    // Its checks pass all along: no automatic failback into the hang, and green failing its
    // checks meanwhile is not reverted onto it (found by review).
    CHECK_FALSE(bg::evaluate_failback(d.next, healthy(2, 2), rollout).changed);
    CHECK_FALSE(bg::evaluate_guard(d.next, healthy(2, 0), rollout).changed);
    // None onto a candidate that fails its checks or was reverted, none under "hold", none
    // twice.
    CHECK_FALSE(bg::fail_over_stalled(weights(10000), healthy(2, 0), rollout, why).changed);
    auto reverted = weights(10000);
    reverted.failed[1] = true;
    CHECK_FALSE(bg::fail_over_stalled(reverted, healthy(2, 2), rollout, why).changed);
    CHECK_FALSE(bg::fail_over_stalled(d.next, healthy(2, 2), rollout, why).changed);
    bg::RolloutConfig hold = rollout;
    hold.stable_failure = bg::StableFailurePolicy::hold;
    CHECK_FALSE(bg::fail_over_stalled(weights(10000), healthy(2, 2), hold, why).changed);
}

TEST_CASE("both colours failing changes no routing state (the table panics instead)") {
    bg::RolloutConfig rollout;
    CHECK_FALSE(bg::evaluate_guard(weights(5000), healthy(0, 0), rollout).changed);

    std::array<bg::ColourPool, 2> pools;
    pools[0].weight_bp = 5000;
    pools[1].weight_bp = 5000;
    pools[0].backends = {{0, "b", bg::Colour::blue, {}, bg::AdminState::ready, false},
                         {1, "b2", bg::Colour::blue, {}, bg::AdminState::maint, false}};
    pools[1].backends = {{2, "g", bg::Colour::green, {}, bg::AdminState::ready, false}};
    bg::RoutingTable table(1, std::move(pools));
    CHECK(table.panic());
    CHECK(table.pool(bg::Colour::blue).eligible.size() == 1);  // maint stays out
    CHECK(table.pool(bg::Colour::green).eligible.size() == 1);
}

TEST_CASE("panic routing takes a drained backend that passes its checks before failing ones") {
    std::array<bg::ColourPool, 2> pools;
    pools[0].weight_bp = 10000;
    pools[0].backends = {{0, "b", bg::Colour::blue, {}, bg::AdminState::ready, false}};
    pools[1].backends = {{1, "g", bg::Colour::green, {}, bg::AdminState::drain, true},
                         {2, "g2", bg::Colour::green, {}, bg::AdminState::ready, false}};
    bg::RoutingTable table(1, std::move(pools));
    CHECK(table.panic());
    CHECK(table.pool(bg::Colour::blue).eligible.empty());
    REQUIRE(table.pool(bg::Colour::green).eligible.size() == 1);
    CHECK(table.pool(bg::Colour::green).eligible[0] == 0);  // g: drained but healthy
    CHECK(table.effective_weight_bp(bg::Colour::green) == 10000);
}
