#pragma once
// OutlierDetector: passive failure detection from live traffic (Envoy's outlier detection).
// Fed periodic snapshots of the workers' cumulative per-backend counters; decides which
// backends to eject, which to return, and whether the colour taking new traffic fails on its
// error rate. Pure bookkeeping: no timers, no I/O, so it is tested with made-up snapshots.

#include <array>
#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "config.hpp"
#include "routing_table.hpp"
#include "table_publisher.hpp"

namespace bg {

class OutlierDetector {
  public:
    using Clock = std::chrono::steady_clock;

    struct Verdicts {
        std::vector<std::string> ejected;   // newly ejected, with why in `reasons`
        std::vector<std::string> returned;  // ejection over and active checks passing
        std::map<std::string, std::string> reasons;
        // The watched colour's error rate is too high, or it answers nothing.
        std::optional<Colour> failed_colour;
        std::string colour_reason;
        // A colour taking traffic that is not watched (the stable one) answers nothing.
        std::optional<Colour> stalled_stable;
        std::string stable_reason;
        bool empty() const {
            return ejected.empty() && returned.empty() && !failed_colour && !stalled_stable;
        }
    };

    explicit OutlierDetector(OutlierConfig config) : config_(std::move(config)) {}
    // A new config. With a new consecutive_failures, every backend of `table` starts its run
    // afresh: a run already past a lowered threshold would never reach it.
    void reconfigure(OutlierConfig config, const RoutingTable& table);

    // One sample. `watched` is the colour whose error rate can fail it (the candidate taking
    // new traffic), if any; `active_healthy` gates the return of an ejected backend.
    Verdicts observe(const RoutingTable& table, const DataPlaneLoad& load, Clock::time_point now,
                     std::optional<Colour> watched,
                     const std::map<std::string, bool>& active_healthy);

    bool ejected(const std::string& backend) const { return ejections_.contains(backend); }
    const std::map<std::string, bool> ejected_map() const;
    // Forget the colour's history, e.g. after a revert, so old errors do not count twice.
    void reset_window();
    // A change gives `colour` a share it did not have: its rates count from the last look.
    // (Each look also sees a gain itself, but not one undone and redone between two looks:
    // `rollback; set` 9 ms apart, as an outside probe sent them.)
    void colour_gains_share(Colour colour);

  private:
    struct Sample {
        Clock::time_point at;
        std::vector<std::uint64_t> requests;
        std::vector<std::uint64_t> failures;
    };
    struct Ejection {
        Clock::time_point until;
    };
    // A backend's cumulative counters when it returned: no request reached it while it was
    // out, so the failures that got it ejected are still in the window's rate. It is judged
    // on what came after (Envoy resets a host's counters when it unejects it), or on the
    // whole window once a success shows it answers. (Its run of failures restarts then.)
    // Back from its checks failing (an outage), its failures while down are no evidence
    // either, success or not: until the window no longer reaches back to its return.
    struct SinceReturn {
        std::uint64_t requests = 0;
        std::uint64_t failures = 0;
        bool from_outage = false;
        Clock::time_point at{};
    };

    // The window's last sample taken at or before `t`, if any.
    const Sample* sample_at_or_before(Clock::time_point t) const;
    // What the detector has seen of a backend's runs of failures: how many reached the
    // threshold, and whether the last one is still to be judged (the panic threshold held the
    // backend in the pool while it went on failing).
    struct RunSeen {
        std::uint32_t crossings = 0;
        bool pending = false;
    };
    // Whether `b` is to be ejected for failures in a row: a run of it reached
    // consecutive_failures since the last look (even if a success has ended it since), or one
    // did before and still stands at least that long. An old run standing still does not
    // eject: no new crossing. `ejectable`: the panic threshold allows it now.
    bool failing_in_a_row(const Backend& b, bool ejectable);
    // Whether ejecting `b` leaves `pool` at least panic_threshold of its admin-ready backends
    // serving (admin ready, checks passing, not ejected).
    bool ejection_leaves_enough(const ColourPool& pool, const Backend& b) const;
    // `b`'s run of failures starts afresh (back in the routing, or its colour without a share
    // any more), and what it reached before is not judged.
    void restart_run(const Backend& b);
    // Notes which answer-wait buckets each colour's backends answered in since the last load.
    void note_answer_waits(const RoutingTable& table, const DataPlaneLoad& load,
                           Clock::time_point now);
    // Whether `b` holds its requests without answering: its oldest has outwaited `ordinary`
    // (what the service's answers take), stalled_after and its peers' waits, and a peer
    // answers what it is sent while `b` does not (or, past stalled_alone_after, its peers have
    // nothing waiting). Its witness, for the reason ("while a peer answers"...), or nullptr.
    const char* holds_requests(const ColourPool& pool, const Backend& b, const DataPlaneLoad& load,
                               Duration ordinary) const;
    // The longest wait an answer (of either colour) took within slow_answer_memory, rounded up
    // to its bucket; at least stalled_alone_after while answers have come for less than that.
    Duration ordinary_wait(Clock::time_point now) const;
    // Why the colour answers nothing, its requests waiting, or empty. `after_cuts`: once two
    // of the colour's tries were cut for holding (held_), tries after a cut count too, and a
    // backend that held one is no idle witness: one request slow everywhere is cut once (its
    // answer then teaches ordinary_wait), a hung colour's every request is. Evidence enough to
    // take traffic back from a candidate, not to move it off the stable colour: there (not
    // `after_cuts`) its tries after a cut count, but it must hold two stalled requests for
    // each of its backends in the routing, ejected or not, one at least on each taking
    // requests, as a backend's own stall asks two, not one (two slow reports on a quiet proxy
    // failed it over: an outside probe).
    std::string colour_stalled(const ColourPool& pool, const DataPlaneLoad& load,
                               Clock::time_point now, bool after_cuts) const;
    // Why the watched colour fails as a whole (its error rate, or a stall), or empty.
    std::string colour_failure(const ColourPool& pool, std::uint64_t requests,
                               std::uint64_t failures, const DataPlaneLoad& load,
                               Clock::time_point now) const;

    OutlierConfig config_;
    std::deque<Sample> samples_;
    std::map<std::string, Ejection> ejections_;
    // Ejections for holding requests (each cut the try it held), oldest first, within
    // held_memory(): a candidate's waits after cuts count once two came (see colour_stalled).
    struct Held {
        std::string backend;
        Colour colour;
        Clock::time_point at;
    };
    std::deque<Held> held_;
    Duration held_memory() const;  // slow_answer_memory, or the window without one
    std::map<std::string, unsigned> times_ejected_;
    std::map<std::string, Clock::time_point> returned_at_;  // the last return from an ejection
    std::map<std::string, SinceReturn> since_return_;
    std::map<std::string, RunSeen> runs_seen_;
    std::array<bool, 2> had_share_{};  // by colour, at the last look
    // By colour: the last look before it gained its share, while that is inside the window.
    // Its rates count from there (what came before, previews of a broken build, errors of a
    // share reverted, is not its next canary's).
    std::array<std::optional<Sample>, 2> share_gained_after_{};
    std::set<std::string> checks_failed_;  // backends the active checks had down at the last sample
    std::vector<AnswerWaits> last_answer_waits_;  // as of the last load, by backend id
    // When a try (of either colour) was last answered in each wait bucket (epoch: never).
    std::array<Clock::time_point, AnswerWaits::buckets> answered_in_{};
    // Since when tries have been answered, the memory unbroken (epoch: none remembered).
    Clock::time_point answering_since_{};
};

}  // namespace bg
