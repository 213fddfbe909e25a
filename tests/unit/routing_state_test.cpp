#include <doctest/doctest.h>

#include <boost/json.hpp>
#include <functional>
#include <string>

#include "routing_state.hpp"

namespace {

namespace json = boost::json;

bg::RoutingState full_state() {
    bg::RoutingState state;
    state.version = 7;
    state.revision = 42;
    state.weight_bp = {9000, 1000};
    state.stable = bg::Colour::blue;
    state.failed[1] = true;
    state.withdrawn[0] = true;
    state.admin["green-1"] = bg::AdminState::drain;
    state.ramp = bg::RampState{};
    state.ramp->step_bp = 500;
    state.failover =
        bg::FailoverState{.weight_bp = {2000, 8000}, .at = "2026-12-03T00:00:00Z", .stalled = true};
    state.failover->ramp = bg::RampState{};
    state.failover->ramp->to_bp = 3000;
    state.changed_at = "2026-12-03T00:00:01Z";
    state.changed_by = "ops";
    state.command = "set green=10";
    return state;
}

// The error a state file edited by `edit` is refused with ("" when it is taken).
std::string refusal(const std::function<void(json::object&)>& edit) {
    json::object doc = bg::to_json(full_state());
    edit(doc);
    std::string error;
    const auto state = bg::routing_state_from_json(doc, error);
    CHECK(state.has_value() == error.empty());
    return error;
}

}  // namespace

TEST_CASE("a routing state survives its JSON form whole") {
    std::string error;
    const auto back = bg::routing_state_from_json(bg::to_json(full_state()), error);
    REQUIRE(back.has_value());
    CHECK(json::value(bg::to_json(*back)) == json::value(bg::to_json(full_state())));
    CHECK(back->ramp->step_bp == 500);
    CHECK(back->failover->weight_bp[1] == 8000);
    CHECK(back->failover->stalled);
    CHECK(back->failover->ramp->to_bp == 3000);
    CHECK(back->admin.at("green-1") == bg::AdminState::drain);
    CHECK(back->withdrawn == std::array<bool, 2>{true, false});
    // A state file from before withdrawn marks reads as none.
    json::object old = bg::to_json(full_state());
    old.erase("withdrawn");
    const auto before = bg::routing_state_from_json(old, error);
    REQUIRE(before.has_value());
    CHECK(before->withdrawn == std::array<bool, 2>{false, false});
}

TEST_CASE("a routing state with a wrong value is refused, saying which") {
    CHECK(refusal([](json::object&) {}).empty());
    CHECK(refusal([](json::object& d) { d["format"] = 2; }) == "unknown state format");
    CHECK(refusal([](json::object& d) { d["weights"].as_object()["green"] = 2000; }) ==
          "weights do not sum to 10000 basis points");
    CHECK(refusal([](json::object& d) {  // a sum that wraps around 2^32 to 10000
              d["weights"].as_object()["blue"] = 4294967295u;
              d["weights"].as_object()["green"] = 10001;
          }) == "weights do not sum to 10000 basis points");
    CHECK(refusal([](json::object& d) { d["stable"] = "red"; }) == "stable is not blue or green");
    CHECK(refusal([](json::object& d) { d["failed"] = json::array{"red"}; }) ==
          "failed names an unknown colour");
    CHECK(refusal([](json::object& d) { d["admin"].as_object()["b"] = "gone"; }) ==
          "unknown admin state for b");
    CHECK(refusal([](json::object& d) { d["ramp"].as_object()["colour"] = "red"; }) ==
          "ramp names an unknown colour");
    CHECK(refusal([](json::object& d) { d["ramp"].as_object()["step"] = 0; }) ==
          "ramp values out of range");
    CHECK(refusal([](json::object& d) {
              d["failover"].as_object()["weights"].as_object()["blue"] = 0;
          }) == "failover weights do not sum to 10000 basis points");
    CHECK(refusal([](json::object& d) {
              d.erase("changed_by");
          }).starts_with("missing or mistyped field"));
}
