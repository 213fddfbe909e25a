#pragma once
// FleetStore: one routing state for a fleet of bgproxy instances, kept in etcd (DESIGN.md, "A
// fleet"). Keys, under PREFIX/NAME/:
//   state               the RoutingState (JSON); its mod_revision is the state's revision
//   members/INSTANCE    what this instance applied and sees, under its lease: it disappears
//                       when the instance dies
//   ramp-driver         the instance that takes a ramp's steps, under its lease: one at a time,
//                       and when it dies another takes over
//
// As a StateStore (the Switchboard's persister thread): load reads the fleet's state, or with
// etcd away the local cache (the state file) of the last state applied; save is a transaction
// conditioned on the revision of the state the change was staged on, so of two changes staged
// on the same state one wins and the other is refused with what is there now.
//
// On the control thread: a session (lease, member key, keepalives) and one watch of the fleet's
// keys, resumed from the last revision seen after any break (a compaction: read afresh), which
// hand the Switchboard every new state and keep the membership for the fleet ack.

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/json/object.hpp>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config.hpp"
#include "etcd_client.hpp"
#include "state_store.hpp"

namespace bg {

struct FleetMember {
    std::string instance;
    std::uint64_t applied_version = 0;
    std::int64_t applied_revision = 0;
    std::string listen;
    std::string pools;  // a digest of the pool definitions: members should agree
    std::map<std::string, bool> health;
    std::string updated_at;
};

// The fleet ack of one change: complete when every live member has applied its revision.
struct FleetAck {
    bool complete = false;
    bool cut_short = false;  // this instance stopped before every member had applied it
    std::int64_t revision = 0;
    std::vector<std::string> applied;
    std::vector<std::string> lagging;  // instance (applied revision)
};

class FleetStore final : public StateStore {
  public:
    struct Events {
        std::function<void(RoutingState)> state;  // the fleet's state changed (any instance)
        std::function<void(bool reachable, const std::string& why)> reachability;
        std::function<void()> driver;  // this instance became, or stopped being, the ramp driver
        // etcd's revisions went back (a cluster replaced, or restored from a backup): the
        // states that come next are news whatever their revisions.
        std::function<void()> restarted;
    };

    FleetStore(const Config& config, std::string instance, std::string cache_path);
    ~FleetStore() override;

    // StateStore, on the persister thread.
    StoreLoad load() override;
    SaveOutcome save(const RoutingState& next, StoredVersion expected,
                     const std::atomic<bool>* given_up = nullptr) override;  // not used
    bool shared() const override { return true; }

    // Control thread from here on.
    void start(boost::asio::any_io_executor executor, Events events);
    void stop();
    // Revokes the lease, so this instance leaves the membership now rather than at its expiry.
    // Blocks for at most the request timeout; after the control loop has stopped.
    void leave();

    // What this instance serves now and what it sees of its backends: written to its member key.
    void report(const RoutingState& applied, const std::map<std::string, bool>& health);
    // Keeps the last state applied for a restart while etcd is away (cache writer thread);
    // with `unwritten`, a way back of this instance's own the fleet has not taken yet, which a
    // restart serves and writes to the fleet (an outside probe: one lost at a restart while
    // etcd was away, the fleet converged on the failing colour).
    void remember(const RoutingState& state,
                  std::optional<UnwrittenWayBack> unwritten = std::nullopt);
    // At exit: waits up to `wait` for the cache writer; false when it is stuck in the disk (it
    // cannot be joined then).
    bool finish_cache(std::chrono::milliseconds wait);
    // Reads the fleet's state again and hands it over as if it had changed.
    void refresh();
    // Calls `done` once every live member has applied `revision`, or at the apply timeout.
    void await_applied(std::int64_t revision, std::function<void(FleetAck)> done);

    bool reachable() const { return reachable_; }
    // Takes a ramp's steps: this instance holds the ramp-driver key (never while etcd is away:
    // the key may have passed to another instance meanwhile).
    bool drives_ramp() const { return ramp_driver_ == instance_ && reachable_; }
    const std::string& ramp_driver() const { return ramp_driver_; }
    const std::string& instance() const { return instance_; }
    const std::string& name() const { return fleet_.name; }
    const std::map<std::string, FleetMember>& members() const { return members_; }
    std::uint64_t conflicts() const { return conflicts_; }
    boost::json::object status_json() const;

  private:
    struct Waiter {
        std::uint64_t id = 0;  // its timer finds it by this (see await_applied)
        std::int64_t revision = 0;
        std::function<void(FleetAck)> done;
        std::unique_ptr<boost::asio::steady_timer> timer;
    };

    EtcdTxn read_back(const std::string& value, StoredVersion expected, EtcdTxn lost);
    // At stop: the caller is answered (posted) with what the members have applied so far.
    void answer_now(std::int64_t revision, std::function<void(FleetAck)> done);
    std::string state_key() const { return base_ + "state"; }
    std::string members_prefix() const { return base_ + "members/"; }
    std::string driver_key() const { return base_ + "ramp-driver"; }
    void set_driver(std::string driver);
    boost::asio::awaitable<void> run_session();
    // The member key written when it changed, and the ramp driver's key offered for when
    // nobody holds it: the first error, or empty.
    boost::asio::awaitable<std::string> keep_membership(bool& answered);
    boost::asio::awaitable<void> run_watch();
    boost::asio::awaitable<bool> read_all();
    // Whether the watch still follows the fleet: a watch through a hung member (its kernel
    // still answering TCP keepalives) or waiting for a revision a replaced cluster has not
    // reached says nothing. The state key, read where calls succeed, tells.
    boost::asio::awaitable<void> check_watch();
    boost::asio::awaitable<void> read_state();
    void take_events(const std::vector<EtcdWatchEvent>& events);
    void take_state(const EtcdKeyValue& kv);
    void take_member(const EtcdKeyValue& kv, bool deleted);
    void set_reachable(bool reachable, const std::string& why);
    FleetAck ack_of(std::int64_t revision) const;
    void check_waiters();
    Duration backoff(unsigned failures) const;
    // Runs one etcd call to completion on a private io_context (persister thread, start).
    template <class Result>
    Result run_blocking(boost::asio::awaitable<Result> call);

    FleetConfig fleet_;
    std::string base_;  // PREFIX/NAME/
    std::string instance_;
    std::string listen_;
    std::string pools_digest_;
    std::unique_ptr<FileStateStore> cache_;  // empty without a state file
    EtcdClient client_;
    boost::asio::thread_pool cache_writer_{1};
    std::atomic<std::uint64_t> cache_writes_{0};   // queued so far
    std::atomic<std::uint64_t> cache_written_{0};  // of those, done or passed over

    std::optional<boost::asio::any_io_executor> executor_;
    Events events_;
    bool stopped_ = false;
    std::shared_ptr<EtcdWatchHandle> watch_handle_;
    std::unique_ptr<boost::asio::steady_timer> session_timer_;
    std::unique_ptr<boost::asio::steady_timer> watch_timer_;
    std::int64_t lease_ = 0;
    bool reachable_ = true;
    std::string unreachable_why_;
    std::int64_t revision_seen_ = 0;
    // Since when the state key has held a revision the watch has not delivered.
    std::optional<std::chrono::steady_clock::time_point> watch_behind_since_;
    bool read_afresh_ =
        false;  // the watch was ended to read the fleet afresh (revisions restarted)
    std::map<std::string, FleetMember> members_;
    std::string ramp_driver_;  // as the watch saw the ramp-driver key; empty: nobody
    FleetMember self_;
    bool member_dirty_ = false;
    bool member_writing_ = false;
    std::list<Waiter> waiters_;
    std::uint64_t waiter_ids_ = 0;
    std::atomic<std::uint64_t> conflicts_{0};  // counted on the persister thread
};

// "blue: a=127.0.0.1:9001 ...; green: ..." hashed: members with different pools are warned of.
std::string pools_digest(const Config& config);
// The name an instance has in its fleet unless the config gives one: host name and port.
std::string default_instance_name(const Config& config);

}  // namespace bg
