#include <doctest/doctest.h>

#include "balancer.hpp"
#include "routing_table.hpp"

namespace {

bg::RoutingTablePtr table_with(std::uint32_t blue_bp, std::size_t blue_n = 2,
                               std::size_t green_n = 2) {
    std::array<bg::ColourPool, 2> pools;
    std::uint32_t id = 0;
    pools[0].weight_bp = blue_bp;
    pools[1].weight_bp = 10000 - blue_bp;
    for (std::size_t i = 0; i < blue_n; ++i) {
        pools[0].backends.push_back({id++, "blue-" + std::to_string(i), bg::Colour::blue, {}});
    }
    for (std::size_t i = 0; i < green_n; ++i) {
        pools[1].backends.push_back({id++, "green-" + std::to_string(i), bg::Colour::green, {}});
    }
    return std::make_shared<const bg::RoutingTable>(1, std::move(pools));
}

int green_picks(const bg::RoutingTable& table, int n) {
    bg::Balancer balancer(bg::BalancePolicy::round_robin, 42);
    int green = 0;
    for (int i = 0; i < n; ++i) {
        green += balancer.pick_colour(table) == bg::Colour::green ? 1 : 0;
    }
    return green;
}

}  // namespace

TEST_CASE("a 90/10 split over 100,000 picks lands within 0.5 points") {
    auto table = table_with(9000);
    int green = green_picks(*table, 100000);
    CHECK(green / 1000.0 == doctest::Approx(10.0).epsilon(0.05));  // 10% +- 0.5 points
    CHECK(green >= 9500);
    CHECK(green <= 10500);
}

TEST_CASE("weights 0 and 10000 are exact") {
    CHECK(green_picks(*table_with(10000), 100000) == 0);
    CHECK(green_picks(*table_with(0), 100000) == 100000);
}

TEST_CASE("one basis point is honoured, not rounded away") {
    int green = green_picks(*table_with(9999), 1000000);
    CHECK(green > 50);
    CHECK(green < 200);
}

TEST_CASE("a colour with no backend taking requests gets no share") {
    auto table = table_with(5000, 2, 0);
    CHECK(table->effective_weight_bp(bg::Colour::blue) == 10000);
    CHECK(green_picks(*table, 1000) == 0);
}

TEST_CASE("round robin visits every eligible backend in turn and skips drained ones") {
    std::array<bg::ColourPool, 2> pools;
    pools[0].weight_bp = 10000;
    pools[0].backends = {{0, "b0", bg::Colour::blue, {}},
                         {1, "b1", bg::Colour::blue, {}, bg::AdminState::drain},
                         {2, "b2", bg::Colour::blue, {}},
                         {3, "b3", bg::Colour::blue, {}, bg::AdminState::ready, false}};
    pools[1].backends = {{4, "g0", bg::Colour::green, {}}};
    bg::RoutingTable table(1, std::move(pools));
    bg::Balancer balancer(bg::BalancePolicy::round_robin, 1);
    std::vector<std::uint32_t> seen;
    for (int i = 0; i < 4; ++i) {
        seen.push_back(balancer.pick_backend(table, bg::Colour::blue)->id);
    }
    CHECK(seen == std::vector<std::uint32_t>{0, 2, 0, 2});
    CHECK(balancer.pick_backend(table, bg::Colour::blue, {0})->id == 2);
    CHECK(balancer.pick_backend(table, bg::Colour::blue, {0, 2}) == nullptr);
    CHECK(table.backend_id_limit() == 5);
}

TEST_CASE("least request prefers the backend with fewer requests in flight") {
    auto table = table_with(10000, 2, 1);
    bg::Balancer balancer(bg::BalancePolicy::least_request, 7);
    for (int i = 0; i < 5; ++i) {
        balancer.on_request_start(0);
    }
    int to_idle = 0;
    for (int i = 0; i < 1000; ++i) {
        to_idle += balancer.pick_backend(*table, bg::Colour::blue)->id == 1 ? 1 : 0;
    }
    // Two random choices: the busy one wins only when both draws land on it (about 1 in 4).
    CHECK(to_idle > 650);
}
