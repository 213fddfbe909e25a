#include "canary_analysis.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace bg {

namespace {

// Counters only grow, but a reload can take a backend (and its counts) out of a colour's sum.
std::uint64_t since(std::uint64_t later, std::uint64_t earlier) {
    return later >= earlier ? later - earlier : 0;
}

ColourFigures difference(const ColourFigures& later, const ColourFigures& earlier) {
    ColourFigures out;
    out.requests = since(later.requests, earlier.requests);
    out.errors = std::min(since(later.errors, earlier.errors), out.requests);
    for (std::size_t i = 0; i < out.latency.counts.size(); ++i) {
        out.latency.counts[i] = since(later.latency.counts[i], earlier.latency.counts[i]);
    }
    out.latency.sum = std::max(0.0, later.latency.sum - earlier.latency.sum);
    return out;
}

double rate(const ColourFigures& f) {
    return f.requests > 0 ? static_cast<double>(f.errors) / static_cast<double>(f.requests) : 0;
}

// One-sided two-proportion z statistic of p1 > p2 (0 when no difference can be told).
double z_statistic(const ColourFigures& a, const ColourFigures& b) {
    const double n1 = static_cast<double>(a.requests);
    const double n2 = static_cast<double>(b.requests);
    const double pooled = static_cast<double>(a.errors + b.errors) / (n1 + n2);
    const double variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2);
    return variance > 0 ? (rate(a) - rate(b)) / std::sqrt(variance) : 0;
}

std::string fixed(double value, int decimals) {
    char text[64];
    std::snprintf(text, sizeof text, "%.*f", decimals, value);
    return text;
}

std::string seconds_text(Duration d) {
    return d.count() % 1000 == 0 ? std::to_string(d.count() / 1000) + "s"
                                 : std::to_string(d.count()) + "ms";
}

}  // namespace

const char* to_string(CanaryVerdict::State state) {
    switch (state) {
        case CanaryVerdict::State::idle:
            return "idle";
        case CanaryVerdict::State::collecting:
            return "collecting";
        case CanaryVerdict::State::passing:
            return "passing";
        case CanaryVerdict::State::failing:
            return "failing";
    }
    return "idle";
}

boost::json::object to_json(const CanaryVerdict& v) {
    boost::json::object out{{"verdict", to_string(v.state)}};
    if (v.candidate) {
        out["candidate"] = to_string(*v.candidate);
    }
    if (v.state == CanaryVerdict::State::passing || v.state == CanaryVerdict::State::failing) {
        out["window"] = seconds_text(v.window);
        out["candidate_requests"] = v.candidate_requests;
        out["stable_requests"] = v.stable_requests;
        out["candidate_error_rate"] = v.candidate_error_rate;
        out["stable_error_rate"] = v.stable_error_rate;
        out["z"] = v.z;
        if (v.latency_judged) {  // else too few requests to judge it
            out["candidate_latency_seconds"] = v.candidate_latency;
            out["stable_latency_seconds"] = v.stable_latency;
            out["candidate_slow_requests"] = v.slow_requests;
        }
        out["remembered_baseline"] = v.remembered_baseline;
        out["assumed_baseline"] = v.assumed_baseline;
    }
    if (!v.reason.empty()) {
        out["reason"] = v.reason;
    }
    return out;
}

double histogram_quantile(const DurationHistogram& histogram, double quantile) {
    const std::uint64_t total = histogram.count();
    if (total == 0) {
        return 0;
    }
    const double rank = quantile * static_cast<double>(total);
    double below = 0;
    double lower = 0;
    for (std::size_t i = 0; i < histogram.counts.size(); ++i) {
        const double in_bucket = static_cast<double>(histogram.counts[i]);
        const bool last = i == DurationHistogram::bounds.size();
        const double upper = last ? lower : DurationHistogram::bounds[i];
        if (in_bucket > 0 && below + in_bucket >= rank) {
            return lower + (upper - lower) * (rank - below) / in_bucket;
        }
        below += in_bucket;
        lower = upper;
    }
    return lower;
}

std::uint64_t count_above(const DurationHistogram& histogram, double seconds) {
    double above = 0;
    for (std::size_t i = 0; i < histogram.counts.size(); ++i) {
        const double lower = i == 0 ? 0 : DurationHistogram::bounds[i - 1];
        const double count = static_cast<double>(histogram.counts[i]);
        if (lower >= seconds) {
            above += count;
        } else if (i < DurationHistogram::bounds.size() && DurationHistogram::bounds[i] > seconds) {
            // The bucket the mark falls in: its share above the mark, as if spread evenly.
            above += count * (DurationHistogram::bounds[i] - seconds) /
                     (DurationHistogram::bounds[i] - lower);
        }
    }
    return static_cast<std::uint64_t>(above);
}

void CanaryAnalysis::reconfigure(CanaryConfig config) {
    if (config.windows != config_.windows) {
        baselines_.clear();
    }
    if (config.latency_quantile != config_.latency_quantile) {
        stable_quantile_.reset();
    }
    config_ = std::move(config);
}

void CanaryAnalysis::reset() {
    samples_.clear();
    verdict_ = CanaryVerdict{};
}

const CanaryAnalysis::Sample& CanaryAnalysis::start_of(Duration window,
                                                       Clock::time_point now) const {
    // The latest sample at or before the window's start; the earliest one while the history
    // is shorter than the window.
    const Sample* start = &samples_.front();
    for (const Sample& s : samples_) {
        if (s.at > now - window) {
            break;
        }
        start = &s;
    }
    return *start;
}

const CanaryVerdict& CanaryAnalysis::observe(Clock::time_point now,
                                             const std::array<ColourFigures, 2>& figures,
                                             std::optional<Colour> candidate, Colour stable) {
    if (candidate != candidate_) {
        samples_.clear();  // a new candidacy is judged on its own traffic
        candidate_ = candidate;
    }
    samples_.push_back(Sample{now, figures});
    const Duration longest =
        std::max(*std::max_element(config_.windows.begin(), config_.windows.end()), Duration(0));
    while (samples_.size() > 2 && samples_[1].at <= now - longest) {
        samples_.pop_front();
    }
    baselines_.resize(config_.windows.size());
    verdict_ = CanaryVerdict{};
    verdict_.candidate = candidate;
    if (!config_.enabled || !candidate) {
        // Still learn stable's figures, for when a flip leaves it without traffic.
        for (std::size_t i = 0; i < config_.windows.size(); ++i) {
            judge(i, now, other(stable), stable);
        }
        verdict_.candidate.reset();
        return verdict_;
    }
    verdict_.state = CanaryVerdict::State::collecting;
    for (std::size_t i = 0; i < config_.windows.size(); ++i) {
        WindowVerdict w = judge(i, now, *candidate, stable);
        if (w.failing) {
            verdict_ = w.detail;
            verdict_.state = CanaryVerdict::State::failing;
            return verdict_;
        }
        if (w.judged && (verdict_.state != CanaryVerdict::State::passing ||
                         w.detail.window > verdict_.window)) {
            verdict_ = w.detail;
            verdict_.state = CanaryVerdict::State::passing;
        }
    }
    return verdict_;
}

CanaryAnalysis::WindowVerdict CanaryAnalysis::judge(std::size_t index, Clock::time_point now,
                                                    Colour candidate, Colour stable) {
    const Duration window = config_.windows[index];
    const Sample& start = start_of(window, now);
    const Sample& end = samples_.back();
    const ColourFigures cand =
        difference(end.figures[index_of(candidate)], start.figures[index_of(candidate)]);
    ColourFigures base = difference(end.figures[index_of(stable)], start.figures[index_of(stable)]);

    WindowVerdict out;
    out.detail.candidate = candidate;
    out.detail.window = window;
    std::optional<Baseline>& remembered = baselines_[index];
    const bool full_window = end.at - start.at >= window - config_.interval;
    learn_stable(base, full_window, stable, now);
    if (base.requests >= config_.min_requests && full_window) {
        remembered = Baseline{now, base};
    } else if (base.requests < config_.min_requests && remembered &&
               now - remembered->at <= config_.baseline_memory) {
        base = remembered->figures;
        out.detail.remembered_baseline = true;
    }
    out.detail.candidate_requests = cand.requests;
    out.detail.stable_requests = base.requests;
    out.detail.candidate_error_rate = rate(cand);
    out.detail.stable_error_rate = rate(base);
    if (base.requests < config_.min_requests) {
        judge_errors_against_assumed(cand, stable, out);
    } else {
        judge_errors(cand, base, out);
    }
    if (!out.failing) {
        // Most of a window slow: over a full one of 10 s or more, where a release's cold start
        // (its first requests on each backend) is not most of it.
        const bool slow_share = full_window && window >= std::chrono::seconds(10);
        judge_latency(cand, base, slow_share ? known_quantile(stable, now) : std::nullopt, out);
    }
    if (out.failing) {
        out.detail.reason =
            std::string(to_string(candidate)) + " " + out.detail.reason + " over " +
            seconds_text(window) +
            (out.detail.remembered_baseline ? " (stable's figures from before)" : "");
    }
    return out;
}

void CanaryAnalysis::judge_errors(const ColourFigures& cand, const ColourFigures& base,
                                  WindowVerdict& out) const {
    if (cand.requests < config_.min_requests || base.requests < config_.min_requests) {
        return;
    }
    out.judged = true;
    const double c = rate(cand);
    const double s = rate(base);
    const double z = z_statistic(cand, base);
    out.detail.z = z;
    if (c - s >= config_.error_margin && c >= config_.error_ratio * s && z >= config_.confidence) {
        out.failing = true;
        out.detail.reason = "error rate " + fixed(c * 100, 1) + "% vs stable " + fixed(s * 100, 1) +
                            "% (" + std::to_string(cand.requests) + " vs " +
                            std::to_string(base.requests) + " tries, z " + fixed(z, 1) + ")";
    }
}

// No figures of stable in the window, live or remembered: the candidate's error rate against
// assumed_error_rate (or stable's last known rate, if higher: its figures outlived by a long
// candidacy), by the same margin and ratio, significant in a one-sample test.
void CanaryAnalysis::judge_errors_against_assumed(const ColourFigures& cand, Colour stable,
                                                  WindowVerdict& out) const {
    double s = config_.assumed_error_rate;
    if (last_stable_rate_ && last_stable_rate_->colour == stable) {
        s = std::max(s, last_stable_rate_->rate);
    }
    if (cand.requests < config_.min_requests || s >= 1) {
        return;
    }
    out.judged = true;
    out.detail.assumed_baseline = true;
    const double c = rate(cand);
    const double z = (c - s) / std::sqrt(s * (1 - s) / static_cast<double>(cand.requests));
    out.detail.z = z;
    out.detail.stable_error_rate = s;
    if (c - s >= config_.error_margin && c >= config_.error_ratio * s && z >= config_.confidence) {
        out.failing = true;
        out.detail.reason = "error rate " + fixed(c * 100, 1) + "% vs " + fixed(s * 100, 1) +
                            "% assumed of stable, which has no figures yet (" +
                            std::to_string(cand.requests) + " tries, z " + fixed(z, 1) + ")";
    }
}

// From stable's own live figures only (remembered ones would stamp old figures anew); its rate
// from whole windows (the longest, judged last), not a second's burst.
void CanaryAnalysis::learn_stable(const ColourFigures& live, bool full_window, Colour stable,
                                  Clock::time_point now) {
    if (live.requests >= config_.min_requests && full_window) {
        last_stable_rate_ = KnownRate{stable, rate(live)};
    }
    // Its quantile over min_requests is rough (p99 of 50 is their slowest), but errs high:
    // the slow-share rule that uses it then asks more.
    if (live.latency.count() >= config_.min_requests) {
        stable_quantile_ =
            KnownQuantile{now, histogram_quantile(live.latency, config_.latency_quantile), stable};
    }
}

std::optional<double> CanaryAnalysis::known_quantile(Colour stable, Clock::time_point now) const {
    if (stable_quantile_ && stable_quantile_->colour == stable &&
        now - stable_quantile_->at <= config_.baseline_memory) {
        return stable_quantile_->seconds;
    }
    return std::nullopt;
}

void CanaryAnalysis::judge_latency(const ColourFigures& cand, const ColourFigures& base,
                                   std::optional<double> known, WindowVerdict& out) const {
    const std::uint64_t cand_count = cand.latency.count();
    const std::uint64_t base_count = base.latency.count();
    if (cand_count < config_.latency_min_requests || base_count < config_.latency_min_requests) {
        if (known && cand_count >= config_.min_requests) {
            judge_slow_share(cand, *known, out);
        }
        return;
    }
    const double s = histogram_quantile(base.latency, config_.latency_quantile);
    out.judged = true;
    out.detail.latency_judged = true;
    const double c = histogram_quantile(cand.latency, config_.latency_quantile);
    out.detail.candidate_latency = c;
    out.detail.stable_latency = s;
    const double margin = std::chrono::duration<double>(config_.latency_margin).count();
    if (c >= config_.latency_ratio * s && c - s >= margin) {
        out.failing = true;
        out.detail.reason = "p" + fixed(config_.latency_quantile * 100, 0) + " latency " +
                            fixed(c * 1000, 0) + "ms vs stable " + fixed(s * 1000, 0) + "ms (" +
                            std::to_string(cand_count) + " vs " + std::to_string(base_count) +
                            " requests)";
    }
}

// Too few of the candidate's requests for its own quantile: most of them past latency_ratio x
// and latency_margin above stable's quantile is a slow release. (Not a tail: a release's cold
// start, a few slow first requests of each backend, is not one.)
void CanaryAnalysis::judge_slow_share(const ColourFigures& cand, double stable_quantile,
                                      WindowVerdict& out) const {
    const double margin = std::chrono::duration<double>(config_.latency_margin).count();
    const double threshold =
        std::max(config_.latency_ratio * stable_quantile, stable_quantile + margin);
    const std::uint64_t count = cand.latency.count();
    const std::uint64_t slow = count_above(cand.latency, threshold);
    out.judged = true;
    out.detail.latency_judged = true;
    out.detail.candidate_latency = histogram_quantile(cand.latency, config_.latency_quantile);
    out.detail.stable_latency = stable_quantile;
    out.detail.slow_requests = slow;
    if (slow * 2 > count) {
        out.failing = true;
        out.detail.reason = "latency: " + std::to_string(slow) + " of " + std::to_string(count) +
                            " requests slower than " + fixed(threshold * 1000, 0) +
                            "ms (stable's p" + fixed(config_.latency_quantile * 100, 0) + " " +
                            fixed(stable_quantile * 1000, 0) + "ms)";
    }
}

}  // namespace bg
