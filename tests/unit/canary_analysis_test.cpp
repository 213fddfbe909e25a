#include <doctest/doctest.h>

#include <random>

#include "canary_analysis.hpp"

namespace {

using Clock = bg::CanaryAnalysis::Clock;
using namespace std::chrono_literals;
using State = bg::CanaryVerdict::State;

// Traffic to both colours, a quarter second at a time: `rate` tries a second per colour, each
// failing with the colour's probability and lasting the colour's latency.
struct Traffic {
    std::array<bg::ColourFigures, 2> totals;
    std::mt19937 random{42};

    void run(unsigned tries, double fail_probability, double seconds, bg::Colour colour) {
        auto& f = totals[bg::index_of(colour)];
        std::bernoulli_distribution fails(fail_probability);
        for (unsigned i = 0; i < tries; ++i) {
            ++f.requests;
            f.errors += fails(random) ? 1 : 0;
            f.latency.observe(seconds);
        }
    }
};

// Feeds `steps` quarter-second samples, green the candidate, `each(step)` making each one's
// traffic; returns the step (from 1) of the first failing verdict, or 0.
template <class Each>
unsigned feed_each(bg::CanaryAnalysis& analysis, Traffic& traffic, Clock::time_point& now,
                   unsigned steps, Each each) {
    for (unsigned step = 1; step <= steps; ++step) {
        each(step);
        now += 250ms;
        const auto& v = analysis.observe(now, traffic.totals, bg::Colour::green, bg::Colour::blue);
        if (v.state == State::failing) {
            return step;
        }
    }
    return 0;
}

// The same with `per_step` tries of each colour.
unsigned feed(bg::CanaryAnalysis& analysis, Traffic& traffic, Clock::time_point& now,
              unsigned steps, unsigned per_step, double blue_fail, double green_fail,
              double blue_latency = 0.01, double green_latency = 0.01) {
    return feed_each(analysis, traffic, now, steps, [&](unsigned) {
        traffic.run(per_step, blue_fail, blue_latency, bg::Colour::blue);
        traffic.run(per_step, green_fail, green_latency, bg::Colour::green);
    });
}

}  // namespace

TEST_CASE("a candidate failing 20% of tries against a clean stable fails within a second") {
    bg::CanaryAnalysis analysis(bg::CanaryConfig{});
    Traffic traffic;
    auto now = Clock::now();
    // A minute of both healthy at ~1,000 req/s split 50/50 (125 tries per colour per step)...
    CHECK(feed(analysis, traffic, now, 240, 125, 0, 0) == 0);
    CHECK(analysis.verdict().state == State::passing);
    // ...then the candidate answers 20% with errors.
    const unsigned step = feed(analysis, traffic, now, 20, 125, 0, 0.2);
    CHECK(step >= 1);
    CHECK(step <= 4);  // within a second
    CHECK(analysis.verdict().reason.find("error rate") != std::string::npos);
    CHECK(analysis.verdict().candidate_error_rate > analysis.verdict().stable_error_rate);
}

TEST_CASE("equally noisy colours never fail the candidate") {
    bg::CanaryAnalysis analysis(bg::CanaryConfig{});
    Traffic traffic;
    auto now = Clock::now();
    // Ten minutes at 1% errors on both, at high and at low traffic.
    CHECK(feed(analysis, traffic, now, 2400, 125, 0.01, 0.01) == 0);
    CHECK(feed(analysis, traffic, now, 2400, 5, 0.01, 0.01) == 0);
    // Both equally bad (30%): not the candidate's fault either.
    CHECK(feed(analysis, traffic, now, 400, 125, 0.3, 0.3) == 0);
}

TEST_CASE("a small steady difference fails on a long window at low traffic") {
    bg::CanaryAnalysis analysis(bg::CanaryConfig{});
    Traffic traffic;
    auto now = Clock::now();
    // 20 req/s per colour: too few for the short windows; 5% vs 0% shows over a minute.
    const unsigned step = feed(analysis, traffic, now, 240, 5, 0, 0.05);
    CHECK(step > 0);
    CHECK(analysis.verdict().window >= 10s);
}

TEST_CASE("a candidate ten times slower at p99 fails; one slightly slower does not") {
    bg::CanaryAnalysis analysis(bg::CanaryConfig{});
    Traffic traffic;
    auto now = Clock::now();
    CHECK(feed(analysis, traffic, now, 240, 125, 0, 0, 0.02, 0.03) == 0);
    analysis.reset();
    const unsigned step = feed(analysis, traffic, now, 80, 125, 0, 0, 0.02, 0.2);
    CHECK(step > 0);
    CHECK(analysis.verdict().reason.find("latency") != std::string::npos);
    CHECK(analysis.verdict().candidate_latency > 5 * analysis.verdict().stable_latency);
}

TEST_CASE("after a flip, stable's remembered figures are the baseline") {
    bg::CanaryAnalysis analysis(bg::CanaryConfig{});
    Traffic traffic;
    auto now = Clock::now();
    // Blue alone, clean, for a minute: no candidate, but its figures are learnt.
    for (unsigned step = 0; step < 240; ++step) {
        traffic.run(250, 0, 0.01, bg::Colour::blue);
        now += 250ms;
        analysis.observe(now, traffic.totals, std::nullopt, bg::Colour::blue);
    }
    CHECK(analysis.verdict().state == State::idle);
    // Flipped: green takes everything and fails 20%.
    CHECK(feed_each(analysis, traffic, now, 8,
                    [&](unsigned) { traffic.run(250, 0.2, 0.01, bg::Colour::green); }) > 0);
    CHECK(analysis.verdict().remembered_baseline);
}

TEST_CASE("a candidate slowed to seconds fails on few requests: it slows its own traffic") {
    bg::CanaryAnalysis analysis(bg::CanaryConfig{});
    Traffic traffic;
    auto now = Clock::now();
    // A ramp's first step (an outside probe's): 400 req/s, 20% to the candidate, both at 10 ms,
    // for 5 s; then every candidate request takes 2 s, and the closed-loop clients, waiting on
    // it, send it 8 a second and stable almost nothing. Neither colour ever has
    // latency_min_requests in a window again (on 62afe34: never judged, "passing").
    CHECK(feed_each(analysis, traffic, now, 20, [&](unsigned) {
              traffic.run(80, 0, 0.01, bg::Colour::blue);
              traffic.run(20, 0, 0.01, bg::Colour::green);
          }) == 0);
    const unsigned failed_at = feed_each(analysis, traffic, now, 240, [&](unsigned step) {
        traffic.run(step % 4 == 0 ? 1 : 0, 0, 0.01, bg::Colour::blue);
        traffic.run(2, 0, 2.0, bg::Colour::green);
    });
    // Once the 10 s window's candidate requests are mostly the slow ones (stable's p99 from
    // before stands in).
    CHECK(failed_at > 0);
    CHECK(failed_at <= 48);
    CHECK(analysis.verdict().latency_judged);
    CHECK(analysis.verdict().reason.find("slower than") != std::string::npos);
}

TEST_CASE("a candidate's cold start (its first requests slow) is not a slow release") {
    bg::CanaryAnalysis analysis(bg::CanaryConfig{});
    Traffic traffic;
    auto now = Clock::now();
    CHECK(feed(analysis, traffic, now, 240, 125, 0, 0) == 0);
    analysis.reset();
    now += 250ms;
    analysis.observe(now, traffic.totals, bg::Colour::green, bg::Colour::blue);
    // The candidacy's first quarter second: 60 candidate requests, 50 of them at 0.5 s (the
    // first of each backend's connections, say); then 10 a quarter second, at 10 ms.
    traffic.run(50, 0, 0.5, bg::Colour::green);
    traffic.run(10, 0, 0.01, bg::Colour::green);
    traffic.run(125, 0, 0.01, bg::Colour::blue);
    now += 250ms;
    CHECK(analysis.observe(now, traffic.totals, bg::Colour::green, bg::Colour::blue).state !=
          State::failing);
    for (unsigned step = 0; step < 80; ++step) {
        traffic.run(10, 0, 0.01, bg::Colour::green);
        traffic.run(125, 0, 0.01, bg::Colour::blue);
        now += 250ms;
        REQUIRE(analysis.observe(now, traffic.totals, bg::Colour::green, bg::Colour::blue).state !=
                State::failing);
    }
    CHECK(analysis.verdict().state == State::passing);
}

TEST_CASE("with no figures of stable at all, the candidate's errors meet an assumed rate") {
    // A restart after a flip: the candidate takes everything, stable nothing, from the start.
    const auto flipped = [](double green_fail) {
        bg::CanaryAnalysis analysis(bg::CanaryConfig{});
        Traffic traffic;
        auto now = Clock::now();
        const unsigned failed_at = feed_each(analysis, traffic, now, 40, [&](unsigned) {
            traffic.run(100, green_fail, 0.01, bg::Colour::green);
        });
        return std::make_pair(failed_at, analysis.verdict());
    };
    const auto [failed_at, verdict] = flipped(0.3);
    CHECK(failed_at >= 1);
    CHECK(failed_at <= 2);
    CHECK(verdict.assumed_baseline);
    CHECK(verdict.reason.find("assumed") != std::string::npos);
    // A healthy one (0.5%) passes, on the assumed rate, not "collecting" for ever.
    const auto [healthy_failed_at, healthy] = flipped(0.005);
    CHECK(healthy_failed_at == 0);
    CHECK(healthy.state == State::passing);
    CHECK(healthy.assumed_baseline);
    // Off (1): collecting, as before.
    bg::CanaryConfig off;
    off.assumed_error_rate = 1;
    bg::CanaryAnalysis analysis(off);
    Traffic traffic;
    auto now = Clock::now();
    traffic.run(400, 0.3, 0.01, bg::Colour::green);
    now += 250ms;
    CHECK(analysis.observe(now, traffic.totals, bg::Colour::green, bg::Colour::blue).state ==
          State::collecting);
}

TEST_CASE("too few requests is collecting, not a verdict") {
    bg::CanaryAnalysis analysis(bg::CanaryConfig{});
    Traffic traffic;
    auto now = Clock::now();
    CHECK(feed(analysis, traffic, now, 4, 2, 0, 1.0) == 0);
    CHECK(analysis.verdict().state == State::collecting);
}

TEST_CASE("histogram quantiles interpolate within a bucket") {
    bg::DurationHistogram h;
    CHECK(bg::histogram_quantile(h, 0.99) == 0);
    for (int i = 0; i < 100; ++i) {
        h.observe(0.007);  // the 5-10 ms bucket
    }
    const double p99 = bg::histogram_quantile(h, 0.99);
    CHECK(p99 > 0.005);
    CHECK(p99 <= 0.01);
}
