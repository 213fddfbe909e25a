#include "outlier_detector.hpp"

#include <algorithm>

namespace bg {

namespace {

template <class T>
std::uint64_t at(const std::vector<T>& v, std::uint32_t id) {
    return id < v.size() ? v[id] : 0;
}

// How long ago the newest request `id` answered had begun (never_answered when none).
std::uint64_t answer_begun_ms(const DataPlaneLoad& load, std::uint32_t id) {
    return id < load.answer_begun_ms.size() ? load.answer_begun_ms[id]
                                            : DataPlaneLoad::never_answered;
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

void OutlierDetector::colour_gains_share(Colour colour) {
    if (!samples_.empty()) {
        share_gained_after_[index_of(colour)] = samples_.back();
    }
    // Its holds before are no evidence against what it serves now.
    std::erase_if(held_, [colour](const Held& h) { return h.colour == colour; });
}

Duration OutlierDetector::held_memory() const {
    return config_.slow_answer_memory > Duration(0) ? config_.slow_answer_memory : config_.window;
}

OutlierDetector::Verdicts OutlierDetector::observe(
    const RoutingTable& table, const DataPlaneLoad& load, Clock::time_point now,
    std::optional<Colour> watched, const std::map<std::string, bool>& active_healthy) {
    Verdicts verdicts;
    samples_.push_back(Sample{now, load.requests, load.failures});
    note_answer_waits(table, load, now);
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
            returned_at_[it->first] = now;
            it = ejections_.erase(it);
        } else {
            ++it;
        }
    }

    for (Colour colour : all_colours) {
        const ColourPool& pool = table.pool(colour);
        std::uint64_t colour_requests = 0;
        std::uint64_t colour_failures = 0;
        // No stall is judged where no new requests go (a colour without a share): its
        // backends answer nothing newer because they are sent nothing.
        const bool takes_traffic = pool.weight_bp > 0;
        // A colour that lost its share (a revert, a rollback, a flip back) is judged afresh when
        // it gets one again: the runs its backends left (killed, say, and reverted) are not
        // the first failures of its next canary (an outside probe: a failover onto green ejected
        // green-2 at once for "177 failures in a row" from an outage before).
        if (!takes_traffic && had_share_[index_of(colour)]) {
            for (const Backend& b : pool.backends) {
                restart_run(b);
            }
        }
        // Its rates too: a flip onto a colour that failed its previews, or was reverted for
        // errors and then mended, was reverted again at once for those errors (an outside
        // probe: "green error rate 86% over 35 requests", none of them after the flip).
        std::optional<Sample>& gained_after = share_gained_after_[index_of(colour)];
        if (takes_traffic && !had_share_[index_of(colour)] && samples_.size() >= 2 &&
            (!gained_after || gained_after->at < samples_[samples_.size() - 2].at)) {
            gained_after = samples_[samples_.size() - 2];
        } else if (!takes_traffic || (gained_after && gained_after->at <= oldest.at)) {
            gained_after.reset();
        }
        const Sample& start = gained_after ? *gained_after : oldest;
        had_share_[index_of(colour)] = takes_traffic;
        // Nor before a request has outwaited what the service's answers take (both colours':
        // a release serves the same requests): a backend holding two legitimately slow
        // requests is sent nothing new by least-request, so it answers nothing newer either (a
        // healthy one was ejected so, 1 request in 7 taking 3 s); a hung one's requests
        // outwait them all.
        const Duration ordinary = ordinary_wait(now);
        for (const Backend& b : pool.backends) {
            std::uint64_t requests = at(newest.requests, b.id) - at(start.requests, b.id);
            std::uint64_t failures = at(newest.failures, b.id) - at(start.failures, b.id);
            colour_requests += requests;
            colour_failures += failures;
            if (ejections_.contains(b.name)) {
                continue;
            }
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
                                         recovered, now};
                restart_run(b);
                continue;  // back this moment: judged on what comes next
            }
            if (auto base = since_return_.find(b.name); base != since_return_.end()) {
                const std::uint64_t new_requests =
                    at(newest.requests, b.id) - base->second.requests;
                const std::uint64_t new_failures =
                    at(newest.failures, b.id) - base->second.failures;
                requests = std::min(requests, new_requests);
                failures = std::min(failures, new_failures);
                // A success: the window's rate applies again; after an outage (panic mode sent
                // it requests that all failed), once the window begins after the return. (A
                // probe: both colours down and back, a backend was ejected 0.8 s after its
                // return for an "error rate 83% of 3572 requests", all from the outage.)
                const bool outage_in_window =
                    base->second.from_outage && start.at < base->second.at;
                if (new_requests > new_failures && !outage_in_window) {
                    since_return_.erase(base);
                }
            }
            const bool ejectable = ejection_leaves_enough(pool, b);
            const char* witness = takes_traffic ? holds_requests(pool, b, load, ordinary) : nullptr;
            const bool stalled = witness != nullptr;
            const bool consecutive = failing_in_a_row(b, ejectable);
            const double rate =
                requests > 0 ? static_cast<double>(failures) / static_cast<double>(requests) : 0;
            const bool rate_exceeded = config_.error_rate > 0 && requests >= config_.min_requests &&
                                       rate >= config_.error_rate;
            if ((!consecutive && !rate_exceeded && !stalled) || !ejectable) {
                continue;
            }
            // At least the threshold: a success may have ended the run since it got there.
            const std::uint64_t in_a_row = std::max<std::uint64_t>(
                b.failure_run ? b.failure_run->length() : 0, config_.consecutive_failures);
            unsigned& times = times_ejected_[b.name];
            // One ejection forgiven per base_ejection back in the routing, as Envoy lowers a
            // host's multiplier while it stays in: a backend ejected a few times last week is
            // not out for max_ejection at its next bad minute.
            if (auto back = returned_at_.find(b.name);
                back != returned_at_.end() && config_.base_ejection > Duration(0)) {
                const auto forgiven =
                    static_cast<unsigned>((now - back->second) / config_.base_ejection);
                times -= std::min(times, forgiven);
            }
            ++times;
            auto length = std::min<Duration>(config_.base_ejection * times, config_.max_ejection);
            ejections_[b.name] = Ejection{now + length};
            if (stalled) {
                while (!held_.empty() && now - held_.front().at > held_memory()) {
                    held_.pop_front();
                }
                held_.push_back(Held{b.name, colour, now});
            }
            since_return_.erase(b.name);
            verdicts.ejected.push_back(b.name);
            verdicts.reasons[b.name] =
                (consecutive ? std::to_string(in_a_row) + " failures in a row"
                 : stalled
                     ? "oldest request waiting " + std::to_string(at(load.oldest_wait_ms, b.id)) +
                           "ms for a response, longer than the service's answers (" +
                           std::to_string(ordinary.count()) + "ms) and its peers' waits, " + witness
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
        } else if (pool.weight_bp > 0) {
            // The stable colour serving: only a hang everywhere is judged (an error rate may
            // well be a dependency both colours share; the checks judge the rest).
            std::string why = colour_stalled(pool, load, now, false);
            if (!why.empty()) {
                verdicts.stalled_stable = colour;
                verdicts.stable_reason = std::string(to_string(colour)) + " " + why;
            }
        }
    }
    return verdicts;
}

// Never below the panic threshold: the pool keeps enough backends serving to try. Only those
// serving count (admin ready, checks passing, not ejected): with its other backends drained or
// down, an ejection would leave the colour nothing, and its traffic would go to the other
// colour whatever the weights say. Of the backends the operator left in (admin ready): one
// drained of three does not stop the other two's ejections.
bool OutlierDetector::ejection_leaves_enough(const ColourPool& pool, const Backend& b) const {
    std::size_t serving = 0;
    std::size_t ready = 0;
    for (const Backend& other : pool.backends) {
        ready += other.admin == AdminState::ready ? 1 : 0;
        // The table's health is the checks' and the ejections published; ejections_ has those
        // of this look too.
        serving +=
            &other != &b && other.takes_new_requests() && !ejections_.contains(other.name) ? 1 : 0;
    }
    return static_cast<double>(serving) >= config_.panic_threshold * static_cast<double>(ready);
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
    // A candidate hung everywhere under one client sending one request at a time holds one
    // request at a time: cut on its first backend (stalled_alone_after), then waiting on the
    // next. That wait is its evidence (an outside probe: 15 s a request and never reverted).
    return colour_stalled(pool, load, now, true);
}

void OutlierDetector::reconfigure(OutlierConfig config, const RoutingTable& table) {
    const bool new_threshold = config.consecutive_failures != config_.consecutive_failures;
    config_ = std::move(config);
    if (!new_threshold) {
        return;
    }
    // The runs only: a crossing the workers counted under the old threshold and the next look
    // has not judged yet still is (restart_run would mark it seen).
    for (Colour colour : all_colours) {
        for (const auto& b : table.pool(colour).backends) {
            if (b.failure_run) {
                b.failure_run->restart();
            }
        }
    }
}

void OutlierDetector::restart_run(const Backend& b) {
    if (b.failure_run) {
        b.failure_run->restart();
        runs_seen_[b.name] = {b.failure_run->crossings(), false};
    }
}

bool OutlierDetector::failing_in_a_row(const Backend& b, bool ejectable) {
    if (!b.failure_run || config_.consecutive_failures == 0) {
        return false;
    }
    RunSeen& seen = runs_seen_[b.name];
    const std::uint32_t crossings = b.failure_run->crossings();
    const bool crossed = crossings != seen.crossings;
    seen.crossings = crossings;
    // A crossing held back stays to be judged only while its run goes on.
    const bool held = seen.pending && b.failure_run->length() >= config_.consecutive_failures;
    seen.pending = (crossed || held) && !ejectable;
    return crossed || held;
}

// Whether `b` holds its requests without answering (see OutlierConfig::stalled_after).
const char* OutlierDetector::holds_requests(const ColourPool& pool, const Backend& b,
                                            const DataPlaneLoad& load, Duration ordinary) const {
    const Duration waited(at(load.oldest_wait_ms, b.id));
    const auto waited_ms = static_cast<std::uint64_t>(waited.count());
    if (config_.stalled_after <= Duration(0) || waited < config_.stalled_after ||
        waited <= ordinary) {
        return nullptr;
    }
    // A peer that answers: it answered a request begun after the stalled one (a pool slow as a
    // whole answers nothing that recent; a hung backend back from an ejection answered nothing
    // begun since it hung). No margin applies: the clients may all be stuck on the hung one
    // within half a second. And the stalled request has outwaited every peer's oldest: one
    // that has not is no sign of a hang (the colour is slow as a whole, e.g. before any of its
    // slow answers is remembered), while a hung backend's waits outgrow a slow peer's.
    bool peer_answers = false;
    bool peer_in_routing = false;
    Duration peers_wait(0);
    for (const Backend& peer : pool.backends) {
        if (peer.id == b.id || ejections_.contains(peer.name)) {
            continue;
        }
        peer_in_routing = true;
        peers_wait = std::max(peers_wait, Duration(at(load.oldest_wait_ms, peer.id)));
        peer_answers = peer_answers || answer_begun_ms(load, peer.id) < waited_ms;
    }
    // Or, past stalled_alone_after, peers with nothing waiting at all: no newer request reached
    // them because the clients are stuck on this one (one client sending one request at a
    // time waited upstream_try, 10 s, on every other request, and the backend went only after
    // five timeouts in a row, 50 s in). A peer that holds requests too is no such witness.
    const bool idle_peers = !peer_answers && peer_in_routing && peers_wait == Duration(0) &&
                            waited >= config_.stalled_alone_after;
    // And `b` answered none of the requests begun a good while (half of stalled_after) after
    // its oldest: a backend that answers what it is sent is slow on some endpoint, not
    // holding. (Requests read as the backend hung may still be answered.)
    const auto settle = static_cast<std::uint64_t>(config_.stalled_after.count() / 2);
    const std::uint64_t begun = answer_begun_ms(load, b.id);
    const bool answers_newer = begun != DataPlaneLoad::never_answered && begun + settle < waited_ms;
    // Two held, or one for stalled_alone_after: least-request sends the fast requests to the
    // peer while one slow request is in flight, so one alone is weak evidence (a healthy
    // backend serving a 3 s report was ejected and the report run twice).
    const bool held = at(load.stalled_waits, b.id) >= 2 || waited >= config_.stalled_alone_after;
    if (!(peer_answers || idle_peers) || !held || waited <= peers_wait || answers_newer) {
        return nullptr;
    }
    return peer_answers ? "while a peer answers" : "while its peers have nothing waiting";
}

void OutlierDetector::note_answer_waits(const RoutingTable& table, const DataPlaneLoad& load,
                                        Clock::time_point now) {
    const bool remembered =
        std::any_of(answered_in_.begin(), answered_in_.end(), [&](Clock::time_point t) {
            return t != Clock::time_point{} && now - t <= config_.slow_answer_memory;
        });
    if (!remembered) {
        answering_since_ = Clock::time_point{};  // learnt afresh
    }
    for (Colour colour : all_colours) {
        for (const Backend& b : table.pool(colour).backends) {
            if (b.id >= load.answer_waits.size()) {
                continue;
            }
            const AnswerWaits& current = load.answer_waits[b.id];
            const AnswerWaits before =
                b.id < last_answer_waits_.size() ? last_answer_waits_[b.id] : AnswerWaits{};
            for (std::size_t bucket = 0; bucket < AnswerWaits::buckets; ++bucket) {
                if (current.counts[bucket] > before.counts[bucket]) {
                    answered_in_[bucket] = now;
                    if (answering_since_ == Clock::time_point{}) {
                        answering_since_ = now;
                    }
                }
            }
        }
    }
    last_answer_waits_ = load.answer_waits;
}

Duration OutlierDetector::ordinary_wait(Clock::time_point now) const {
    if (config_.slow_answer_memory <= Duration(0)) {
        return Duration(0);  // off: stalled_after and the peers' waits alone
    }
    // Until the service has answered for stalled_alone_after, a slow request begun at its
    // start may not have been answered yet: its answers so far are the quick ones.
    const Duration learning = answering_since_ == Clock::time_point{} ||
                                      now - answering_since_ < config_.stalled_alone_after
                                  ? config_.stalled_alone_after
                                  : Duration(0);
    // At most stalled_alone_after, as a request alone is held to: one 9 s answer (its bucket
    // 16.4 s, past upstream_try) left hung backends to five timeouts in a row for the memory's
    // ten minutes, and 7 s preview answers on the idle colour slowed the live one's detection
    // to 8 s (an outside probe). A service whose requests legitimately wait longer raises
    // stalled_alone_after.
    for (std::size_t bucket = AnswerWaits::buckets; bucket-- > 0;) {
        if (answered_in_[bucket] != Clock::time_point{} &&
            now - answered_in_[bucket] <= config_.slow_answer_memory) {
            return std::max(
                learning, std::min(AnswerWaits::upper_bound(bucket), config_.stalled_alone_after));
        }
    }
    return learning;
}

std::string OutlierDetector::colour_stalled(const ColourPool& pool, const DataPlaneLoad& load,
                                            Clock::time_point now, bool after_cuts) const {
    const Duration after = config_.colour_stalled_after;
    if (after <= Duration(0)) {
        return {};
    }
    // The stable colour: moving its traffic onto the other colour (maybe an unvetted release)
    // takes twice as many stalled requests as it has backends in the routing (ejected ones
    // too: an ejection for one slow request must not halve the bar), one at least on each
    // taking requests. In total, not two on each: least-request sends what comes after the
    // first backend hangs to its peers (four clients stuck one and three were not failed over).
    const bool stable = !after_cuts;
    std::uint64_t stalled = 0;
    unsigned members = 0;
    const Duration memory = held_memory();
    const auto recent = [&](const Held& h) {
        return now - h.at <= memory &&
               std::any_of(pool.backends.begin(), pool.backends.end(),
                           [&h](const Backend& b) { return b.name == h.backend; });
    };
    after_cuts = after_cuts && std::count_if(held_.begin(), held_.end(), recent) >= 2;
    const auto held_recently = [&](const Backend& b) {
        return std::any_of(held_.begin(), held_.end(), [&](const Held& h) {
            return h.backend == b.name && now - h.at <= memory;
        });
    };
    // Every backend taking requests holds one (an idle one might answer: the clients may all
    // be stuck on one hung backend, its peer healthy), and one has held it `after`.
    const Duration holding =
        config_.stalled_after > Duration(0) ? std::min(config_.stalled_after, after) : after;
    std::uint64_t longest = 0;
    unsigned taking = 0;
    for (const Backend& b : pool.backends) {
        // Tries after a cut count on the stable colour too (against twice as many as its
        // backends): a hung colour's requests cut from a backend ejected while its peer still
        // answered wait on the peer.
        const std::uint64_t waited = std::max(
            at(load.oldest_wait_ms, b.id),
            after_cuts || stable ? at(load.oldest_wait_after_cut_ms, b.id) : std::uint64_t{0});
        members += b.takes_new_requests() ? 1 : 0;
        if (b.takes_new_requests() && !ejections_.contains(b.name)) {
            ++taking;
            if (Duration(waited) < holding && !(after_cuts && held_recently(b))) {
                return {};
            }
            const std::uint64_t backend_stalled =
                at(load.stalled_waits, b.id) + at(load.stalled_waits_after_cut, b.id);
            if (stable && backend_stalled == 0) {
                return {};
            }
            stalled += backend_stalled;
        }
        longest = std::max(longest, waited);
    }
    if (taking == 0 || Duration(longest) < after || (stable && stalled < 2 * members)) {
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
