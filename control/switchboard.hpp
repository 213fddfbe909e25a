#pragma once
// Switchboard: the only writer of routing state. Control thread only.
//
// Every change goes the same way: stage the next state (change_staging), persist it, publish
// the new table to every worker and wait until all have it, audit, reply. Changes are
// serialized: one is in that pipeline at a time, the others wait their turn. Nothing is
// half-applied. What does not change state never waits in that line: status, history, help
// and watch are answered at once, and the [[gate]] smoke checks of a flip, set or ramp run
// beside it, so a hanging gate holds only its own command (a rollback cancels it).

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/json/object.hpp>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <variant>

#include "access.hpp"
#include "audit_log.hpp"
#include "canary_analysis.hpp"
#include "change_staging.hpp"
#include "colour_tally.hpp"
#include "command.hpp"
#include "config.hpp"
#include "outlier_detector.hpp"
#include "rollout_guard.hpp"
#include "routing_state.hpp"
#include "state_store.hpp"
#include "switch_kind.hpp"
#include "table_publisher.hpp"

namespace bg {

class FleetStore;

class Switchboard {
  public:
    using Reply = std::function<void(const boost::json::object&)>;
    using Watcher = std::function<void(const boost::json::object&)>;

    Switchboard(boost::asio::any_io_executor executor, std::shared_ptr<const Config> config,
                std::string config_path, StateStore& store, AuditLog& audit,
                ConfigOverrides flags = {});
    ~Switchboard();

    // Loads the stored state, or starts from the config's when nothing is stored (and stores
    // it). False, with a message, when the stored state cannot be read: never a silent reset.
    bool load(std::string& error);
    RoutingTablePtr table() const { return table_; }
    const RoutingState& state() const { return state_; }
    const std::shared_ptr<const Config>& config() const { return config_; }

    // Connects the data plane and resumes a ramp that was in progress at the last stop.
    void attach(TablePublisher& publisher);
    // In a fleet (the store is `fleet`): follows the fleet's state, reports what this instance
    // applied, and answers each change once every member applied it (switchboard_fleet.cpp).
    void attach_fleet(FleetStore& fleet);
    const FleetStore* fleet() const { return fleet_; }

    // Runs one protocol line for the caller; `reply` gets the one-line JSON answer. Returns the
    // command's id (the caller's --id=ID, or one given here), by which it can be cancelled.
    std::string execute(const Caller& caller, std::string line, Reply reply);
    // The caller gave up (closed its connection): a command still waiting for its turn or on
    // its gate is cancelled, audited as such; one already applying completes, audited.
    void cancel(const Caller& caller, const std::string& id, const std::string& why);
    // SIGHUP: a reload by the process itself.
    void reload_from_signal();
    // An active health check transition (HealthChecker's callback). The rollout guard may
    // revert or fail over in the same step.
    void on_health(const std::string& backend, bool healthy, const std::string& why);
    // Told of every config the Switchboard adopts (reload), e.g. to re-plan health checks, with
    // the backends it added that stay out of routing until their first check passes.
    using ConfigListener =
        std::function<void(const Config&, const std::set<std::string>& held_for_first_check)>;
    void on_config_change(ConfigListener listener) { config_listener_ = std::move(listener); }
    bool panic() const { return table_->panic(); }
    // The state served is the state on disk (a safety action may apply without it).
    bool durable() const { return !store_unknown_ && durable_.version == state_.version; }
    // At exit, once the control loop has stopped: writes the state served if the store does
    // not hold it, waiting for the persister up to `deadline`. False when a save is still in
    // the store then (a stalled disk): the persister cannot be joined.
    bool finish_saves(std::chrono::steady_clock::time_point deadline);
    // After finish_saves returned true: none of this Switchboard's threads posts to the control
    // loop from here on (a config read still stuck in a file drops its result), so what is
    // pending on the loop may be destroyed from this thread.
    void stop_posting();

    // Counts for the metrics endpoint. Control thread only.
    struct Counts {
        std::map<SwitchKind, std::uint64_t> switches;
        std::uint64_t reloads_applied = 0;
        std::uint64_t reloads_refused = 0;
        std::uint64_t ejections = 0;
        double last_switch_unix = 0;
        std::uint64_t fleet_acks_complete = 0;
        std::uint64_t fleet_acks_partial = 0;
        std::uint64_t fleet_states_applied = 0;  // states other instances committed
    };
    const Counts& counts() const { return counts_; }
    const AuditLog& audit() const { return audit_; }
    bool ejected(const std::string& backend) const { return outlier_.ejected(backend); }
    // When the tunnels (WebSockets...) of a colour that lost its share will be closed, while
    // that is still ahead.
    std::optional<std::chrono::system_clock::time_point> tunnel_deadline(Colour colour) const;
    // The canary analysis's latest verdict on the candidate colour.
    const CanaryVerdict& canary() const { return canary_.verdict(); }

    std::uint64_t subscribe(Watcher watcher);
    void unsubscribe(std::uint64_t id);

  private:
    // Who a job is for and whom it answers; the same for every kind of job.
    struct Origin {
        Caller caller;
        std::string line;  // as audited
        Reply reply;
        std::string id;
        std::string by;  // the state's changed_by: the caller, "ramp", "rollout guard"...
        bool internal = false;
    };
    // The jobs, typed. An operator's command is parsed and role-checked before it queues.
    struct OperatorCommand {
        Command command;
    };
    // How a gate reached a colour's backends, and what it asked them.
    struct GateTarget {
        std::vector<std::pair<std::string, std::string>> backends;  // names, resolved addresses
        std::optional<BackendTlsSettings> tls;
        bool send_proxy_protocol = false;
        std::vector<SmokeCheck> checks;
        bool operator==(const GateTarget&) const = default;
    };
    // What a gate checked: a change to this routing state, onto this target.
    struct GateBasis {
        RoutingState state;
        Colour gaining = Colour::green;
        GateTarget target;
    };
    struct GatePassed {  // a gated command whose gate passed, back in line
        Command command;
        std::shared_ptr<const GateBasis> basis;
    };
    // Where a ramp stands: its timer runs on across changes that leave it there (a reload, a
    // drain), and a step armed for another course is stale.
    struct RampCourse {
        RampState ramp;
        std::uint32_t weight_bp = 0;  // of the ramp's colour
        bool operator==(const RampCourse&) const = default;
    };
    struct RampStep {
        RampCourse course;        // the course its timer was armed for
        std::uint64_t armed = 0;  // and which arming (the same course may come back)
    };
    struct HealthChange {
        std::string backend;
        bool healthy = true;
        std::string why;
    };
    struct OutlierFindings {
        OutlierDetector::Verdicts verdicts;
    };
    struct CanaryFailure {
        CanaryVerdict verdict;
    };
    struct FailbackDue {};
    struct GuardCheck {  // after a change not the guard's own: the guard judges what it made
        // After a fleet peer's state: a candidate this instance sees failing is reverted, but
        // no failover. Two instances that disagree on the stable colour's health would
        // otherwise undo each other's failover and failback every failback_hold.
        bool revert_only = false;
    };
    struct ConfigRead {  // a reload whose files were read (off the control thread), back in line
        Command command;
        std::shared_ptr<const ConfigResult> loaded;
        std::uint64_t seq = 0;  // which read
    };
    struct PersistRetry {};  // the state served is not on disk yet: try again
    struct FleetState {      // the fleet's state, as the fleet store saw it change
        RoutingState state;
    };
    struct StoreRestarted {};  // the fleet store's revisions went back: see handle_store_restarted
    using Work = std::variant<OperatorCommand, GatePassed, RampStep, HealthChange, OutlierFindings,
                              CanaryFailure, FailbackDue, GuardCheck, PersistRetry, FleetState,
                              StoreRestarted, ConfigRead>;
    struct Job {
        Origin origin;
        Work work;
    };
    struct Staged {
        RoutingState next;
        std::shared_ptr<const Config> config;  // a reload's new config, else the current one
        std::string note;                      // said in the reply (reconciliation, ramp...)
        SwitchKind kind = SwitchKind::set;
        bool local = false;            // --local: this instance of the fleet only
        std::set<std::string> held{};  // a reload's new backends, out until a first check passes
    };
    // A change being published and saved at once; settled when both are done.
    struct Committing {
        Origin origin;
        Staged staged;
        RoutingTablePtr table;
        bool published = false;
        bool saved = false;
        bool save_ok = false;
        std::string save_error;
    };
    struct PendingGate {
        Origin origin;
        Command command;
        std::uint64_t run = 0;  // which gate run answers it (ids are the client's, reusable)
    };

    Origin internal_origin(std::string line, std::string by) const;
    void enqueue(Job job);
    void run_next();
    void run(Job job);
    // Answers the job's caller and lets the next job run.
    void finish(Origin& origin, const boost::json::object& reply);
    // Answers a command that never entered the line (read verbs, refusals at parse).
    void answer_read(Origin origin, const Command& cmd);
    void refuse(Origin& origin, const std::string& error);
    // Not applied here, but the store may have it (its answer was lost): it may still apply.
    void uncertain(Origin& origin, const std::string& error);
    bool audits_refusal(const Caller& caller);
    void run_command(Origin origin, const Command& cmd);
    // `loaded`: a reload's config, read by read_config.
    // `read`: its number, for a reload.
    void run_staged(Origin origin, const Command& cmd, const ConfigResult* loaded,
                    std::uint64_t read = 0);
    // A reload reads its files beside the line, so a stalled mount holds only the reload.
    struct ConfigReads;
    struct PendingRead {
        Origin origin;
        Command command;
        std::unique_ptr<boost::asio::steady_timer> timer;  // control.disk_timeout
        std::chrono::steady_clock::time_point started;
        bool cancelled = false;  // its caller left: answered, the read goes on
    };
    void read_config(Origin origin, const Command& cmd);
    void count_refused_reload(const Command& cmd);
    void config_read_timed_out(std::uint64_t seq);
    void config_read_returned(std::uint64_t seq, std::shared_ptr<const ConfigResult> loaded);
    void start_gate(Origin origin, const Command& cmd, Colour gaining);
    // What a gate onto colour c would check now, as configured.
    GateTarget gate_target(Colour c) const;
    void gate_done(const std::string& id, std::uint64_t run, std::shared_ptr<const GateBasis> basis,
                   const std::string& failure);
    void run_gate_passed(Origin origin, const GatePassed& passed);
    // Cancels every command waiting on its gate: a way back was just taken.
    void cancel_gates(SwitchKind because);
    // A command's staged change (reload reads the file), or an error message.
    std::string stage(const Command& cmd, Staged& out, const ConfigResult* loaded = nullptr);
    std::string stage_reload(const ConfigResult* loaded, Staged& out);
    // Refuses a change that gives traffic to a colour the guard would take it from at once;
    // notes what the guard will do after any other.
    std::string judge_by_guard(const Command& cmd, Staged& staged) const;
    // After the gate: answer a dry run, skip a no-op, or commit.
    void proceed(Origin origin, const Command& cmd, Staged staged);
    void commit(Origin origin, Staged staged);
    void settle(Committing& change);
    void save_async(RoutingState next, StoredVersion expected,
                    std::function<void(SaveOutcome)> done);
    struct PendingSave;
    void give_up_save(PendingSave& save);
    // A save given up on returned at last (`written`: it ran; else it was skipped).
    void late_save(const SaveOutcome& saved, bool written);
    std::string stalled_save_error() const;
    // In a fleet: committed to the fleet first, then published (switchboard_fleet.cpp).
    void commit_to_fleet(Origin origin, Staged staged);
    using FleetChange = std::pair<Origin, Staged>;
    void fleet_saved(const std::shared_ptr<FleetChange>& change, SaveOutcome saved);
    void publish_way_back_now(const Staged& staged);
    void keep_way_back(Staged& staged, SaveOutcome& saved);
    void handle_fleet_state(Origin origin, const FleetState& fleet_state);
    bool restage_way_back(Origin& origin, const RoutingState& incoming);
    // etcd's revisions started again (a cluster replaced or restored): the states it holds are
    // news whatever their revisions, and saves expect what it holds.
    void handle_store_restarted(Origin origin);
    // Answers an applied change: at once, or in a fleet once every member applied it.
    void answer_applied(Origin& origin, boost::json::object reply);
    void report_to_fleet();
    bool store_reachable() const;  // true outside a fleet
    bool drives_ramp() const;      // true outside a fleet
    // The fleet store is back: write a revert made meanwhile, or drop --local changes.
    void fleet_reachable_again();
    // A state the fleet refused because another was stored first: go on from that one.
    void persist_conflict(Origin origin, RoutingState current);
    // Queues the fleet's state (as the store saw it, or as a conflict returned it).
    void take_fleet_state(RoutingState state);
    void publish(RoutingTablePtr table, std::shared_ptr<const Config> config,
                 std::function<void()> done);
    void handle_persist_retry(Origin origin);
    void applied(Origin& origin, Staged staged, RoutingTablePtr table);
    // What the change to `next` makes new for the analyses, judged on what comes after.
    void judge_afresh(const RoutingState& next, const RoutingTable& table);
    // When each colour's tunnels close, after the change to `next` that `table` carries.
    void follow_tunnel_deadlines(const RoutingState& next, const RoutingTable& table);
    void handle_ramp_step(Origin origin, const RampStep& step);
    void handle_health(Origin origin, const HealthChange& change);
    void handle_outlier(Origin origin, const OutlierFindings& findings);
    void handle_canary(Origin origin, const CanaryFailure& failure);
    void handle_failback(Origin origin);
    void handle_guard_check(Origin origin, const GuardCheck& check);
    // What the rollout guard would do at once to a staged state (the health it sees now).
    GuardDecision guard_after(const RoutingState& next) const;
    void consider_failback();
    void arm_persist_retry();
    std::array<ColourHealth, 2> guard_health(const RoutingState& state) const;
    void apply_guard(Origin origin, GuardDecision decision);  // persist, publish, audit a revert
    void publish_health(Origin origin);                       // a new table, the same state
    void arm_sample_timer();
    void sample();
    void observe_outliers(const DataPlaneLoad& load);
    void observe_canary(const DataPlaneLoad& load);
    std::optional<Colour> watched_colour() const;
    // Active health and passive ejection together: what the table says of each backend.
    // `held`: a reload's new backends, down in the table it is about to build.
    std::map<std::string, bool> effective_health(const std::set<std::string>& held = {}) const;
    // A reload's new backends: the held ones down until their first check, the others (and a
    // known name at a new address) without the old address's verdict.
    void adopt_new_backends(const Config& before, const Config& after,
                            const std::set<std::string>& held);
    void reply_status(Origin origin);
    boost::json::object status_colours(const DataPlaneLoad& load) const;
    boost::json::object status_tunnels(const DataPlaneLoad& load) const;
    boost::json::object reply_history(const Command& cmd) const;
    boost::json::object audit_record(const Origin& origin, const char* result,
                                     const RoutingState* after, const std::string& error) const;
    void broadcast(const boost::json::object& event);
    void arm_ramp_timer();
    void ramp_tick(RampCourse course, std::uint64_t armed);
    std::optional<RampCourse> ramp_course() const;

    boost::asio::any_io_executor executor_;
    std::shared_ptr<const Config> config_;
    std::string config_path_;
    ConfigOverrides flags_;  // given at start: they override the file at every reload too
    StateStore& store_;
    AuditLog& audit_;
    TablePublisher* publisher_ = nullptr;
    RoutingState state_;
    RoutingTablePtr table_;
    BackendIds ids_;
    std::map<std::string, bool> health_;                  // by backend name, from active checks
    std::map<std::string, std::string> down_because_;     // why the checks took a backend down
    std::map<std::string, std::string> ejected_because_;  // why outlier detection took it out
    std::set<std::string> awaiting_first_check_;  // held by a reload: out of the guard's count
    bool republish_health_ = false;  // a reload changed verdicts after its table was built
    std::chrono::steady_clock::time_point
        refusals_since_{};  // lesser callers' refusals, per second
    std::uint32_t refusals_audited_ = 0;
    std::uint64_t refusals_unaudited_ = 0;
    ConfigListener config_listener_;
    std::deque<Job> queue_;
    bool busy_ = false;
    std::map<std::string, PendingGate> gates_;  // by command id: gated commands, gate running
    std::uint64_t gate_runs_ = 0;
    std::uint64_t next_id_ = 1;  // for commands that came without --id
    boost::asio::steady_timer ramp_timer_;
    std::optional<RampCourse> ramp_armed_;    // the course ramp_timer_ runs for
    std::uint64_t ramp_armings_ = 0;          // timers armed so far: a step's own is the last
    boost::asio::steady_timer sample_timer_;  // outlier detection and canary analysis
    bool sampling_ = false;                   // a gather is in flight
    bool sample_again_ = false;               // and another was asked for meanwhile
    boost::asio::steady_timer failback_timer_;
    bool failback_armed_ = false;
    // When the failover in force began, if it began as both colours left a panic (the other
    // colour's checks passed first): its failback waits no longer than it had lasted.
    std::optional<std::chrono::steady_clock::time_point> panic_failover_began_;
    boost::asio::steady_timer persist_timer_;
    bool persist_retry_armed_ = false;
    boost::asio::thread_pool persister_;  // one thread: saves, in order
    StoredVersion durable_;               // the version the store holds
    // Outside a fleet: saves given up on and not yet returned, since when the oldest of them
    // ran, and whether what the store holds is known (not after a save given up on, until a
    // later one returns in time).
    std::uint64_t overdue_saves_ = 0;
    std::atomic<int> saves_running_{0};  // in the store now, on the persister
    std::chrono::steady_clock::time_point stalled_since_{};
    bool store_unknown_ = false;
    FleetStore* fleet_ = nullptr;
    // The state served differs from the fleet's by --local changes only: when the store is
    // back it is replaced by the fleet's, not written there (a revert is written).
    bool local_only_ = false;
    // A revert applied while the store was away, not yet written there, under --local changes
    // made since: what the persist retry writes (set only while local_only_).
    std::optional<RoutingState> fleet_bound_;
    std::string persist_error_;  // why the last save failed, while not durable
    // In a fleet, a rollback applied here while the store was away and not yet written: staged
    // again on the fleet's state if another instance's change wins meanwhile.
    bool rollback_pending_ = false;
    OutlierDetector outlier_;
    CanaryAnalysis canary_;
    ColourTally tally_;                           // what canary_ is given, sample by sample
    std::shared_ptr<ConfigReads> config_reads_;   // shared with the reader threads
    std::map<std::uint64_t, PendingRead> reads_;  // reloads reading their files, by sequence
    // Reads given up on that have not returned, and when each began.
    std::map<std::uint64_t, std::chrono::steady_clock::time_point> stuck_reads_;
    std::uint64_t reads_started_ = 0;
    std::uint64_t newest_read_staged_ = 0;  // reads return in any order: the last begun wins
    std::map<std::uint64_t, Watcher> watchers_;
    std::array<std::optional<std::chrono::system_clock::time_point>, 2> tunnel_deadline_{};
    Counts counts_;
    std::uint64_t next_watcher_ = 1;
};

}  // namespace bg
