#include "outlier_detector.hpp"

#include <algorithm>

namespace bg {

namespace {

std::uint64_t at(const std::vector<std::uint64_t>& v, std::uint32_t id) {
    return id < v.size() ? v[id] : 0;
}

std::string percent(double fraction) {
    return std::to_string(static_cast<int>(fraction * 100 + 0.5)) + "%";
}

}  // namespace

const std::map<std::string, bool> OutlierDetector::ejected_map() const {
    std::map<std::string, bool> out;
    for (const auto& [name, e] : ejections_) {
        out[name] = true;
    }
    return out;
}

void OutlierDetector::reset_window() {
    samples_.clear();
}

OutlierDetector::Verdicts OutlierDetector::observe(
    const RoutingTable& table, const DataPlaneLoad& load, Clock::time_point now,
    std::optional<Colour> watched, const std::map<std::string, bool>& active_healthy) {
    Verdicts verdicts;
    samples_.push_back(Sample{now, load.requests, load.failures});
    // Keep one sample at or before the window's start to measure the whole window.
    while (samples_.size() > 2 && samples_[1].at <= now - config_.window) {
        samples_.pop_front();
    }
    const Sample& oldest = samples_.front();
    const Sample& newest = samples_.back();

    // Returns first: an ejection that is over ends once the active checks pass.
    for (auto it = ejections_.begin(); it != ejections_.end();) {
        auto health = active_healthy.find(it->first);
        bool passing = health == active_healthy.end() || health->second;
        if (now >= it->second.until && passing) {
            verdicts.returned.push_back(it->first);
            it = ejections_.erase(it);
        } else {
            ++it;
        }
    }

    for (Colour colour : all_colours) {
        const ColourPool& pool = table.pool(colour);
        std::uint64_t colour_requests = 0;
        std::uint64_t colour_failures = 0;
        unsigned ejected_here = 0;
        // Peers that answer: requests completed in the window, none waiting long now.
        std::uint64_t answering_wait = 0;
        bool answering = false;
        for (const Backend& b : pool.backends) {
            ejected_here += ejections_.contains(b.name) ? 1 : 0;
        }
        auto answers = [&](const Backend& b) {
            return !ejections_.contains(b.name) &&
                   at(newest.requests, b.id) > at(oldest.requests, b.id) &&
                   Duration(at(load.oldest_wait_ms, b.id)) < config_.stalled_after;
        };
        for (const Backend& b : pool.backends) {
            std::uint64_t requests = at(newest.requests, b.id) - at(oldest.requests, b.id);
            std::uint64_t failures = at(newest.failures, b.id) - at(oldest.failures, b.id);
            colour_requests += requests;
            colour_failures += failures;
            if (ejections_.contains(b.name)) {
                continue;
            }
            std::uint64_t in_a_row = at(load.consecutive_failures, b.id);
            const auto checks = active_healthy.find(b.name);
            const bool checks_pass = checks == active_healthy.end() || checks->second;
            bool recovered = false;
            if (!checks_pass) {
                checks_failed_.insert(b.name);
            } else {
                recovered = checks_failed_.erase(b.name) > 0;
            }
            // Back from an ejection, or from the active checks taking it out (its run of
            // failures then was while it was down, the panic threshold keeping it in the pool).
            if (recovered || std::find(verdicts.returned.begin(), verdicts.returned.end(),
                                       b.name) != verdicts.returned.end()) {
                since_return_[b.name] = {at(newest.requests, b.id), at(newest.failures, b.id),
                                         in_a_row};
                continue;  // back this moment: judged on what comes next
            }
            if (auto base = since_return_.find(b.name); base != since_return_.end()) {
                const std::uint64_t new_requests =
                    at(newest.requests, b.id) - base->second.requests;
                const std::uint64_t new_failures =
                    at(newest.failures, b.id) - base->second.failures;
                requests = std::min(requests, new_requests);
                failures = std::min(failures, new_failures);
                if (new_requests > new_failures) {
                    since_return_.erase(base);  // a success ended the old run: the count is fresh
                } else {
                    in_a_row = new_failures;  // the old run goes on: only new failures count
                }
            }
            const Duration waited(at(load.oldest_wait_ms, b.id));
            bool stalled = false;
            if (config_.stalled_after > Duration(0) && waited >= config_.stalled_after) {
                answering = false;
                answering_wait = 0;
                for (const Backend& peer : pool.backends) {
                    if (peer.id != b.id && answers(peer)) {
                        answering = true;
                        answering_wait = std::max(answering_wait, at(load.oldest_wait_ms, peer.id));
                    }
                }
                // And it answered nothing meanwhile: a backend that finishes other requests
                // is slow on some endpoint, not holding (a healthy backend serving a slow
                // endpoint was ejected when its peer happened to have only quick ones waiting).
                stalled = answering && answered_since(b, now - config_.stalled_after) == 0 &&
                          static_cast<double>(waited.count()) >=
                              config_.stall_ratio *
                                  static_cast<double>(std::max<std::uint64_t>(answering_wait, 1));
            }
            const bool consecutive =
                config_.consecutive_failures > 0 && in_a_row >= config_.consecutive_failures;
            const double rate =
                requests > 0 ? static_cast<double>(failures) / static_cast<double>(requests) : 0;
            const bool rate_exceeded = config_.error_rate > 0 && requests >= config_.min_requests &&
                                       rate >= config_.error_rate;
            if (!consecutive && !rate_exceeded && !stalled) {
                continue;
            }
            // Never eject below the panic threshold: the pool keeps enough backends to try.
            const double remaining = static_cast<double>(pool.backends.size() - ejected_here - 1);
            if (remaining < config_.panic_threshold * static_cast<double>(pool.backends.size())) {
                continue;
            }
            unsigned& times = times_ejected_[b.name];
            ++times;
            auto length = std::min<Duration>(config_.base_ejection * times, config_.max_ejection);
            ejections_[b.name] = Ejection{now + length};
            since_return_.erase(b.name);
            ++ejected_here;
            verdicts.ejected.push_back(b.name);
            verdicts.reasons[b.name] =
                (consecutive ? std::to_string(in_a_row) + " failures in a row"
                 : stalled   ? "oldest request waiting " + std::to_string(waited.count()) +
                                 "ms for a response (peers answering, oldest " +
                                 std::to_string(answering_wait) + "ms)"
                           : "error rate " + percent(rate) + " of " + std::to_string(requests) +
                                 " requests (threshold " + percent(config_.error_rate) + ")") +
                ", ejected for " + std::to_string(length.count()) + "ms";
        }
        if (watched && *watched == colour) {
            std::string why = colour_failure(pool, colour_requests, colour_failures, load, now);
            if (!why.empty()) {
                verdicts.failed_colour = colour;
                verdicts.colour_reason = std::string(to_string(colour)) + " " + why;
            }
        }
    }
    return verdicts;
}

const OutlierDetector::Sample* OutlierDetector::sample_at_or_before(Clock::time_point t) const {
    const Sample* found = nullptr;
    for (const Sample& s : samples_) {
        if (s.at <= t) {
            found = &s;
        }
    }
    return found;
}

// Requests `b` answered (finished without failing) since the last sample at or before `since`;
// all of the window's when none is that old.
std::uint64_t OutlierDetector::answered_since(const Backend& b, Clock::time_point since) const {
    const Sample* then = sample_at_or_before(since);
    if (then == nullptr) {
        then = &samples_.front();
    }
    const Sample& now = samples_.back();
    const std::uint64_t requests = at(now.requests, b.id) - at(then->requests, b.id);
    const std::uint64_t failures = at(now.failures, b.id) - at(then->failures, b.id);
    return requests > failures ? requests - failures : 0;
}

std::string OutlierDetector::colour_failure(const ColourPool& pool, std::uint64_t requests,
                                            std::uint64_t failures, const DataPlaneLoad& load,
                                            Clock::time_point now) const {
    if (config_.error_rate > 0 && requests >= config_.min_requests) {
        const double rate = static_cast<double>(failures) / static_cast<double>(requests);
        if (rate >= config_.error_rate) {
            return "error rate " + percent(rate) + " over " + std::to_string(requests) +
                   " requests (threshold " + percent(config_.error_rate) + ")";
        }
    }
    const Duration after = config_.colour_stalled_after;
    if (after <= Duration(0)) {
        return {};
    }
    // Every backend taking requests holds one (an idle one might answer: the clients may all
    // be stuck on one hung backend, its peer healthy), and one has held it `after`.
    const Duration holding =
        config_.stalled_after > Duration(0) ? std::min(config_.stalled_after, after) : after;
    std::uint64_t longest = 0;
    unsigned taking = 0;
    for (const Backend& b : pool.backends) {
        const std::uint64_t waited = at(load.oldest_wait_ms, b.id);
        if (b.takes_new_requests() && !ejections_.contains(b.name)) {
            ++taking;
            if (Duration(waited) < holding) {
                return {};
            }
        }
        longest = std::max(longest, waited);
    }
    if (taking == 0 || Duration(longest) < after) {
        return {};
    }
    // Requests finished (answered, failed or timed out) since `after` ago: none, and one has
    // waited all that time, means the whole colour holds its requests. (Judged only with a
    // sample that old: not on a window just reset, nor past the window's own length.)
    const Sample* then = sample_at_or_before(now - after);
    if (then == nullptr) {
        return {};
    }
    std::uint64_t finished = 0;
    for (const Backend& b : pool.backends) {
        finished += at(samples_.back().requests, b.id) - at(then->requests, b.id);
    }
    if (finished > 0) {
        return {};
    }
    return "answered nothing for " + std::to_string(after.count()) +
           "ms; its oldest request has waited " + std::to_string(longest) + "ms";
}

}  // namespace bg
