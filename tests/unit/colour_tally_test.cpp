#include <doctest/doctest.h>

#include "colour_tally.hpp"

namespace {

// Blue with the backends of `blue` ids, green with those of `green`.
bg::RoutingTable table_of(std::vector<std::uint32_t> blue, std::vector<std::uint32_t> green) {
    std::array<bg::ColourPool, 2> pools;
    pools[0].weight_bp = 5000;
    pools[1].weight_bp = 5000;
    for (std::uint32_t id : blue) {
        pools[0].backends.push_back({id, "b" + std::to_string(id), bg::Colour::blue, {}});
    }
    for (std::uint32_t id : green) {
        pools[1].backends.push_back({id, "g" + std::to_string(id), bg::Colour::green, {}});
    }
    for (auto& pool : pools) {
        for (auto& b : pool.backends) {
            b.failure_run = std::make_shared<bg::FailureRun>();
        }
    }
    return bg::RoutingTable(1, std::move(pools));
}

// Cumulative tries and 5xx failures by backend id.
bg::DataPlaneLoad load_of(std::vector<std::uint64_t> requests, std::vector<std::uint64_t> errors) {
    bg::DataPlaneLoad load;
    load.requests = std::move(requests);
    for (std::uint64_t e : errors) {
        load.failure_kinds.push_back({e, 0, 0, 0});
    }
    return load;
}

constexpr bg::FailureKinds all_kinds{true, true, true, true};

}  // namespace

TEST_CASE("a colour's figures grow by what its backends did since the sample before") {
    bg::ColourTally tally;
    const auto table = table_of({0}, {1});
    tally.figures(table, load_of({100, 100}, {0, 5}), all_kinds);
    const auto f = tally.figures(table, load_of({150, 130}, {0, 8}), all_kinds);
    CHECK(f[1].requests == 30);
    CHECK(f[1].errors == 3);
    CHECK(f[0].requests == 50);
}

TEST_CASE("a backend a reload adds to a colour brings none of its past") {
    bg::ColourTally tally;
    // Green's backend 2 failed 295 times before, then left the pool (its counters stay).
    tally.figures(table_of({0}, {1}), load_of({100, 100, 300}, {0, 0, 295}), all_kinds);
    const auto back = table_of({0}, {1, 2});
    auto f = tally.figures(back, load_of({110, 110, 300}, {0, 0, 295}), all_kinds);
    const std::uint64_t requests = f[1].requests;
    const std::uint64_t errors = f[1].errors;
    f = tally.figures(back, load_of({120, 120, 310}, {0, 0, 295}), all_kinds);
    CHECK(f[1].requests - requests == 20);  // 10 each: backend 2's past is not among them
    CHECK(f[1].errors - errors == 0);
    CHECK(f[1].errors == 0);
}

TEST_CASE("a backend moved to the other colour counts there from the move") {
    bg::ColourTally tally;
    tally.figures(table_of({0, 2}, {1}), load_of({100, 100, 500}, {0, 0, 50}), all_kinds);
    const auto moved = table_of({0}, {1, 2});
    const auto f = tally.figures(moved, load_of({100, 100, 500}, {0, 0, 50}), all_kinds);
    CHECK(f[1].requests == 0);
    CHECK(f[1].errors == 0);
    const auto g = tally.figures(moved, load_of({100, 100, 510}, {0, 0, 51}), all_kinds);
    CHECK(g[1].requests == 10);
    CHECK(g[1].errors == 1);
}

TEST_CASE("only the failure kinds [canary] errors names count") {
    bg::ColourTally tally;
    const auto table = table_of({0}, {1});
    bg::DataPlaneLoad before = load_of({0, 0}, {0, 0});
    tally.figures(table, before, {true, false, false, false});
    bg::DataPlaneLoad after;
    after.requests = {0, 10};
    after.failure_kinds = {{0, 0, 0, 0}, {2, 3, 0, 0}};
    const auto f = tally.figures(table, after, {true, false, false, false});
    CHECK(f[1].errors == 2);
}

TEST_CASE("a backend that leaves its colour takes back nothing it added: the figures only grow") {
    bg::ColourTally tally;
    tally.figures(table_of({0}, {1, 2}), load_of({0, 0, 0}, {0, 0, 0}), all_kinds);
    auto f = tally.figures(table_of({0}, {1, 2}), load_of({0, 10, 10}, {0, 1, 1}), all_kinds);
    CHECK(f[1].requests == 20);
    CHECK(f[1].errors == 2);
    // A reload removes backend 2 (a review: its whole count dropped out, and the analysis's
    // windows clamped the shrinking figures to nothing for as long as the window).
    f = tally.figures(table_of({0}, {1}), load_of({0, 20, 10}, {0, 1, 1}), all_kinds);
    CHECK(f[1].requests == 30);
    CHECK(f[1].errors == 2);
}
