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

// Feeds `steps` quarter-second samples; returns the step (from 1) of the first failing
// verdict, or 0.
unsigned feed(bg::CanaryAnalysis& analysis, Traffic& traffic, Clock::time_point& now,
              unsigned steps, unsigned per_step, double blue_fail, double green_fail,
              double blue_latency = 0.01, double green_latency = 0.01) {
    for (unsigned step = 1; step <= steps; ++step) {
        traffic.run(per_step, blue_fail, blue_latency, bg::Colour::blue);
        traffic.run(per_step, green_fail, green_latency, bg::Colour::green);
        now += 250ms;
        const auto& v = analysis.observe(now, traffic.totals, bg::Colour::green, bg::Colour::blue);
        if (v.state == State::failing) {
            return step;
        }
    }
    return 0;
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
    unsigned failed_at = 0;
    for (unsigned step = 1; step <= 8 && failed_at == 0; ++step) {
        traffic.run(250, 0.2, 0.01, bg::Colour::green);
        now += 250ms;
        if (analysis.observe(now, traffic.totals, bg::Colour::green, bg::Colour::blue).state ==
            State::failing) {
            failed_at = step;
        }
    }
    CHECK(failed_at > 0);
    CHECK(analysis.verdict().remembered_baseline);
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
