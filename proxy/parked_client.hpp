#pragma once
// Idle keep-alive client connections, parked. Between requests a connection keeps no
// coroutine frame, session, buffer or timer of its own: only its descriptor, waiting to become
// readable, who the client is, and a place in one of its worker's FIFOs of parked connections,
// which one timer walks for their timeouts (one FIFO per timeout: the keep-alive one, and the
// header one for a connection that has not sent its first request; within a FIFO the oldest
// expires first). An edge proxy holds many idle connections, and an idle-connection flood is a
// cheap attack: this is what each one costs. When bytes arrive the connection is resumed as a
// session again (client_session.cpp). Worker thread only.
//
// The descriptor leaves asio while parked: an asio socket costs its reactor entry (~170 bytes)
// and a pending wait operation (~200 bytes) on top of the record. The worker keeps one epoll set
// of its own for its parked descriptors, itself waited on by asio: a parked connection costs
// this record and its TrackedSession, about 300 bytes (nginx: ~690, HAProxy: ~1,180).

#include <boost/asio/posix/basic_stream_descriptor.hpp>
#include <boost/intrusive/list.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <optional>

#include "client_identity.hpp"
#include "config.hpp"
#include "io_types.hpp"
#include "record_slab.hpp"
#include "tls_stream.hpp"
#include "tracked_session.hpp"

namespace bg {

class Worker;

// A slab record (record_slab.hpp): it lives as long as its connection is idle.
struct ParkedClient
    : boost::intrusive::list_base_hook<boost::intrusive::link_mode<boost::intrusive::auto_unlink>>,
      SlabRecord {
    // Takes the descriptor out of `socket` (-1 if asio cannot give it up).
    explicit ParkedClient(Socket socket);
    // A TLS connection keeps its TLS state too (OpenSSL's record buffers are empty, freed).
    explicit ParkedClient(TlsStream stream);
    // Closes the descriptor if it is still held (a TLS one after a close_notify, if the socket
    // takes it at once).
    ~ParkedClient();
    ParkedClient(const ParkedClient&) = delete;
    ParkedClient& operator=(const ParkedClient&) = delete;

    int descriptor = -1;
    SslPtr tls;                            // a TLS connection's state (nullptr: plain)
    std::shared_ptr<const Config> config;  // the one the connection started with
    std::size_t listener = 0;
    std::unique_ptr<TrackedSession> tracked;  // still counted, still closed by a shutdown
    ClientIdentity client;
    unsigned served = 0;  // requests so far
    std::chrono::steady_clock::time_point expires;
};

// A connection that just went idle keeps its session for timeouts.client_park_after first: a
// busy keep-alive connection, whose next request comes within it, is never parked between
// requests (parking and resuming cost a session and its frames each time). Lives in the
// session; while linked, its worker may end the session's read to park the connection.
struct IdleWait
    : boost::intrusive::list_base_hook<boost::intrusive::link_mode<boost::intrusive::auto_unlink>> {
    Socket* socket = nullptr;
    std::chrono::steady_clock::time_point park_at;
    bool park = false;  // the read was cancelled to park the connection
};

class ParkedClients {
  public:
    // Runs when a parked connection's next bytes arrive: it is the caller's again, on `socket`.
    using Resume = void (*)(Worker&, std::unique_ptr<ParkedClient>, Socket socket);

    // Throws std::system_error if the epoll set cannot be made.
    ParkedClients(Worker& worker, Resume resume);
    ~ParkedClients();
    ParkedClients(const ParkedClients&) = delete;
    ParkedClients& operator=(const ParkedClients&) = delete;

    // Waits for the connection's next request for at most `timeout`; closes it on the timeout
    // or a shutdown. A connection that cannot be parked (its socket already closed, the epoll
    // set full) is handed back, for its session to close as it closes any other.
    [[nodiscard]] std::unique_ptr<ParkedClient> park(std::unique_ptr<ParkedClient> client,
                                                     Duration timeout);
    // Closes every parked connection (a shutdown: they have nothing in flight).
    void close_all();
    // Closes the parked connection nearest its timeout (of `listener`, when given), to make room
    // for a new one past max_connections, as nginx reuses its idle keep-alive connections. Its
    // connection slot is not given back: the listener it was counted on is returned, for the
    // new connection to take it over. None when none is parked (among the first few of each
    // FIFO, for a listener).
    std::optional<std::size_t> evict_one(std::optional<std::size_t> listener);
    // A shutdown begins: each parked connection with a request waiting is served (its answer
    // closes it); the others are closed.
    void drain();
    std::size_t size() const { return count_; }
    // The session waits for its next request on `socket`; if none comes within `park_after`,
    // the read is cancelled with `wait.park` set. Unlink `wait` when the read ends.
    void wait_idle(IdleWait& wait, Socket& socket, Duration park_after);
    // The worker is done: its waits must not keep the loop running.
    void stop() {
        timer_.cancel();
        idle_timer_.cancel();
        boost::system::error_code ignored;
        ready_.cancel(ignored);
    }

  private:
    using Fifo = boost::intrusive::list<ParkedClient, boost::intrusive::constant_time_size<false>>;
    void arm();
    void expire();
    void arm_idle();
    void park_idle();
    void watch();
    void take_ready();
    void resume(ParkedClient* client);
    // Unlinks and uncounts a parked connection: the caller closes or resumes it.
    std::unique_ptr<ParkedClient> unpark(ParkedClient& client);

    Worker& worker_;
    Resume resume_;
    // The epoll set of the parked descriptors; readable when one of them is.
    boost::asio::posix::basic_stream_descriptor<Executor> ready_;
    bool watching_ = false;
    std::map<Duration::rep, Fifo> fifos_;  // by timeout: a handful at most
    boost::asio::steady_timer timer_;
    bool armed_ = false;
    std::chrono::steady_clock::time_point armed_until_{};
    std::size_t count_ = 0;
    // Sessions idle for less than park_after, oldest first; one timer for all of them.
    boost::intrusive::list<IdleWait, boost::intrusive::constant_time_size<false>> idle_;
    boost::asio::steady_timer idle_timer_;
    bool idle_armed_ = false;
};

}  // namespace bg
