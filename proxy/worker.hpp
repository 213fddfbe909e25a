#pragma once
// Worker: one thread, one io_context, its own SO_REUSEPORT listeners, upstream pools, balancer
// and routing-table slot. Everything a request touches lives here, so the hot path takes no lock.

#include <poll.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <boost/asio/steady_timer.hpp>
#include <boost/intrusive/list.hpp>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "access_log.hpp"
#include "answer_waits.hpp"
#include "balancer.hpp"
#include "bulk_read_budget.hpp"
#include "coarse_clock.hpp"
#include "config.hpp"
#include "connection_limits.hpp"
#include "descriptor_limit.hpp"
#include "exchange_pool.hpp"
#include "failed_upstreams.hpp"
#include "heap_trim.hpp"
#include "io_types.hpp"
#include "reactor_reserve.hpp"
#include "retry_state.hpp"
#include "routing_table.hpp"
#include "session_handle.hpp"
#include "splice_pipes.hpp"
#include "table_publisher.hpp"
#include "table_slot.hpp"
#include "traffic_counters.hpp"
#include "try_outcome.hpp"
#include "upstream_pool.hpp"
#include "worker_stats.hpp"

namespace bg {

class ParkedClients;

class Worker {
  public:
    Worker(unsigned index, std::shared_ptr<const Config> config, TableSlot& slot,
           ConnectionLimits& limits);
    ~Worker();
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    // Opens this worker's listening sockets; false (with a message) if one cannot be bound.
    // `ports` carries the port each listener got, so later workers share a port-0 listener's.
    bool bind(std::vector<std::uint16_t>& ports, std::string& error);
    void start();
    // Any thread: the new table (and config) is used by every request that starts after it
    // arrives; `applied` is called on this worker's thread once it is in place.
    void apply(RoutingTablePtr table, std::shared_ptr<const Config> config,
               std::function<void()> applied);
    // Any thread: `done` is called on this worker's thread with its in-flight counts.
    void report_load(std::function<void(DataPlaneLoad)> done);
    // Any thread: stop accepting, finish in-flight requests, close after the grace period.
    void begin_shutdown();
    void join();

    // Before start(): where this worker's access log lines go (nullptr: off).
    void set_access_log(AccessLog* log) { access_log_ = log; }
    // Called (on this worker's thread) when a backend's run of failed tries reaches
    // [outlier] consecutive_failures. Set before start().
    void on_failure_run(std::function<void()> alarm) { failure_run_alarm_ = std::move(alarm); }
    // Worker thread only.
    void log_access(std::string&& line) {
        if (access_log_ != nullptr) {
            access_log_->submit(index_, std::move(line));
        }
    }
    bool logs_access() const { return access_log_ != nullptr; }
    boost::asio::io_context& io() { return io_; }
    // Before a socket is handed to asio: its reactor record exists ahead of need
    // (ReactorReserve), for every connection in flight with its backend's, and the pool.
    void reserve_socket_records();
    // The routing table for a request starting now: the slot's latest, taken when it changed.
    const RoutingTablePtr& table() {
        if (const std::uint64_t v = slot_.version(); v != seen_version_) {
            seen_version_ = v;
            table_ = slot_.load();
        }
        return table_;
    }
    const std::shared_ptr<const Config>& config() const { return config_; }
    Balancer& balancer() { return balancer_; }
    const FailedUpstreams& failed_upstreams() const { return failed_upstreams_; }
    UpstreamPool& upstream_pool() { return pool_; }
    ExchangePool& exchanges() { return exchanges_; }
    HeapTrim& heap_trim() { return heap_trim_; }
    // Idle keep-alive connections waiting, without a session, for their next request.
    ParkedClients& parked() { return *parked_; }
    // Pipes for bodies spliced socket to socket.
    SplicePipes& splice_pipes() { return splice_pipes_; }
    BulkReadBudget& bulk_reads() { return bulk_reads_; }
    WorkerStats& stats() { return stats_; }
    TrafficCounters& traffic() { return traffic_; }
    const WorkerStats& stats() const { return stats_; }
    bool draining() const { return draining_; }
    // From a graceful shutdown's start (before draining: the ready delay): every response
    // closes its connection, so clients leave while the listeners still take new ones.
    bool closing() const { return closing_ || draining_; }
    void begin_closing();
    void track(SessionHandle* session) { sessions_.push_back(*session); }
    void untrack(SessionHandle* session);
    // A connection that has not yet said what it wants (its TLS handshake, PROXY header or the
    // rest of a request head to come; or an idle wait that cannot park) holds a slot: at the
    // connection limit the oldest such one makes room, as a parked one does, once it has been
    // opening for limits.evict_opening_after.
    void opening(SessionHandle& session) {
        session.opening_since = std::chrono::steady_clock::now();
        opening_.push_back(session);
    }
    void opened(SessionHandle& session) { session.OpeningHook::unlink(); }
    // A request body that arrives slower than limits.min_request_body_rate holds a slot the
    // same way (R-U-D-Y): it makes room too, once read for evict_opening_after. `bytes`
    // counts what has arrived and outlives the read.
    void uploading(SessionHandle& session, const std::uint64_t& bytes, const BodyRateClock& clock) {
        session.upload_bytes = &bytes;
        session.upload_base = bytes;
        session.upload_clock = &clock;
        opening(session);
    }
    void uploaded(SessionHandle& session) {
        opened(session);
        session.upload_bytes = nullptr;
        session.upload_clock = nullptr;
    }
    // The address connections accepted on `listener` were made to, when the listener is bound
    // to one address (not a wildcard): known without a getsockname() per connection.
    const std::optional<boost::asio::ip::tcp::endpoint>& fixed_local_endpoint(
        std::size_t listener) const {
        return fixed_locals_[listener];
    }
    // Whether `listener` is an IPv6 socket (and so are the connections it accepts).
    bool listener_v6(std::size_t listener) const { return v6_listeners_[listener]; }
    // A connection accepted on `listener` has closed: its slot is free again.
    void connection_closed(std::size_t listener) { limits_.close(listener); }
    // A backend connection on this descriptor would leave the proxy too few of its own.
    bool upstream_near_descriptor_limit(int descriptor) const {
        return limits_.upstream_near_descriptor_limit(descriptor);
    }
    // The other workers, asked for room at the connection limit when this one has nothing of
    // its own to close. Set once, before the workers run.
    void set_siblings(std::vector<Worker*> siblings) { siblings_ = std::move(siblings); }
    RetryBudget& retry_budget() { return retry_budget_; }
    // One try at a backend that got no response head: cumulative tries and failures (by
    // kind) per backend id, read by the control plane's outlier detector and canary analysis
    // through report_load.
    void record_outcome(const Backend& backend, TryOutcome outcome);
    // A try begun at `begun` got a response head from the backend: it counts as a try (an
    // answer, for the stall rules) now, and is judged by judge_try once its body is through
    // (a body the backend cuts or stalls is the try's failure).
    void record_answer(std::uint32_t backend_id, std::chrono::steady_clock::time_point begun) {
        if (backend_id >= answer_begun_.size()) {
            answer_begun_.resize(backend_id + 1);
            answer_waits_.resize(backend_id + 1);
        }
        answer_begun_[backend_id] = std::max(answer_begun_[backend_id], begun);
        answer_waits_[backend_id].count(
            std::chrono::duration_cast<std::chrono::milliseconds>(CoarseClock::now() - begun));
        count_try(backend_id);
    }
    // The outcome of a try counted before: failures by kind, and the backend's failure run.
    void judge_try(const Backend& backend, TryOutcome outcome);
    // A try counted, not judged (record_answer's first half; a try the client cut short).
    void count_try(std::uint32_t backend_id);
    // A session watches its client for a close (ClientCloseWatch): the in-flight sweep runs
    // while any do.
    void arm_in_flight_sweep();
    // Upgraded (tunnelled) connections open per backend id.
    void tunnel_opened(std::uint32_t backend_id);
    void tunnel_closed(std::uint32_t backend_id);

  private:
    void wait_for_connection(Socket& listening, std::size_t listener);
    void accept_ready(Socket& listening, std::size_t listener);
    boost::system::error_code accept_one(Socket& listening, std::size_t listener);
    void take_backlog(Socket& listening, std::size_t listener);
    void accept_failed(Socket& listening, std::size_t listener,
                       const boost::system::error_code& ec);
    void accepted(Socket socket, std::size_t listener, const boost::asio::ip::tcp::endpoint& peer);
    void refuse(Socket& socket, std::size_t listener);
    bool make_room(std::size_t listener, std::uint32_t listener_max);
    // The listener's own max_connections (0: none).
    std::uint32_t listener_cap(std::size_t listener) const {
        return listener < config_->listeners.size() ? config_->listeners[listener].max_connections
                                                    : 0;
    }
    void borrow_room(Socket socket, std::size_t listener,
                     const boost::asio::ip::tcp::endpoint& peer, std::size_t next);
    Socket lower_descriptor(Socket socket, std::size_t listener);
    void admit(Socket socket, std::size_t listener, const boost::asio::ip::tcp::endpoint& peer);
    enum class Evicted { none, opening, slow_upload, idle };
    Evicted evict_opening(std::optional<std::size_t> listener, std::optional<std::size_t>& held);
    bool upload_too_slow(const SessionHandle& session,
                         std::chrono::steady_clock::time_point now) const;
    void finish_if_drained();
    void sweep_in_flight();
    void sweep_client_closes();
    // A colour lost its whole share: its tunnels close after the table's tunnel_drain.
    void close_stale_upstreams(const RoutingTable& table);
    void follow_share(const RoutingTable& table);
    void close_tunnels(std::size_t colour);
    void cut_stalled_tries();

    unsigned index_;
    ConnectionLimits& limits_;
    AccessLog* access_log_ = nullptr;
    boost::asio::io_context io_;
    std::shared_ptr<const Config> config_;
    TableSlot& slot_;
    std::uint64_t seen_version_;
    RoutingTablePtr table_;  // the slot's table as of seen_version_
    Balancer balancer_;
    UpstreamPool pool_;
    HeapTrim heap_trim_;  // before exchanges_, which reports to it
    ExchangePool exchanges_;
    ReactorReserve reactor_reserve_;
    std::unique_ptr<ParkedClients> parked_;  // after io_: gone before it
    SplicePipes splice_pipes_;
    BulkReadBudget bulk_reads_;
    RetryBudget retry_budget_;
    WorkerStats stats_;
    TrafficCounters traffic_;
    // Each listener's socket, set up as an acceptor and then waited on as a socket (a
    // ReadinessWait: Worker::wait_for_connection).
    std::vector<std::unique_ptr<Socket>> listen_sockets_;
    std::vector<std::optional<boost::asio::ip::tcp::endpoint>> fixed_locals_;  // by listener
    std::vector<bool> v6_listeners_;                                           // by listener
    boost::intrusive::list<SessionHandle> sessions_;  // every open client connection
    boost::intrusive::list<SessionHandle, boost::intrusive::base_hook<OpeningHook>,
                           boost::intrusive::constant_time_size<false>>
        opening_;                         // those still opening, oldest first
    std::vector<std::uint32_t> tunnels_;  // by backend id
    std::vector<std::uint64_t> requests_by_backend_;
    std::vector<std::uint64_t> failures_by_backend_;  // as outlier detection counts them
    std::vector<std::array<std::uint64_t, failure_kind_count>> failure_kinds_;
    // When the newest try each backend answered had begun, by backend id.
    std::vector<std::chrono::steady_clock::time_point> answer_begun_;
    std::vector<AnswerWaits> answer_waits_;  // by backend id, cumulative
    std::function<void()> failure_run_alarm_;
    boost::asio::steady_timer grace_timer_;
    boost::asio::steady_timer close_sweep_timer_;
    std::array<boost::asio::steady_timer, 2> tunnel_drain_timers_;  // by colour index
    std::array<std::uint64_t, 2> tunnel_drains_{};  // the current drain's number, by colour
    std::array<bool, 2> had_share_{true, true};     // at the last table
    FailedUpstreams failed_upstreams_;              // as of the last table applied
    std::vector<Worker*> siblings_;
    // New connections waiting on a sibling's answer for room (borrow_room), at most
    // max_borrowing: past it, refused at once.
    struct Borrowing {
        Socket socket;
        std::size_t listener;
        boost::asio::ip::tcp::endpoint peer;
    };
    std::list<Borrowing> borrowing_;
    static constexpr std::size_t max_borrowing = 64;
    bool close_sweep_armed_ = false;
    std::vector<pollfd> close_sweep_fds_;                      // reused by each sweep
    std::vector<SessionHandle*> close_sweep_of_;               // the session of each pollfd
    std::vector<std::unique_ptr<AcceptPause>> accept_pauses_;  // one per listener
    bool draining_ = false;
    bool closing_ = false;
    std::thread thread_;
};

}  // namespace bg
