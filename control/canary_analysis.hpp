#pragma once
// CanaryAnalysis: judges the candidate colour against the stable one as Kayenta's canary judge
// and Flagger's analysis do: the same figures of both, over the same sliding windows, and the
// candidate fails only when it is significantly worse than stable, never when both are equally
// bad (an absolute error-rate threshold cannot tell those apart).
//
// - Errors: the candidate's error rate must exceed stable's by an absolute margin and by a
//   ratio, and the difference must be significant (a one-sided two-proportion z-test), over at
//   least min_requests tries of the candidate.
// - Latency: the candidate's quantile (p99) must exceed stable's by a ratio and by a margin,
//   over at least latency_min_requests requests of each. Or, over fewer requests of the
//   candidate (min_requests; a slow release slows its own traffic: closed-loop clients wait
//   on it), most of them must be that much slower than stable's quantile.
// Each window is judged on its own: a short one reverts a burst within a second, a long one
// catches a small steady difference at low traffic. With no stable traffic in a window (after
// a flip), stable's last figures over that window stand in, for baseline_memory; with none
// (a restart, a flip soon after the start, a candidacy longer than that), the candidate's
// errors are judged against assumed_error_rate, or stable's last known rate if higher, as
// stable's (a one-sample test).
// Pure bookkeeping, no timers, no I/O: tested with made-up samples.

#include <array>
#include <boost/json/object.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "config.hpp"
#include "routing_table.hpp"
#include "traffic_counters.hpp"

namespace bg {

// One colour's cumulative figures.
struct ColourFigures {
    std::uint64_t requests = 0;  // tries at its backends
    std::uint64_t errors = 0;    // failed tries of the kinds [canary] errors counts
    DurationHistogram latency;   // request durations (the client's view)
};

struct CanaryVerdict {
    enum class State { idle, collecting, passing, failing };
    State state = State::idle;
    std::optional<Colour> candidate;
    Duration window{0};  // the failing window, else the longest one judged
    std::uint64_t candidate_requests = 0;
    std::uint64_t stable_requests = 0;
    double candidate_error_rate = 0;
    double stable_error_rate = 0;
    double z = 0;                  // of the error-rate difference
    double candidate_latency = 0;  // seconds at latency_quantile; 0 when not judged
    double stable_latency = 0;
    bool latency_judged = false;
    std::uint64_t slow_requests = 0;   // of the candidate's, past the latency threshold
    bool remembered_baseline = false;  // stable's figures are from before (no stable traffic)
    bool assumed_baseline = false;     // none at all: assumed_error_rate stood in
    std::string reason;                // one line with the numbers, for the log and audit
};

const char* to_string(CanaryVerdict::State state);
boost::json::object to_json(const CanaryVerdict& verdict);

class CanaryAnalysis {
  public:
    using Clock = std::chrono::steady_clock;

    explicit CanaryAnalysis(CanaryConfig config) : config_(std::move(config)) {}
    void reconfigure(CanaryConfig config);

    // One sample at `now` of both colours' cumulative figures. Judges `candidate` (a colour
    // taking traffic that is not the stable one), if any, against `stable`.
    const CanaryVerdict& observe(Clock::time_point now, const std::array<ColourFigures, 2>& figures,
                                 std::optional<Colour> candidate, Colour stable);
    // The candidate's history is forgotten (a candidacy begins: see Switchboard::applied);
    // baselines stay.
    void reset();
    const CanaryVerdict& verdict() const { return verdict_; }

  private:
    struct Sample {
        Clock::time_point at;
        std::array<ColourFigures, 2> figures;
    };
    struct Baseline {
        Clock::time_point at;
        ColourFigures figures;  // stable's, over the window
    };
    // What one window says; `judged` when both sides had enough for errors or latency.
    struct WindowVerdict {
        bool judged = false;
        bool failing = false;
        CanaryVerdict detail;
    };

    const Sample& start_of(Duration window, Clock::time_point now) const;
    WindowVerdict judge(std::size_t index, Clock::time_point now, Colour candidate, Colour stable);
    void judge_errors(const ColourFigures& cand, const ColourFigures& base,
                      WindowVerdict& out) const;
    void judge_errors_against_assumed(const ColourFigures& cand, Colour stable,
                                      WindowVerdict& out) const;
    // Stable's last error rate and latency_quantile seen live (a window of min_requests),
    // for windows without enough of its own: a slow release slows stable's traffic too (its
    // clients wait on the candidate); a long candidacy outlives the remembered baselines.
    void learn_stable(const ColourFigures& live, bool full_window, Colour stable,
                      Clock::time_point now);
    std::optional<double> known_quantile(Colour stable, Clock::time_point now) const;
    // The quantiles of both with latency_min_requests of each; else, with `known` (stable's
    // last), the slow share of the candidate's.
    void judge_latency(const ColourFigures& cand, const ColourFigures& base,
                       std::optional<double> known, WindowVerdict& out) const;
    void judge_slow_share(const ColourFigures& cand, double stable_quantile,
                          WindowVerdict& out) const;

    CanaryConfig config_;
    std::deque<Sample> samples_;
    std::vector<std::optional<Baseline>> baselines_;  // by window index
    struct KnownQuantile {
        Clock::time_point at;
        double seconds;
        Colour colour;
    };
    std::optional<KnownQuantile> stable_quantile_;
    struct KnownRate {
        Colour colour;
        double rate;
    };
    std::optional<KnownRate> last_stable_rate_;
    std::optional<Colour> candidate_;
    CanaryVerdict verdict_;
};

// The value below which `quantile` of the histogram's observations fall, interpolated within
// its bucket (seconds). 0 for an empty histogram.
double histogram_quantile(const DurationHistogram& histogram, double quantile);

// The observations above `seconds`: those in buckets that begin at or above it, and the share
// of the bucket it falls in that lies above it (spread evenly).
std::uint64_t count_above(const DurationHistogram& histogram, double seconds);

}  // namespace bg
