#include <doctest/doctest.h>

#include "outlier_detector.hpp"

namespace {

using Clock = bg::OutlierDetector::Clock;

bg::RoutingTable two_by_two() {
    std::array<bg::ColourPool, 2> pools;
    pools[0].weight_bp = 5000;
    pools[1].weight_bp = 5000;
    pools[0].backends = {{0, "b1", bg::Colour::blue, {}}, {1, "b2", bg::Colour::blue, {}}};
    pools[1].backends = {{2, "g1", bg::Colour::green, {}}, {3, "g2", bg::Colour::green, {}}};
    for (auto& pool : pools) {
        for (auto& b : pool.backends) {
            b.failure_run = std::make_shared<bg::FailureRun>();
        }
    }
    return bg::RoutingTable(1, std::move(pools));
}

bg::DataPlaneLoad counts(std::vector<std::uint64_t> requests, std::vector<std::uint64_t> failures) {
    bg::DataPlaneLoad load;
    load.requests = std::move(requests);
    load.failures = std::move(failures);
    return load;
}

const bg::Backend& backend_named(const bg::RoutingTable& table, const std::string& name) {
    for (bg::Colour colour : bg::all_colours) {
        for (const auto& b : table.pool(colour).backends) {
            if (b.name == name) {
                return b;
            }
        }
    }
    FAIL("no backend " << name);
    throw;
}

// What the workers do on a try's outcome ([outlier] consecutive_failures 5).
void fail(const bg::RoutingTable& table, const std::string& name, int times) {
    for (int i = 0; i < times; ++i) {
        backend_named(table, name).failure_run->fail(5);
    }
}
void succeed(const bg::RoutingTable& table, const std::string& name) {
    backend_named(table, name).failure_run->succeed();
}
std::uint32_t run_of(const bg::RoutingTable& table, const std::string& name) {
    return backend_named(table, name).failure_run->length();
}

}  // namespace

TEST_CASE(
    "a backend over the error rate is ejected, for a growing time, and returns when checks pass") {
    bg::OutlierConfig config;
    config.error_rate = 0.5;
    config.min_requests = 10;
    config.base_ejection = std::chrono::seconds(10);
    bg::OutlierDetector detector(config);
    auto table = two_by_two();
    auto t0 = Clock::now();
    CHECK(
        detector.observe(table, counts({0, 0, 0, 0}, {0, 0, 0, 0}), t0, std::nullopt, {}).empty());
    auto v = detector.observe(table, counts({20, 20, 0, 0}, {12, 1, 0, 0}),
                              t0 + std::chrono::seconds(1), std::nullopt, {});
    CHECK(v.ejected == std::vector<std::string>{"b1"});
    CHECK(detector.ejected("b1"));
    // The pool (2 backends, panic threshold 0.5) may lose only one.
    v = detector.observe(table, counts({40, 40, 0, 0}, {30, 30, 0, 0}),
                         t0 + std::chrono::seconds(2), std::nullopt, {});
    CHECK(v.ejected.empty());
    // Ejection over but the checks fail: it stays out.
    v = detector.observe(table, counts({40, 40, 0, 0}, {30, 30, 0, 0}),
                         t0 + std::chrono::seconds(12), std::nullopt, {{"b1", false}});
    CHECK(v.returned.empty());
    v = detector.observe(table, counts({40, 40, 0, 0}, {30, 30, 0, 0}),
                         t0 + std::chrono::seconds(13), std::nullopt, {{"b1", true}});
    CHECK(v.returned == std::vector<std::string>{"b1"});
}

TEST_CASE("the watched colour fails on its error rate once the minimum count is reached") {
    bg::OutlierConfig config;
    config.error_rate = 0.1;
    config.min_requests = 100;
    bg::OutlierDetector detector(config);
    auto table = two_by_two();
    auto t0 = Clock::now();
    detector.observe(table, counts({0, 0, 0, 0}, {0, 0, 0, 0}), t0, bg::Colour::green, {});
    // 20% errors but only 50 requests: not yet.
    auto v = detector.observe(table, counts({0, 0, 25, 25}, {0, 0, 5, 5}),
                              t0 + std::chrono::seconds(1), bg::Colour::green, {});
    CHECK_FALSE(v.failed_colour.has_value());
    v = detector.observe(table, counts({0, 0, 60, 60}, {0, 0, 12, 12}),
                         t0 + std::chrono::seconds(2), bg::Colour::green, {});
    REQUIRE(v.failed_colour.has_value());
    CHECK(*v.failed_colour == bg::Colour::green);
    CHECK(v.colour_reason.find("green error rate 20%") != std::string::npos);
    // Blue at the same rate is not watched.
    bg::OutlierDetector other(config);
    other.observe(table, counts({0, 0, 0, 0}, {0, 0, 0, 0}), t0, bg::Colour::green, {});
    CHECK_FALSE(other
                    .observe(table, counts({60, 60, 0, 0}, {12, 12, 0, 0}),
                             t0 + std::chrono::seconds(1), bg::Colour::green, {})
                    .failed_colour);
}

// consecutive_failures 5, base_ejection 10 s, over two_by_two(): a first sample at t0 (the
// active checks as `health` say).
struct RunCase {
    explicit RunCase(const std::map<std::string, bool>& health = {})
        : detector(config()), table(two_by_two()), t0(Clock::now()) {
        detector.observe(table, counts({0, 0, 0, 0}, {0, 0, 0, 0}), t0, std::nullopt, health);
    }
    static bg::OutlierConfig config() {
        bg::OutlierConfig c;
        c.consecutive_failures = 5;
        c.base_ejection = std::chrono::seconds(10);
        return c;
    }
    bg::OutlierDetector detector;
    bg::RoutingTable table;
    Clock::time_point t0;
};

TEST_CASE("a success on any worker ends the run: the run is the backend's, not a worker's") {
    // Found by an outside probe: with two workers, one served the backend's successes while the
    // other's old run of 79 (max over workers) stood, and a healthy backend was ejected.
    RunCase c;
    auto& [detector, table, t0] = c;
    fail(table, "b1", 4);  // one worker
    succeed(table, "b1");  // another
    fail(table, "b1", 4);  // the first again
    auto v = detector.observe(table, counts({9, 0, 0, 0}, {8, 0, 0, 0}),
                              t0 + std::chrono::milliseconds(250), std::nullopt, {});
    CHECK(v.ejected.empty());
    CHECK(run_of(table, "b1") == 4);
}

TEST_CASE("consecutive failures eject at once; a returned backend is judged on what comes after") {
    // Found by bench/soak.sh: a backend killed and restarted was ejected again the moment its
    // ejection ended, on the same stale count of consecutive failures, for ever longer. And by
    // an outside probe: a backend failing every request, back from its ejection, served 250 ms
    // (678 failed requests) before the next periodic look ejected it again, as the workers'
    // runs were past the threshold and never reached it again to raise the alarm.
    RunCase c;
    auto& [detector, table, t0] = c;
    fail(table, "b1", 5);
    auto v = detector.observe(table, counts({5, 10, 0, 0}, {5, 0, 0, 0}),
                              t0 + std::chrono::seconds(1), std::nullopt, {});
    // Without waiting for min_requests.
    CHECK(v.ejected == std::vector<std::string>{"b1"});
    CHECK(v.reasons["b1"].find("5 failures in a row") != std::string::npos);
    fail(table, "b1", 2);  // requests in flight when it was ejected
    // Over, checks pass: it returns, its run restarted.
    v = detector.observe(table, counts({7, 30, 0, 0}, {7, 0, 0, 0}), t0 + std::chrono::seconds(12),
                         std::nullopt, {{"b1", true}});
    CHECK(v.returned == std::vector<std::string>{"b1"});
    CHECK(run_of(table, "b1") == 0);
    v = detector.observe(table, counts({7, 40, 0, 0}, {7, 0, 0, 0}), t0 + std::chrono::seconds(13),
                         std::nullopt, {{"b1", true}});
    CHECK(v.ejected.empty());
    CHECK_FALSE(detector.ejected("b1"));
    fail(table, "b1", 4);
    v = detector.observe(table, counts({11, 50, 0, 0}, {11, 0, 0, 0}),
                         t0 + std::chrono::seconds(14), std::nullopt, {{"b1", true}});
    CHECK(v.ejected.empty());
    // The fifth new failure reaches the threshold (where a worker raises the alarm): out
    // again, for longer.
    CHECK(table.pool(bg::Colour::blue).backends[0].failure_run->fail(5));
    v = detector.observe(table, counts({12, 60, 0, 0}, {12, 0, 0, 0}),
                         t0 + std::chrono::seconds(15), std::nullopt, {{"b1", true}});
    CHECK(v.ejected == std::vector<std::string>{"b1"});
    CHECK(v.reasons["b1"].find("ejected for 20000ms") != std::string::npos);
    // Back in for 25 s after this one: both ejections are forgiven, one per base_ejection, and
    // the next is as the first (an outside probe: a fifth ejection lasted 50 s, however long
    // the backend had served well between).
    v = detector.observe(table, counts({12, 70, 0, 0}, {12, 0, 0, 0}),
                         t0 + std::chrono::seconds(36), std::nullopt, {{"b1", true}});
    CHECK(v.returned == std::vector<std::string>{"b1"});
    fail(table, "b1", 5);
    v = detector.observe(table, counts({17, 80, 0, 0}, {17, 0, 0, 0}),
                         t0 + std::chrono::seconds(61), std::nullopt, {{"b1", true}});
    CHECK(v.reasons["b1"].find("ejected for 10000ms") != std::string::npos);
}

// `table` with green's share set to `green_bp`, the same backends (and runs).
bg::RoutingTable with_green(const bg::RoutingTable& table, std::uint32_t green_bp) {
    std::array<bg::ColourPool, 2> pools{table.pool(bg::Colour::blue),
                                        table.pool(bg::Colour::green)};
    pools[1].weight_bp = green_bp;
    pools[0].weight_bp = 10000 - green_bp;
    return bg::RoutingTable(table.version() + 1, std::move(pools));
}

// Error rate 50% over at least 10 requests, in a 10 s window.
bg::OutlierConfig half_failing_fails() {
    bg::OutlierConfig config;
    config.error_rate = 0.5;
    config.min_requests = 10;
    config.window = std::chrono::seconds(10);
    return config;
}

TEST_CASE(
    "a colour that gains a share is judged on what comes after: previews and a reverted "
    "share's errors are not its next canary's") {
    // Found by an outside probe: green failed 30 previews, was mended (5 previews answered), and
    // was flipped to; the guard reverted it 0.25 s later for "green error rate 86% over 35
    // requests", none of them after the flip.
    const bg::OutlierConfig config = half_failing_fails();
    bg::OutlierDetector detector(config);
    auto table = two_by_two();
    const auto idle_green = with_green(table, 0);
    auto t0 = Clock::now();
    const auto at = [&](int ms) { return t0 + std::chrono::milliseconds(ms); };
    detector.observe(idle_green, counts({0, 0, 0, 0}, {0, 0, 0, 0}), at(0), std::nullopt, {});
    detector.observe(idle_green, counts({0, 0, 15, 20}, {0, 0, 15, 15}), at(1000), std::nullopt,
                     {});
    // Flipped: green's share, its next 12 requests answered but one.
    auto v = detector.observe(table, counts({0, 0, 21, 26}, {0, 0, 16, 15}), at(2000),
                              bg::Colour::green, {});
    CHECK_FALSE(v.failed_colour.has_value());
    CHECK(v.ejected.empty());
    // Failing after the flip is judged as ever.
    v = detector.observe(table, counts({0, 0, 31, 36}, {0, 0, 26, 25}), at(3000), bg::Colour::green,
                         {});
    REQUIRE(v.failed_colour.has_value());
    CHECK(v.colour_reason.find("over 32 requests") != std::string::npos);
}

TEST_CASE("a share lost and given again between two looks is judged on what comes after") {
    // From a review: the looks saw green's share at both, so its reverted share's errors
    // counted against the next one (a probe sent `rollback; set` 9 ms apart). The switchboard
    // tells the detector of the gain as it applies the change.
    const bg::OutlierConfig config = half_failing_fails();
    bg::OutlierDetector detector(config);
    auto table = two_by_two();
    auto t0 = Clock::now();
    const auto at = [&](int ms) { return t0 + std::chrono::milliseconds(ms); };
    detector.observe(table, counts({0, 0, 0, 0}, {0, 0, 0, 0}), at(0), bg::Colour::green, {});
    auto v = detector.observe(table, counts({0, 0, 20, 20}, {0, 0, 20, 20}), at(250),
                              bg::Colour::green, {});
    REQUIRE(v.failed_colour.has_value());
    detector.reset_window();                         // the revert (switchboard::handle_outlier)
    detector.colour_gains_share(bg::Colour::green);  // `set green=50`, before the next look
    v = detector.observe(table, counts({0, 0, 26, 26}, {0, 0, 20, 20}), at(500), bg::Colour::green,
                         {});
    CHECK_FALSE(v.failed_colour.has_value());
    // Without the reset (a canary revert does none): the same.
    bg::OutlierDetector other(config);
    other.observe(table, counts({0, 0, 0, 0}, {0, 0, 0, 0}), at(0), bg::Colour::green, {});
    other.observe(table, counts({0, 0, 20, 20}, {0, 0, 20, 20}), at(250), std::nullopt, {});
    other.colour_gains_share(bg::Colour::green);
    v = other.observe(table, counts({0, 0, 26, 26}, {0, 0, 20, 20}), at(500), bg::Colour::green,
                      {});
    CHECK_FALSE(v.failed_colour.has_value());
}

TEST_CASE("failures in a row count however far apart they come") {
    // From a review: a run forgotten after standing still a window (10 s) never reached 5 on a
    // canary getting a try every 15 s; no other passive rule sees so few requests.
    RunCase c;
    auto& [detector, table, t0] = c;
    for (std::uint64_t i = 1; i <= 5; ++i) {
        fail(table, "g1", 1);
        auto v = detector.observe(table, counts({0, 0, i, 0}, {0, 0, i, 0}),
                                  t0 + std::chrono::seconds(15 * i), std::nullopt, {});
        CHECK(v.ejected == (i < 5 ? std::vector<std::string>{} : std::vector<std::string>{"g1"}));
    }
}

TEST_CASE("a reload that lowers consecutive_failures judges runs from then on") {
    // From a review: a run of 7 under a threshold of 10, then a reload to 3. The workers count
    // a crossing when a run reaches the threshold, which this run had passed: it never crossed.
    bg::OutlierConfig ten = RunCase::config();
    ten.consecutive_failures = 10;
    bg::OutlierDetector detector(ten);
    const bg::RoutingTable table = two_by_two();
    const auto t0 = Clock::now();
    detector.observe(table, counts({0, 0, 0, 0}, {0, 0, 0, 0}), t0, std::nullopt, {});
    auto& run = *backend_named(table, "b1").failure_run;
    for (int i = 0; i < 7; ++i) {
        run.fail(10);
    }
    bg::OutlierConfig three = ten;
    three.consecutive_failures = 3;
    detector.reconfigure(three, table);
    CHECK(run.length() == 0);
    for (int i = 0; i < 3; ++i) {
        run.fail(3);
    }
    auto v = detector.observe(table, counts({10, 0, 0, 0}, {10, 0, 0, 0}),
                              t0 + std::chrono::milliseconds(250), std::nullopt, {});
    CHECK(v.ejected == std::vector<std::string>{"b1"});
    // A crossing counted under the old threshold that no look has judged yet is judged: the
    // reload reached the control plane only after the workers' switch (a review).
    fail(table, "g1", 5);
    bg::OutlierConfig four = three;
    four.consecutive_failures = 4;
    detector.reconfigure(four, table);
    v = detector.observe(table, counts({10, 0, 5, 0}, {10, 0, 5, 0}),
                         t0 + std::chrono::milliseconds(500), std::nullopt, {});
    CHECK(v.ejected == std::vector<std::string>{"g1"});
    detector.reconfigure(three, table);
    // The same threshold again (a reload of something else) leaves the runs as they are.
    fail(table, "b2", 2);
    detector.reconfigure(three, table);
    CHECK(run_of(table, "b2") == 2);
}

TEST_CASE("a run that reached the threshold is judged though a success ended it before the look") {
    // From a review: the alarm's look comes a gather later; a success on another worker in
    // between left nothing to see, and the run went unjudged.
    RunCase c;
    auto& [detector, table, t0] = c;
    fail(table, "b1", 5);
    succeed(table, "b1");
    auto v = detector.observe(table, counts({6, 0, 0, 0}, {5, 0, 0, 0}),
                              t0 + std::chrono::milliseconds(250), std::nullopt, {});
    CHECK(v.ejected == std::vector<std::string>{"b1"});
    CHECK(v.reasons["b1"].find("5 failures in a row") != std::string::npos);
}

TEST_CASE(
    "an old run ejects no one: a crossing held by the panic threshold waits while the run "
    "goes on, and a colour that lost its share starts afresh") {
    // Found by an outside probe: green's backends killed at 30% (reverted), restarted and
    // passing their checks; the first requests to green 40 s later, answered, were followed by
    // green-2's ejection for "79 failures in a row", and a failover onto green halved it at once
    // ("177 in a row"): both runs were from the outage.
    RunCase c;
    auto& [detector, table, t0] = c;
    const auto at = [&](int s) { return t0 + std::chrono::seconds(s); };
    // Both green backends fail 6 in a row: one is ejected, the panic threshold holds the other.
    fail(table, "g1", 6);
    fail(table, "g2", 6);
    auto v = detector.observe(table, counts({0, 0, 6, 6}, {0, 0, 6, 6}), at(1), std::nullopt, {});
    REQUIRE(v.ejected.size() == 1);
    const std::string held = v.ejected.front() == "g1" ? "g2" : "g1";
    // Green is reverted: its share gone, the held run restarts.
    const auto reverted = with_green(table, 0);
    v = detector.observe(reverted, counts({0, 0, 6, 6}, {0, 0, 6, 6}), at(2), std::nullopt, {});
    CHECK(v.ejected.empty());
    CHECK(run_of(table, held) == 0);
    // The other's ejection over, green gets a share again: one failure is one in a row.
    v = detector.observe(table, counts({0, 0, 6, 6}, {0, 0, 6, 6}), at(12), std::nullopt, {});
    CHECK(v.returned.size() == 1);
    fail(table, held, 1);
    v = detector.observe(table, counts({0, 0, 7, 7}, {0, 0, 7, 7}), at(13), std::nullopt, {});
    CHECK(v.ejected.empty());
    // Held while its run goes on: both fail again; one goes, and the other once the first is
    // back, its run still unbroken.
    fail(table, "g1", 5);
    fail(table, "g2", 5);
    v = detector.observe(table, counts({0, 0, 12, 12}, {0, 0, 12, 12}), at(14), std::nullopt, {});
    REQUIRE(v.ejected.size() == 1);
    const std::string second = v.ejected.front() == "g1" ? "g2" : "g1";
    fail(table, second, 3);
    v = detector.observe(table, counts({0, 0, 15, 15}, {0, 0, 15, 15}), at(15), std::nullopt, {});
    CHECK(v.ejected.empty());
    v = detector.observe(table, counts({0, 0, 15, 15}, {0, 0, 15, 15}), at(40), std::nullopt, {});
    CHECK(v.ejected == std::vector<std::string>{second});
}

TEST_CASE("a backend the active checks bring back is judged on what comes after") {
    // Found by an outside probe: both blue backends dead, one ejected, the panic threshold kept
    // the other in the pool; back up, it was ejected for "3261 failures in a row", all from
    // while it was down, once the first returned.
    const std::map<std::string, bool> down{{"b1", false}, {"b2", false}};
    RunCase c(down);
    auto& [detector, table, t0] = c;
    fail(table, "b1", 100);
    fail(table, "b2", 100);
    auto v = detector.observe(table, counts({100, 100, 0, 0}, {100, 100, 0, 0}),
                              t0 + std::chrono::seconds(1), std::nullopt, down);
    CHECK(v.ejected == std::vector<std::string>{"b1"});  // one of two: the panic threshold
    const std::map<std::string, bool> up{{"b1", true}, {"b2", true}};
    v = detector.observe(table, counts({100, 100, 0, 0}, {100, 100, 0, 0}),
                         t0 + std::chrono::seconds(2), std::nullopt, up);
    CHECK(v.ejected.empty());
    CHECK(run_of(table, "b2") == 0);  // back from its checks: restarted
    // b1's ejection is over: the panic threshold no longer holds b2.
    fail(table, "b2", 4);
    v = detector.observe(table, counts({100, 104, 0, 0}, {100, 104, 0, 0}),
                         t0 + std::chrono::seconds(12), std::nullopt, up);
    CHECK(v.returned == std::vector<std::string>{"b1"});
    CHECK(v.ejected.empty());  // 4 new failures
    fail(table, "b2", 1);
    v = detector.observe(table, counts({100, 105, 0, 0}, {100, 105, 0, 0}),
                         t0 + std::chrono::seconds(13), std::nullopt, up);
    CHECK(v.ejected == std::vector<std::string>{"b2"});  // the fifth
}

TEST_CASE("back from its checks failing, a backend's failures while down stay out of its rate") {
    // Found by an outside probe: every backend down, then back; panic mode had sent them
    // requests, all failed; 0.8 s after its return blue-2 was ejected for "error rate 83% of
    // 3572 requests": its first success had put the window's rate, outage and all, back.
    const std::map<std::string, bool> down{{"b1", false}, {"b2", false}};
    const std::map<std::string, bool> up{{"b1", true}, {"b2", true}};
    RunCase c(down);
    auto& [detector, table, t0] = c;
    const auto at = [t0 = t0](int seconds) { return t0 + std::chrono::seconds(seconds); };
    fail(table, "b1", 100);
    fail(table, "b2", 100);
    auto v = detector.observe(table, counts({100, 100, 0, 0}, {100, 100, 0, 0}), at(1),
                              std::nullopt, down);
    CHECK(v.ejected == std::vector<std::string>{"b1"});  // one of two: the panic threshold
    // Down still, b2 takes a thousand more requests in panic mode, all failing.
    detector.observe(table, counts({100, 1100, 0, 0}, {100, 1100, 0, 0}), at(5), std::nullopt,
                     down);
    // Back at 6 s; it answers 200 of 210 by 8 s.
    detector.observe(table, counts({100, 1100, 0, 0}, {100, 1100, 0, 0}), at(6), std::nullopt, up);
    v = detector.observe(table, counts({100, 1310, 0, 0}, {100, 1110, 0, 0}), at(8), std::nullopt,
                         up);
    CHECK(v.ejected.empty());
    // b1's ejection ends: b2 could be ejected now, and its window still holds the outage.
    v = detector.observe(table, counts({100, 1320, 0, 0}, {100, 1110, 0, 0}), at(12), std::nullopt,
                         up);
    CHECK(v.returned == std::vector<std::string>{"b1"});
    CHECK(v.ejected.empty());
    // Failing again after its return, it is judged on that.
    v = detector.observe(table, counts({100, 1400, 0, 0}, {100, 1260, 0, 0}), at(13), std::nullopt,
                         up);
    CHECK(v.ejected == std::vector<std::string>{"b2"});
}

namespace {

constexpr auto never = bg::DataPlaneLoad::never_answered;
using Names = std::vector<std::string>;

// A sample by backend (b1, b2, g1, g2): requests so far, each one's oldest wait and its waits
// past stalled_after, how long ago its newest answered request began (ms), failures so far.
bg::DataPlaneLoad waiting(std::vector<std::uint64_t> requests, std::vector<std::uint64_t> oldest,
                          std::vector<std::uint32_t> stalled, std::vector<std::uint64_t> begun,
                          std::vector<std::uint64_t> failures = {0, 0, 0, 0}) {
    auto load = counts(std::move(requests), std::move(failures));
    load.oldest_wait_ms = std::move(oldest);
    load.stalled_waits = std::move(stalled);
    load.answer_begun_ms = std::move(begun);
    return load;
}

// `load` with `count` answers so far that waited under 64 ms, by every backend.
bg::DataPlaneLoad quick_answers(bg::DataPlaneLoad load, std::uint64_t count) {
    load.answer_waits.assign(4, bg::AnswerWaits{});
    for (auto& waits : load.answer_waits) {
        waits.counts[0] = count;
    }
    return load;
}

// The stall rule's defaults (stalled_after 1 s, stalled_alone_after 5 s) over `table`, both
// colours answering quickly for 10 s before t0, having seen `requests` at t0; then one sample a
// second.
struct StallCase {
    bg::OutlierDetector detector{bg::OutlierConfig{}};
    bg::RoutingTable table;
    Clock::time_point t0 = Clock::now();

    explicit StallCase(std::vector<std::uint64_t> requests, bg::RoutingTable t = two_by_two())
        : table(std::move(t)) {
        detector.observe(table, quick_answers(counts({0, 0, 0, 0}, {0, 0, 0, 0}), 1),
                         t0 - std::chrono::seconds(10), std::nullopt, {});
        detector.observe(table, quick_answers(counts(std::move(requests), {0, 0, 0, 0}), 2), t0,
                         std::nullopt, {});
    }
    bg::OutlierDetector::Verdicts at(int seconds, const bg::DataPlaneLoad& load) {
        return detector.observe(table, load, t0 + std::chrono::seconds(seconds), std::nullopt, {});
    }
};

}  // namespace

TEST_CASE("a backend that holds requests while its peers answer is ejected; a slow pool is not") {
    StallCase c({0, 0, 0, 10});
    // g1 answers (a request begun 5 ms ago; its oldest waits 20 ms); g2 holds two, the oldest
    // for 1.5 s, and answered only one begun 100 ms after it (read as it hung: no answer
    // since, as HungBackendTest saw under load).
    auto v =
        c.at(1, waiting({0, 0, 100, 10}, {0, 0, 20, 1500}, {0, 0, 0, 2}, {never, never, 5, 1400}));
    CHECK(v.ejected == Names{"g2"});
    CHECK(v.reasons["g2"].find("waiting 1500ms") != std::string::npos);
    // Blue is slow as a whole: both wait 2 s, answer nothing begun since; neither is ejected.
    v = c.at(
        2, waiting({50, 50, 100, 10}, {2000, 2100, 20, 1500}, {2, 2, 0, 2}, {3000, 3000, 5, 9000}));
    CHECK(v.ejected.empty());
}

TEST_CASE("one slow request alone is not a stall until stalled_alone_after") {
    // Found by an outside probe: a healthy backend serving a 3 s GET was ejected (least-request
    // sent every fast request to its peer, so it "answered nothing" while the peer did), and
    // the GET was cut and run a second time on the peer.
    StallCase c({0, 0, 0, 0});
    for (std::uint64_t second = 1; second <= 4; ++second) {
        // Its last answer is from before its one request began.
        const auto load = waiting({0, 0, 100, 10}, {0, 0, 20, second * 1000}, {0, 0, 0, 1},
                                  {never, never, 5, second * 1000 + 100});
        CHECK(c.at(static_cast<int>(second), load).ejected.empty());
    }
    // Still alone and unanswered at 5 s: a hang as often as not, and upstream_try is near.
    CHECK(c.at(5, waiting({0, 0, 100, 10}, {0, 0, 20, 5000}, {0, 0, 0, 1}, {never, never, 5, 5100}))
              .ejected == Names{"g2"});
}

TEST_CASE("a backend that answers requests begun after its oldest is slow, not stalled") {
    // Found by an outside probe: a quarter of requests taking 1.5 s on both colours ejected
    // healthy backends whenever a peer had only quick requests waiting (7 in 40 s).
    StallCase c({0, 0, 0, 0});
    CHECK(c.at(1, waiting({0, 0, 100, 60}, {0, 0, 20, 1400}, {0, 0, 0, 3}, {never, never, 5, 300}))
              .ejected.empty());
    // Timeouts are no answers: a backend whose only finished requests failed still holds.
    CHECK(c.at(2, waiting({0, 0, 200, 70}, {0, 0, 20, 1600}, {0, 0, 0, 3}, {never, never, 5, 2500},
                          {0, 0, 0, 10}))
              .ejected == Names{"g2"});
}

TEST_CASE("a hung backend is ejected beside a peer serving slow requests among quick ones") {
    // Found by an outside probe: blue-2 hung while blue-1 served one request in seven in 3 s;
    // the peer's own 3 s waits kept the rule from firing, and blue-2 went only after five
    // timeouts in a row, 21 s in. (g1's oldest here: a legitimate 3 s request.)
    StallCase c({0, 0, 100, 100});
    // Not while g1's own request has waited longer: the colour may be slow as a whole.
    CHECK(c.at(1, waiting({0, 0, 300, 100}, {0, 0, 2900, 1500}, {0, 0, 1, 3},
                          {never, never, 12, 9000}))
              .ejected.empty());
    // Once g2's hold outlasts it (g1's slow request answered, another begun).
    CHECK(c.at(2,
               waiting({0, 0, 400, 100}, {0, 0, 900, 2500}, {0, 0, 0, 3}, {never, never, 12, 9000}))
              .ejected == Names{"g2"});
}

// `load` with answers of `backend` that waited `ms` for their head: `count` of them so far.
bg::DataPlaneLoad answered(bg::DataPlaneLoad load, std::uint32_t backend, std::int64_t ms,
                           std::uint64_t count) {
    load.answer_waits.resize(4);
    load.answer_waits[backend].counts[bg::AnswerWaits::bucket_of(std::chrono::milliseconds(ms))] =
        count;
    return load;
}

TEST_CASE("a backend holding requests no longer than its colour's answers take is not stalled") {
    // Found by an outside probe: one request in seven taking 3 s, a healthy backend holding two
    // of them was sent nothing new by least-request, so it answered nothing newer while its
    // peer did, and was ejected. Its colour answered in 3 s lately: 2.5 s is no hang.
    StallCase c({0, 0, 100, 100});
    c.at(1, answered(waiting({0, 0, 150, 150}, {0, 0, 20, 20}, {0, 0, 0, 0}, {never, never, 5, 5}),
                     2, 3000, 1));
    // (The samples after it carry the same count: no newer answer, the memory holds.)
    const auto held =
        waiting({0, 0, 200, 150}, {0, 0, 20, 2500}, {0, 0, 0, 2}, {never, never, 5, 3000});
    CHECK(c.at(2, answered(held, 2, 3000, 1)).ejected.empty());
    // Past the slowest answer's bucket (up to 4.1 s), it holds.
    const auto hung =
        waiting({0, 0, 250, 150}, {0, 0, 20, 4200}, {0, 0, 0, 2}, {never, never, 5, 4700});
    CHECK(c.at(3, answered(hung, 2, 3000, 1)).ejected == Names{"g2"});
}

TEST_CASE("until a colour has answered for stalled_alone_after, a hold must last that long") {
    // Its slow requests begun at the start are not answered yet: its answers are the quick
    // ones (a healthy backend holding two 3 s requests was ejected 1 s into the traffic).
    bg::OutlierDetector detector{bg::OutlierConfig{}};
    const bg::RoutingTable table = two_by_two();
    const Clock::time_point t0 = Clock::now();
    auto at = [&](int seconds, const bg::DataPlaneLoad& load) {
        return detector.observe(table, load, t0 + std::chrono::seconds(seconds), std::nullopt, {});
    };
    at(0, quick_answers(counts({0, 0, 100, 100}, {0, 0, 0, 0}), 1));
    const auto held = [](std::uint64_t ms) {
        return quick_answers(
            waiting({0, 0, 200, 150}, {0, 0, 20, ms}, {0, 0, 0, 2}, {never, never, 5, ms + 100}),
            2);
    };
    CHECK(at(3, held(2500)).ejected.empty());
    CHECK(at(4, held(3500)).ejected.empty());
    CHECK(at(5, held(5100)).ejected == Names{"g2"});
}

TEST_CASE("what the service's answers take counts up to stalled_alone_after, no more") {
    // Found by an outside probe: one 9 s answer (bucket 16.4 s, past upstream_try) left hung
    // backends to five timeouts in a row for ten minutes.
    StallCase c({0, 0, 100, 100});
    c.at(1, answered(waiting({0, 0, 150, 150}, {0, 0, 20, 20}, {0, 0, 0, 0}, {never, never, 5, 5}),
                     2, 9000, 1));
    const auto held =
        waiting({0, 0, 200, 150}, {0, 0, 20, 5100}, {0, 0, 0, 2}, {never, never, 5, 5600});
    CHECK(c.at(2, answered(held, 2, 9000, 1)).ejected == Names{"g2"});
}

TEST_CASE("a slow answer is remembered for slow_answer_memory, then forgotten") {
    bg::OutlierConfig config;
    config.slow_answer_memory = std::chrono::seconds(30);
    bg::OutlierDetector detector(config);
    const bg::RoutingTable table = two_by_two();
    const Clock::time_point t0 = Clock::now();
    auto at = [&](int seconds, const bg::DataPlaneLoad& load) {
        return detector.observe(table, load, t0 + std::chrono::seconds(seconds), std::nullopt, {});
    };
    // Quick answers all along; one 3 s answer at 1 s.
    at(0, quick_answers(counts({0, 0, 100, 100}, {0, 0, 0, 0}), 1));
    at(1, answered(quick_answers(counts({0, 0, 150, 150}, {0, 0, 0, 0}), 2), 3, 3000, 1));
    const auto held =
        waiting({0, 0, 200, 150}, {0, 0, 20, 2500}, {0, 0, 0, 2}, {never, never, 5, 3000});
    CHECK(at(20, answered(quick_answers(held, 20), 3, 3000, 1)).ejected.empty());
    // 40 s on, no slow answer since: 2.5 s without an answer is a hold again.
    CHECK(at(41, answered(quick_answers(held, 41), 3, 3000, 1)).ejected == Names{"g2"});
}

TEST_CASE("no stall is judged in a colour without a share: it is sent nothing new") {
    std::array<bg::ColourPool, 2> pools;
    pools[0].weight_bp = 10000;
    pools[0].backends = {{0, "b1", bg::Colour::blue, {}}, {1, "b2", bg::Colour::blue, {}}};
    pools[1].backends = {{2, "g1", bg::Colour::green, {}}, {3, "g2", bg::Colour::green, {}}};
    StallCase c({0, 0, 100, 100}, bg::RoutingTable(1, std::move(pools)));
    // Slow requests left over from its share.
    CHECK(c.at(1, waiting({100, 100, 100, 100}, {0, 0, 10, 1500}, {0, 0, 0, 2}, {5, 5, 20, 9000}))
              .ejected.empty());
}

TEST_CASE("a peer that answers nothing begun since is no evidence against a backend") {
    // Found by an outside probe: a hung backend back from its ejection (old answers in the
    // window, no request waiting yet) counted as the answering peer, and its healthy peer,
    // serving two slow requests, was ejected.
    StallCase c({0, 0, 100, 100});
    // g1's last answer is from before.
    CHECK(c.at(1, waiting({0, 0, 150, 150}, {0, 0, 0, 2000}, {0, 0, 0, 2},
                          {never, never, 40000, 2500}))
              .ejected.empty());
    // g1 answers a request begun since: now g2's hold is evidence.
    CHECK(
        c.at(2, waiting({0, 0, 150, 150}, {0, 0, 0, 2000}, {0, 0, 0, 2}, {never, never, 30, 2500}))
            .ejected == Names{"g2"});
}

TEST_CASE("a try after a cut counts in a candidate's stall once two were cut, not the stable's") {
    // Found by an outside probe: a candidate hung everywhere under one client sending one
    // request at a time held one request at a time: cut on one backend at
    // stalled_alone_after, then waiting on the other, a wait no rule counted (15 s a request,
    // never reverted). One request slow everywhere is cut once (its answer then teaches what
    // the service's answers take): one cut is no evidence; a hung colour's every request is.
    bg::OutlierConfig config;
    config.colour_stalled_after = std::chrono::seconds(5);
    config.base_ejection = std::chrono::seconds(1);
    auto table = two_by_two();
    auto t0 = Clock::now();
    const auto s = [&](int seconds) { return t0 + std::chrono::seconds(seconds); };
    const auto waits = [](std::vector<std::uint64_t> first, std::vector<std::uint64_t> after_cut) {
        auto load = counts({0, 0, 150, 150}, {0, 0, 0, 0});
        load.oldest_wait_ms = std::move(first);
        load.oldest_wait_after_cut_ms = std::move(after_cut);
        return load;
    };
    for (const auto watched :
         {std::optional<bg::Colour>(bg::Colour::green), std::optional<bg::Colour>()}) {
        bg::OutlierDetector detector(config);
        detector.observe(table, waits({}, {}), s(0), watched, {});
        detector.observe(table, waits({}, {}), s(1), watched, {});
        // Request 1 held alone on g1: cut. Its next try holds on g2: one cut, no verdict.
        CHECK(detector.observe(table, waits({0, 0, 5100, 0}, {}), s(5), watched, {}).ejected ==
              Names{"g1"});
        CHECK_FALSE(
            detector.observe(table, waits({}, {0, 0, 0, 5100}), s(6), watched, {}).failed_colour);
        // Request 2 held alone on g2: cut. Its next try holds on g1, back from its ejection.
        CHECK(detector.observe(table, waits({0, 0, 0, 5100}, {}), s(7), watched, {}).ejected ==
              Names{"g2"});
        const auto v = detector.observe(table, waits({}, {0, 0, 5100, 0}), s(12), watched, {});
        if (watched) {
            CHECK(v.failed_colour == bg::Colour::green);
        } else {
            // The stable colour: a request slow everywhere looks alike; no failover on it.
            CHECK_FALSE(v.stalled_stable);
        }
    }
}

TEST_CASE("a watched colour none of whose backends answers fails as a whole") {
    // Found by an outside probe: green hung everywhere after a flip stayed live for up to a
    // minute at 8 clients (no answering peer to compare with; too few timeouts for a rate).
    bg::OutlierConfig config;
    config.colour_stalled_after = std::chrono::seconds(5);
    bg::OutlierDetector detector(config);
    auto table = two_by_two();
    auto t0 = Clock::now();
    const auto s = [&](int seconds) { return t0 + std::chrono::seconds(seconds); };
    auto load = counts({0, 0, 100, 100}, {0, 0, 0, 0});
    detector.observe(table, load, s(0), bg::Colour::green, {});
    // Green stops answering at 1 s: its requests wait; nothing finishes.
    load = counts({0, 0, 150, 150}, {0, 0, 0, 0});
    load.oldest_wait_ms = {0, 0, 0, 0};
    detector.observe(table, load, s(1), bg::Colour::green, {});
    load.oldest_wait_ms = {0, 0, 4000, 3900};
    CHECK_FALSE(detector.observe(table, load, s(5), bg::Colour::green, {}).failed_colour);
    load.oldest_wait_ms = {0, 0, 5200, 5100};
    auto v = detector.observe(table, load, s(6), bg::Colour::green, {});
    REQUIRE(v.failed_colour == bg::Colour::green);
    CHECK(v.colour_reason.find("answered nothing for 5000ms") != std::string::npos);
    // The same, but one request finished within those 5 s: a slow colour, not a stalled one.
    bg::OutlierDetector slow(config);
    load = counts({0, 0, 150, 150}, {0, 0, 0, 0});
    slow.observe(table, load, s(0), bg::Colour::green, {});
    slow.observe(table, load, s(1), bg::Colour::green, {});
    load = counts({0, 0, 151, 150}, {0, 0, 0, 0});
    load.oldest_wait_ms = {0, 0, 5200, 5100};
    CHECK_FALSE(slow.observe(table, load, s(6), bg::Colour::green, {}).failed_colour);
    // One backend holds, its peer has nothing in flight (the clients all stuck on the first,
    // as in HungBackendTest): the peer may well answer; the per-backend rule is for this.
    bg::OutlierDetector one(config);
    one.observe(table, counts({0, 0, 150, 150}, {0, 0, 0, 0}), s(0), bg::Colour::green, {});
    one.observe(table, counts({0, 0, 150, 150}, {0, 0, 0, 0}), s(1), bg::Colour::green, {});
    auto stuck_on_one = counts({0, 0, 150, 150}, {0, 0, 0, 0});
    stuck_on_one.oldest_wait_ms = {0, 0, 0, 6200};
    CHECK_FALSE(one.observe(table, stuck_on_one, s(6), bg::Colour::green, {}).failed_colour);
    // Not watched but taking traffic (the stable colour): stalled, not failed.
    bg::OutlierDetector stable(config);
    stable.observe(table, counts({0, 0, 150, 150}, {0, 0, 0, 0}), s(0), std::nullopt, {});
    stable.observe(table, counts({0, 0, 150, 150}, {0, 0, 0, 0}), s(1), std::nullopt, {});
    auto hung = counts({0, 0, 150, 150}, {0, 0, 0, 0});
    hung.oldest_wait_ms = {0, 0, 5200, 5100};
    // One request waiting on each (two slow reports on a quiet proxy, an outside probe): not
    // enough to move the stable colour's traffic.
    hung.stalled_waits = {0, 0, 1, 1};
    CHECK_FALSE(stable.observe(table, hung, s(6), std::nullopt, {}).stalled_stable);
    hung.stalled_waits = {0, 0, 1, 2};  // three: fewer than two a backend
    CHECK_FALSE(stable.observe(table, hung, s(6), std::nullopt, {}).stalled_stable);
    // Four clients stuck one and three (least-request sent what followed the first backend's
    // hang to its peer): stalled as much as two each (StableHangTest on 79968ca, in CI).
    hung.stalled_waits = {0, 0, 1, 3};
    const auto found = stable.observe(table, hung, s(6), std::nullopt, {});
    CHECK_FALSE(found.failed_colour);
    REQUIRE(found.stalled_stable == bg::Colour::green);
    CHECK(found.stable_reason.find("answered nothing") != std::string::npos);
    // Not watched (no traffic of its own to lose): no verdict.
    bg::OutlierDetector idle(config);
    idle.observe(table, counts({0, 0, 150, 150}, {0, 0, 0, 0}), s(0), std::nullopt, {});
    CHECK_FALSE(idle.observe(table, load, s(6), std::nullopt, {}).failed_colour);
    // Just reset (after a revert): no sample old enough to judge on.
    detector.reset_window();
    CHECK_FALSE(detector.observe(table, load, s(7), bg::Colour::green, {}).failed_colour);
}

TEST_CASE("a stable colour's tries cut from an ejected backend count toward its stall") {
    // StableHangTest in CI on 79968ca: g1 hung 0.3 s before g2, three clients stuck on g1 and
    // one on g2; g1 was ejected while g2 still answered, its three tries cut and retried on g2,
    // where they were not counted: no failover. Requests from 1 s on: none finish.
    const auto stuck = [](std::uint64_t g1_oldest, std::uint64_t g2_oldest,
                          std::uint32_t g2_stalled, std::uint64_t after_cut,
                          std::uint32_t stalled_after_cut) {
        auto load = waiting({0, 0, 100, 100}, {0, 0, g1_oldest, g2_oldest}, {0, 0, 0, g2_stalled},
                            {never, never, 1400, 1300});
        load.oldest_wait_after_cut_ms = {0, 0, 0, after_cut};
        load.stalled_waits_after_cut = {0, 0, 0, stalled_after_cut};
        return load;
    };
    for (const std::uint32_t cut : {3u, 1u}) {
        CAPTURE(cut);
        StallCase c({0, 0, 0, 0});
        auto first = stuck(1500, 1200, 1, 0, 0);
        first.stalled_waits[2] = 3;
        REQUIRE(c.at(1, first).ejected == Names{"g1"});
        CHECK_FALSE(c.at(2, stuck(0, 2200, 1, 900, 0)).stalled_stable);
        for (int t = 3; t <= 5; ++t) {
            CHECK_FALSE(c.at(t, stuck(0, 1200 + 1000 * t, 1, 1000 * t - 1100, cut)).stalled_stable);
        }
        // Four stalled on g2 (one its own, three cut from g1): twice the colour's two backends,
        // the ejected one counted. One cut (a slow report cut from g1, another slow one on g2:
        // two, as an outside probe's quiet proxy had): the ejection does not halve the bar.
        const auto v = c.at(6, stuck(0, 7200, 1, 4900, cut));
        CHECK(v.stalled_stable == (cut == 3 ? std::optional{bg::Colour::green} : std::nullopt));
    }
}

TEST_CASE("past stalled_alone_after, idle peers stand witness for one client stuck on a backend") {
    // Found by an outside probe: one client sending one request at a time to a pool with a
    // hung backend waited upstream_try on every other request (no peer answered anything
    // begun after the stuck one: nothing reached it); ejected only after five timeouts, 50 s.
    StallCase c({0, 0, 100, 100});
    // g1 idle (nothing waiting), its last answer from before g2's one request began.
    CHECK(c.at(1,
               waiting({0, 0, 120, 101}, {0, 0, 0, 4000}, {0, 0, 0, 1}, {never, never, 4500, 9000}))
              .ejected.empty());
    CHECK(c.at(2,
               waiting({0, 0, 120, 101}, {0, 0, 0, 5000}, {0, 0, 0, 1}, {never, never, 5500, 9000}))
              .ejected == Names{"g2"});
}

TEST_CASE("a peer holding a request of its own is no witness for an idle pool") {
    StallCase c({0, 0, 100, 100});
    // Both wait, one request each, nothing answered since: the service is slow, not g2.
    CHECK(c.at(1, waiting({0, 0, 101, 101}, {0, 0, 4800, 5000}, {0, 0, 1, 1},
                          {never, never, 5500, 9000}))
              .ejected.empty());
}
