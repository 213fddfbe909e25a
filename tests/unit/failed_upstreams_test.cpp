#include <doctest/doctest.h>

#include "failed_upstreams.hpp"
#include "routing_table.hpp"
#include "session_handle.hpp"

namespace {

using Clock = bg::FailedUpstreams::Clock;
using std::chrono::seconds;

// Blue b1 (id 0), b2 (1); green g1 (2), g2 (3). `failed` ids are out; `colour_failed` marks
// green reverted.
bg::RoutingTable table(std::vector<std::uint32_t> failed = {}, bool green_failed = false,
                       bool green_withdrawn = false) {
    std::array<bg::ColourPool, 2> pools;
    const bool green_out = green_failed || green_withdrawn;
    pools[0].weight_bp = green_out ? 10000 : 5000;
    pools[1].weight_bp = green_out ? 0 : 5000;
    pools[1].failed = green_failed;
    pools[1].withdrawn = green_withdrawn;
    pools[0].backends = {{0, "b1", bg::Colour::blue, {}}, {1, "b2", bg::Colour::blue, {}}};
    pools[1].backends = {{2, "g1", bg::Colour::green, {}}, {3, "g2", bg::Colour::green, {}}};
    for (auto& pool : pools) {
        for (auto& backend : pool.backends) {
            backend.healthy = std::find(failed.begin(), failed.end(), backend.id) == failed.end();
        }
    }
    return bg::RoutingTable(1, std::move(pools));
}

struct Try {
    bg::Socket* socket = reinterpret_cast<bg::Socket*>(8);  // never dereferenced
    bg::SessionHandle handle;
    Try(std::uint32_t backend, Clock::time_point since, bool retryable = true) {
        handle.upstream = socket;
        handle.upstream_backend = backend;
        handle.awaiting_since = since;
        handle.awaiting_retryable = retryable;
    }
};

}  // namespace

TEST_CASE("a try caught on a backend taken out is cut once it has waited, not before") {
    bg::FailedUpstreams failed;
    const Clock::time_point t0 = Clock::now();
    failed.follow(table(), t0, true);
    CHECK_FALSE(failed.any());
    Try caught(3, t0 + seconds(1));
    Try other(2, t0 + seconds(1));
    Try post(3, t0 + seconds(1), false);
    failed.follow(table({3}), t0 + seconds(2), true);
    CHECK(failed.any());
    CHECK_FALSE(failed.colour_reverted_under(caught.handle));  // its backend only
    // Waited 0.5 s of the 1 s asked: not yet.
    CHECK_FALSE(failed.should_cut(caught.handle, t0 + std::chrono::milliseconds(1500), seconds(1)));
    CHECK(failed.should_cut(caught.handle, t0 + seconds(2), seconds(1)));
    CHECK_FALSE(failed.should_cut(other.handle, t0 + seconds(3), seconds(1)));
    // A request that may not go twice waits on: cutting it would be a certain error.
    CHECK_FALSE(failed.should_cut(post.handle, t0 + seconds(3), seconds(1)));
    // A later table that still holds it out keeps the time it went out.
    failed.follow(table({3}), t0 + seconds(5), true);
    CHECK(failed.should_cut(caught.handle, t0 + seconds(5), seconds(1)));
    // Back in the routing: nothing to cut.
    failed.follow(table(), t0 + seconds(6), true);
    CHECK_FALSE(failed.should_cut(caught.handle, t0 + seconds(6), seconds(1)));
}

TEST_CASE("a try sent after its backend went out was sent there on purpose and waits on") {
    bg::FailedUpstreams failed;
    const Clock::time_point t0 = Clock::now();
    failed.follow(table({3}), t0, true);
    Try later(3, t0 + seconds(1));
    CHECK_FALSE(failed.should_cut(later.handle, t0 + seconds(5), seconds(1)));
    Try earlier(3, t0 - seconds(1));
    CHECK(failed.should_cut(earlier.handle, t0 + seconds(1), seconds(1)));
}

TEST_CASE("a reverted colour's waiting tries are cut, and none in panic routing") {
    bg::FailedUpstreams failed;
    const Clock::time_point t0 = Clock::now();
    failed.follow(table(), t0, true);
    Try green(2, t0);
    Try blue(0, t0);
    failed.follow(table({}, true), t0 + seconds(1), true);
    CHECK(failed.should_cut(green.handle, t0 + seconds(2), seconds(1)));
    CHECK(failed.colour_reverted_under(green.handle));
    CHECK_FALSE(failed.should_cut(blue.handle, t0 + seconds(2), seconds(1)));
    CHECK_FALSE(failed.colour_reverted_under(blue.handle));
    // Nothing left that can serve: requests go to every backend, and a retry could only land
    // on another failed one.
    failed.follow(table({0, 1, 2, 3}, true), t0 + seconds(2), true);
    CHECK_FALSE(failed.any());
    CHECK_FALSE(failed.should_cut(green.handle, t0 + seconds(3), seconds(1)));
}

TEST_CASE("a colour an operator rolled back is cut as a reverted one; one ramped down is not") {
    bg::FailedUpstreams failed;
    const Clock::time_point t0 = Clock::now();
    failed.follow(table(), t0, true);
    Try green(2, t0);
    failed.follow(table({}, false, true), t0 + seconds(1), true);
    CHECK(failed.should_cut(green.handle, t0 + seconds(2), seconds(1)));
    CHECK(failed.colour_reverted_under(green.handle));
    // Its weight taken away by a set (planned): its requests finish where they are.
    bg::FailedUpstreams planned;
    planned.follow(table(), t0, true);
    auto ramped_down = table();
    std::array<bg::ColourPool, 2> pools = {ramped_down.pool(bg::Colour::blue),
                                           ramped_down.pool(bg::Colour::green)};
    pools[0].weight_bp = 10000;
    pools[1].weight_bp = 0;
    planned.follow(bg::RoutingTable(2, std::move(pools)), t0 + seconds(1), true);
    CHECK_FALSE(planned.should_cut(green.handle, t0 + seconds(2), seconds(1)));
}

TEST_CASE("nothing is cut where its retry would have nowhere to go") {
    bg::FailedUpstreams failed;
    const Clock::time_point t0 = Clock::now();
    failed.follow(table(), t0, false);
    Try green(2, t0);
    // Both green backends out, and retries may not cross to blue: a cut would be a 502.
    failed.follow(table({2, 3}), t0 + seconds(1), false);
    CHECK_FALSE(failed.should_cut(green.handle, t0 + seconds(2), seconds(1)));
    // They may cross: blue takes the retry.
    failed.follow(table({2, 3}), t0 + seconds(2), true);
    CHECK(failed.should_cut(green.handle, t0 + seconds(3), seconds(1)));
    // Green reverted while blue has nothing healthy: green still carries the traffic.
    bg::FailedUpstreams carried;
    carried.follow(table(), t0, true);
    carried.follow(table({0, 1}, true), t0 + seconds(1), true);
    CHECK_FALSE(carried.should_cut(green.handle, t0 + seconds(3), seconds(1)));
}

TEST_CASE("a backend's colour is out while it is reverted, not while the backend alone is") {
    bg::FailedUpstreams failed;
    const Clock::time_point t0 = Clock::now();
    failed.follow(table(), t0, true);
    CHECK_FALSE(failed.colour_out(0));
    CHECK_FALSE(failed.colour_out(3));
    failed.follow(table({3}), t0, true);  // ejected alone: perhaps overloaded, as its peers
    CHECK_FALSE(failed.colour_out(3));
    failed.follow(table({}, true), t0, true);  // green reverted: both its backends
    CHECK(failed.colour_out(2));
    CHECK(failed.colour_out(3));
    CHECK_FALSE(failed.colour_out(0));
    CHECK_FALSE(failed.colour_out(99));  // no such backend
    failed.follow(table(), t0, true);
    CHECK_FALSE(failed.colour_out(3));
}
