#include "worker.hpp"

#include "parked_client.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <cerrno>

#include "adopted_socket.hpp"
#include "client_session.hpp"
#include "coarse_clock.hpp"
#include "heavy_queue.hpp"
#include "http_date.hpp"
#include "pending_input.hpp"
#include "socket_drain.hpp"

namespace bg {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

Worker::Worker(unsigned index, std::shared_ptr<const Config> config, TableSlot& slot,
               ConnectionLimits& limits)
    : index_(index),
      limits_(limits),
      // Only this thread touches the worker's sockets (other threads post to it), so the
      // reactor needs no per-socket locking.
      io_(BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO),
      config_(std::move(config)),
      slot_(slot),
      seen_version_(slot.version()),
      table_(slot.load()),
      balancer_(config_->upstream.balance, 0x5eed0000ull + index),
      pool_(io_.get_executor(), config_->upstream, stats_),
      heap_trim_(io_.get_executor(), stats_),
      exchanges_(heap_trim_),
      reactor_reserve_(io_),
      grace_timer_(io_),
      close_sweep_timer_(io_),
      tunnel_drain_timers_{boost::asio::steady_timer(io_), boost::asio::steady_timer(io_)} {
    for (Colour c : all_colours) {
        had_share_[index_of(c)] = slot.load()->pool(c).weight_bp > 0;
    }
    parked_ = std::make_unique<ParkedClients>(*this, &resume_parked);
    HeavyQueue::of(io_.get_executor()).set_share(config_->limits.handshake_share);
}

Worker::~Worker() {
    join();
    parked_->close_all();  // while the session list they are in still stands
}

namespace {

// The listening descriptor, taken from its acceptor (once its options are set) into a socket:
// Worker::wait_for_connection waits on it with a ReadinessWait, where an acceptor's async_wait
// costs an epoll_ctl each time.
Socket waitable_listener(asio::io_context& io, Acceptor& acceptor, bool v6,
                         boost::system::error_code& ec) {
    const int descriptor = acceptor.release(ec);
    if (ec) {
        return Socket(io);
    }
    Socket listening = adopt_socket(io, v6, descriptor, ec);
    if (ec) {
        ::close(descriptor);
    }
    return listening;
}

// One socket option on the listener; `ec` says why it failed.
void set_option(Acceptor& acceptor, int level, int name, int value, boost::system::error_code& ec) {
    if (::setsockopt(acceptor.native_handle(), level, name, &value, sizeof(value)) != 0) {
        ec.assign(errno, boost::system::system_category());
    }
}

// The listener's options its accepted connections inherit: no setsockopt per connection.
void set_inherited_options(Acceptor& acceptor, const ListenerConfig& listener,
                           boost::system::error_code& ec) {
    acceptor.set_option(tcp::no_delay(true), ec);
    if (!ec && listener.smart_accept) {
        // Linux acknowledges a new connection's first segments at once ("quick ack"): the
        // request's ACK went out alone, a segment per connection more than HAProxy sends.
        // Off on the listener (accepted sockets inherit it), it is delayed, and the
        // response carries it.
        set_option(acceptor, IPPROTO_TCP, TCP_QUICKACK, 0, ec);
    }
    if (!ec && listener.defer_accept) {
        // The connection is woken, taken and read once, with its request there: without
        // it, accept4 mostly came before the request, and a second wake-up read it.
        // The kernel rounds the 1 s to one SYN-ACK retransmission, after which a silent
        // client's ACK makes the connection acceptable (the header timeout then runs).
        set_option(acceptor, IPPROTO_TCP, TCP_DEFER_ACCEPT, 1, ec);
    }
    if (!ec && listener.send_buffer > 0) {
        // Accepted connections inherit it (and lose the kernel's autotuning, up to ~4 MB
        // each: what a client that reads slowly holds of the kernel's memory).
        acceptor.set_option(
            boost::asio::socket_base::send_buffer_size(static_cast<int>(listener.send_buffer)), ec);
    }
}

}  // namespace

bool Worker::bind(std::vector<std::uint16_t>& ports, std::string& error) {
    ports.resize(config_->listeners.size(), 0);
    for (std::size_t i = 0; i < config_->listeners.size(); ++i) {
        const HostPort& address = config_->listeners[i].address;
        boost::system::error_code ec;
        tcp::endpoint endpoint(asio::ip::make_address(address.ip, ec),
                               ports[i] != 0 ? ports[i] : address.port);
        Acceptor acceptor(io_);
        if (!ec) {
            acceptor.open(endpoint.protocol(), ec);
        }
        if (!ec) {
            acceptor.set_option(asio::socket_base::reuse_address(true), ec);
        }
        if (!ec) {
            // Every worker binds the same port; the kernel spreads connections among them.
            set_option(acceptor, SOL_SOCKET, SO_REUSEPORT, 1, ec);
        }
        if (!ec) {
            acceptor.bind(endpoint, ec);
        }
        if (!ec) {
            acceptor.listen(asio::socket_base::max_listen_connections, ec);
        }
        if (!ec) {
            acceptor.native_non_blocking(true, ec);  // accept_ready takes until EAGAIN
        }
        if (!ec) {
            set_inherited_options(acceptor, config_->listeners[i], ec);
        }
        tcp::endpoint bound;
        if (!ec) {
            bound = acceptor.local_endpoint(ec);
        }
        Socket listening(io_);
        if (!ec) {
            listening = waitable_listener(io_, acceptor, bound.address().is_v6(), ec);
        }
        if (ec) {
            error = "cannot listen on " + address.text + ": " + ec.message();
            return false;
        }
        ports[i] = bound.port();
        listen_sockets_.push_back(std::make_unique<Socket>(std::move(listening)));
        fixed_locals_.push_back(bound.address().is_unspecified() ? std::nullopt
                                                                 : std::optional(bound));
        v6_listeners_.push_back(bound.address().is_v6());
        accept_pauses_.push_back(std::make_unique<AcceptPause>(
            io_, "worker " + std::to_string(index_) + " listener " + address.text));
    }
    return true;
}

void Worker::start() {
    for (std::size_t i = 0; i < listen_sockets_.size(); ++i) {
        // On the worker's thread: connections may be waiting already.
        asio::post(io_, [this, i] { accept_ready(*listen_sockets_[i], i); });
    }
    thread_ = std::thread([this] {
        try {
            io_.run();
        } catch (const std::exception& e) {
            spdlog::critical("worker {} stopped on an exception: {}", index_, e.what());
            std::abort();
        }
    });
}

// Waits for the next connection after accept4 found the backlog empty: a ReadinessWait on the
// listening socket's edge-triggered registration (socket_drain.hpp), which the next connection
// to arrive ends. asio's async_wait re-armed the registration with an epoll_ctl every time: a
// syscall per connection when they come one at a time.
void Worker::wait_for_connection(Socket& listening, std::size_t listener) {
    assume_drained(listening);
    listening.async_receive(
        ReadinessWait(), Socket::message_peek,
        [this, &listening, listener](boost::system::error_code ec, std::size_t) {
            if (ec != asio::error::operation_aborted) {
                accept_ready(listening, listener);
            }
        });
}

// The listener's connections are taken with accept4 (non-blocking from the start, the peer's
// address with it: no getpeername()), up to a batch, then other work runs before the rest.
void Worker::accept_ready(Socket& listening, std::size_t listener) {
    constexpr int batch = 64;
    for (int taken = 0; taken < batch; ++taken) {
        if (!listening.is_open()) {
            return;
        }
        const boost::system::error_code ec = accept_one(listening, listener);
        if (ec == asio::error::would_block) {
            wait_for_connection(listening, listener);
            return;
        }
        if (ec) {
            accept_failed(listening, listener, ec);
            return;
        }
    }
    asio::post(io_, [this, &listening, listener] { accept_ready(listening, listener); });
}

// One connection from the backlog to a session (connections reset while queued are skipped);
// would_block when there is none.
boost::system::error_code Worker::accept_one(Socket& listening, std::size_t listener) {
    for (;;) {
        tcp::endpoint peer;
        socklen_t length = static_cast<socklen_t>(peer.capacity());
        const int descriptor = ::accept4(listening.native_handle(), peer.data(), &length,
                                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (descriptor < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return asio::error::would_block;
            }
            return {errno, boost::system::system_category()};
        }
        peer.resize(length);
        reserve_socket_records();
        boost::system::error_code ec;
        Socket socket = adopt_socket(io_, v6_listeners_[listener], descriptor, ec);
        if (ec) {
            ::close(descriptor);
            return ec;
        }
        // Without defer_accept its request is rarely there yet: the first read waits for the
        // poller (whose new registration of the socket reports bytes that are) rather than
        // trying a recv first. Marked here, at the registration: a socket that waits for room
        // (borrow_room) keeps what the poller reports meanwhile, which no later event would
        // repeat. With it, the request is there (or the client stayed silent a second): read
        // at once, without a turn of the event loop first.
        if (!config_->listeners[listener].defer_accept) {
            assume_drained(socket);
        }
        accepted(std::move(socket), listener, peer);
        return {};
    }
}

// Empty, or out of descriptors: the rest are reset with the listener.
void Worker::take_backlog(Socket& listening, std::size_t listener) {
    while (!accept_one(listening, listener)) {
    }
}

// Out of descriptors: the pending connection stays in the backlog, and accepting again at once
// would fail at once (a busy loop): the listener pauses instead.
void Worker::accept_failed(Socket& listening, std::size_t listener,
                           const boost::system::error_code& ec) {
    if (accept_pauses_[listener]->pause_after(
            ec, config_->timeouts.accept_pause,
            // The backlog's connections stay pending, with no event to come for them: taken at
            // once after the pause.
            [this, &listening, listener] { accept_ready(listening, listener); })) {
        WorkerStats::add(stats_.accept_failures);
        return;
    }
    spdlog::warn("worker {}: accept failed: {}", index_, ec.message());
    // A connection's own failure: the next may be taken (as an acceptor's wait reported the
    // backlog's readiness at once).
    asio::post(io_, [this, &listening, listener] { accept_ready(listening, listener); });
}

void Worker::accepted(Socket socket, std::size_t listener, const tcp::endpoint& peer) {
    WorkerStats::add(stats_.connections_accepted);
    const std::uint32_t listener_max = listener_cap(listener);
    const bool room = !limits_.client_near_descriptor_limit(socket.native_handle()) &&
                      limits_.try_open(listener, config_->limits.max_connections, listener_max);
    if (room || make_room(listener, listener_max)) {
        admit(std::move(socket), listener, peer);
    } else if (!siblings_.empty() && borrowing_.size() < max_borrowing) {
        borrow_room(std::move(socket), listener, peer, 0);
    } else {
        refuse(socket, listener);
    }
}

void Worker::admit(Socket socket, std::size_t listener, const tcp::endpoint& peer) {
    if (limits_.client_near_descriptor_limit(socket.native_handle())) {
        socket = lower_descriptor(std::move(socket), listener);
    }
    asio::co_spawn(io_.get_executor(), serve_client(*this, std::move(socket), listener, peer),
                   asio::detached);
}

// A newcomer accepted near the descriptor limit, for which a connection was closed to make
// room, moves down to the lowest free number (the one the closed connection left): numbers go
// on saying how many are in use. (A review: else the next client took that number unchecked,
// and each eviction let the count grow by one.) F_DUPFD takes the lowest free number at once,
// never one another thread holds.
Socket Worker::lower_descriptor(Socket socket, std::size_t listener) {
    const int high = socket.native_handle();
    const int low = ::fcntl(high, F_DUPFD_CLOEXEC, 0);
    if (low < 0) {
        return socket;
    }
    boost::system::error_code ec;
    if (low > high) {
        ::close(low);
        return socket;
    }
    Socket lowered = adopt_socket(io_, v6_listeners_[listener], low, ec);
    if (ec) {
        ::close(low);
        return socket;
    }
    // A new registration, which reports the bytes already there (as at an accept without
    // defer_accept). Rare (a connection at the limit): the read after it waits one turn.
    assume_drained(lowered);
    // The old number leaves epoll before it closes: the duplicate keeps the file open, and the
    // kernel drops a registration only with the file, so asio's close (which leaves that to
    // the kernel) would leave it reporting the connection's events to whatever socket asio
    // gives the old number's reactor state next. release() deregisters it.
    const int old_number = socket.release(ec);
    if (!ec) {
        ::close(old_number);
    }
    return lowered;
}

// At the limit with nothing of its own to close, the other workers are asked in turn: one may
// hold the idle or opening connections that can make room (each worker closes only its own,
// and the kernel spreads connections over the workers' listeners, so with two a new client was
// refused beside evictable connections on the other). The slot of the connection a sibling
// closes passes to the newcomer (make_room). The socket waits here (microseconds); only the
// question crosses threads.
void Worker::borrow_room(Socket socket, std::size_t listener, const tcp::endpoint& peer,
                         std::size_t next) {
    if (next >= siblings_.size()) {
        refuse(socket, listener);
        return;
    }
    const std::uint32_t listener_max = listener_cap(listener);
    const auto waiting = borrowing_.insert(borrowing_.end(), {std::move(socket), listener, peer});
    Worker& sibling = *siblings_[next];
    asio::post(sibling.io_, [this, &sibling, waiting, listener, listener_max, next] {
        const bool made = sibling.make_room(listener, listener_max);
        asio::post(io_, [this, waiting, next, made] {
            Borrowing newcomer = std::move(*waiting);
            borrowing_.erase(waiting);
            if (made) {
                admit(std::move(newcomer.socket), newcomer.listener, newcomer.peer);
            } else {
                borrow_room(std::move(newcomer.socket), newcomer.listener, newcomer.peer, next + 1);
            }
        });
    });
}

// At a connection limit, a parked keep-alive connection of this worker makes room (the one
// nearest its own timeout): a flood of connections that each sent one request and went quiet
// would otherwise turn every new client away for client_keepalive. Else one still opening, an
// idle one that cannot park, or one uploading too slowly, oldest first. Of `listener` when its own
// cap is the one reached. The closed one's slot passes to the new connection on `listener` at once
// (ConnectionLimits::hand_over): freed first, a concurrent accept on another worker could take it,
// and the newcomer be refused though a connection was closed for it (seen under TSan).
bool Worker::make_room(std::size_t listener, std::uint32_t listener_max) {
    const auto only =
        listener_max != 0 ? std::optional<std::size_t>(listener) : std::optional<std::size_t>();
    std::optional<std::size_t> held = parked_->evict_one(only);
    if (held) {
        WorkerStats::add(stats_.idle_evicted);
    } else {
        const Evicted evicted = evict_opening(only, held);
        if (evicted == Evicted::none) {
            return false;
        }
        WorkerStats::add(evicted == Evicted::opening ? stats_.opening_evicted
                         : evicted == Evicted::idle  ? stats_.idle_evicted
                                                     : stats_.slow_uploads_evicted);
    }
    limits_.hand_over(*held, listener);
    return true;
}

// The oldest connection still in its TLS handshake, PROXY header or an incomplete request head,
// or reading a request body slower than min_request_body_rate (of `listener`, when its own cap
// is the one reached), at it for evict_opening_after at least: silent ones on a TLS or PROXY
// listener, ones that sent a byte of a head, or a few bytes a second of a body, filled every
// slot until tls_handshake, client_header or client_body, turning every client away. Its slot
// stays taken, counted on the listener set in `held`, for make_room to hand over; the
// connection ends as its read fails on the closed socket.
Worker::Evicted Worker::evict_opening(std::optional<std::size_t> listener,
                                      std::optional<std::size_t>& held) {
    const auto now = std::chrono::steady_clock::now();
    const auto opened_before = now - config_->limits.evict_opening_after;
    int looked = 0;
    int moved = 0;
    const SessionHandle* first_moved = nullptr;
    for (auto it = opening_.begin(); it != opening_.end() && looked < 64;) {
        SessionHandle& session = *it++;
        if (session.opening_since > opened_before || &session == first_moved) {
            return Evicted::none;  // oldest first: the rest are younger still (or seen)
        }
        if (session.upload_bytes != nullptr && !upload_too_slow(session, now)) {
            // An upload keeping to the rate goes to the back, young again, and is not counted
            // in the look: a few dozen at the front hid every connection behind them, and
            // made room for none. Each goes round once per evict_opening_after at most, and
            // once a look (evict_opening_after 0); a look moves 1,024 at most.
            if (++moved > 1024) {
                return Evicted::none;
            }
            first_moved = first_moved != nullptr ? first_moved : &session;
            session.OpeningHook::unlink();
            opening(session);
            continue;
        }
        ++looked;
        // (Never one already closed to make room: its slot went to another connection.)
        if ((listener && session.listener != *listener) || session.slot_released) {
            continue;
        }
        session.OpeningHook::unlink();
        session.slot_released = true;
        held = session.listener;
        boost::system::error_code ignored;
        session.client->close(ignored);
        return session.upload_bytes != nullptr ? Evicted::slow_upload
               : session.idle                  ? Evicted::idle
                                               : Evicted::opening;
    }
    return Evicted::none;
}

// Not an upload, or one whose body has come slower than min_request_body_rate so far (0: no
// rate asked, never too slow).
bool Worker::upload_too_slow(const SessionHandle& session,
                             std::chrono::steady_clock::time_point now) const {
    if (session.upload_bytes == nullptr) {
        return true;
    }
    const std::uint64_t rate = config_->limits.min_request_body_rate;
    const auto elapsed =
        std::chrono::duration_cast<std::chrono::milliseconds>(session.upload_clock->counted(now));
    const std::uint64_t arrived = *session.upload_bytes - session.upload_base;
    return rate > 0 && arrived * 1000 < rate * static_cast<std::uint64_t>(elapsed.count());
}

// Past max_connections a plain HTTP client gets a 503 it can read (one non-blocking send,
// nothing waits on it); a TLS client cannot be answered without a handshake and is closed.
void Worker::refuse(Socket& socket, std::size_t listener) {
    WorkerStats::add(stats_.connections_refused);
    boost::system::error_code ignored;
    const bool tls =
        listener < config_->listeners.size() && config_->listeners[listener].tls_context;
    if (!tls) {
        static constexpr std::string_view status = "HTTP/1.1 503 Service Unavailable\r\nDate: ";
        static constexpr std::string_view head =
            "\r\nContent-Type: text/plain\r\nX-BG-Error: too many connections\r\n"
            "Content-Length: 21\r\nConnection: close\r\n\r\n";
        static constexpr std::string_view body = "too many connections\n";
        static_assert(body.size() == 21, "the head's Content-Length");
        // (With defer_accept the request is there: a HEAD's answer ends with its head.)
        const bool head_only = request_is_head(socket.native_handle());
        const std::array<asio::const_buffer, 4> answer{
            asio::buffer(status), asio::buffer(http_date_now()), asio::buffer(head),
            asio::buffer(body.data(), head_only ? 0 : body.size())};
        socket.non_blocking(true, ignored);
        socket.send(answer, 0, ignored);
        socket.shutdown(Socket::shutdown_send, ignored);
        // The request unread at close would make the kernel reset the connection at once, and
        // a client (or a load balancer) may drop the 503 for the reset: read what came (with
        // defer_accept, the request is always there). At most one read: the rest is the
        // client's to lose. (MSG_TRUNC: TCP discards it, copying nothing.)
        ::recv(socket.native_handle(), nullptr, 65536, MSG_DONTWAIT | MSG_TRUNC);
    }
    socket.close(ignored);
}

void Worker::apply(RoutingTablePtr table, std::shared_ptr<const Config> config,
                   std::function<void()> applied) {
    asio::post(io_, [this, table = std::move(table), config = std::move(config),
                     applied = std::move(applied)]() mutable {
        close_stale_upstreams(*table);
        // The table itself was already taken from the slot by the first request after the
        // publication; taking it here too covers a worker that serves none.
        this->table();
        follow_share(*table);
        if (config) {
            config_ = std::move(config);
            HeavyQueue::of(io_.get_executor()).set_share(config_->limits.handshake_share);
        }
        failed_upstreams_.follow(*table, CoarseClock::now(), config_->retries.cross_colour);
        cut_stalled_tries();
        applied();
    });
}

// Idle connections to backends that left the table, stopped taking requests, or moved to
// another address under the same name (a reload) are closed now rather than reused later.
void Worker::close_stale_upstreams(const RoutingTable& table) {
    std::vector<bool> present(pool_.backend_slots());
    for (Colour colour : all_colours) {
        for (const Backend& backend : table.pool(colour).backends) {
            if (backend.id < present.size()) {
                present[backend.id] = true;
            }
            if (!backend.takes_new_requests()) {
                pool_.close_backend(backend.id);
            } else {
                pool_.close_moved(backend.id, backend.address.key());
            }
        }
    }
    for (std::uint32_t id = 0; id < present.size(); ++id) {
        if (!present[id]) {
            pool_.close_backend(id);
        }
    }
}

void Worker::follow_share(const RoutingTable& table) {
    for (Colour c : all_colours) {
        const std::size_t i = index_of(c);
        const bool share = table.pool(c).weight_bp > 0;
        if (had_share_[i] && !share && !draining_) {
            // Numbered: a drain that expired as the share came back is queued already, and
            // cancel() no longer stops it; it must not cut a colour that has its share again,
            // nor one whose new drain has only begun.
            const std::uint64_t mine = ++tunnel_drains_[i];
            tunnel_drain_timers_[i].expires_after(table.tunnel_drain());
            tunnel_drain_timers_[i].async_wait([this, i, mine](boost::system::error_code ec) {
                if (!ec && tunnel_drains_[i] == mine) {
                    close_tunnels(i);
                }
            });
        } else if (share) {
            ++tunnel_drains_[i];
            tunnel_drain_timers_[i].cancel();  // the share came back before the deadline
        }
        had_share_[i] = share;
    }
}

// Ends every tunnel to the colour: both sockets closed, so the pumps stop and each client
// reconnects, onto the colour now serving. (A WebSocket close frame would need the proxy to
// track frame boundaries in both directions; the close is what every client handles.)
void Worker::close_tunnels(std::size_t colour) {
    std::size_t closed = 0;
    for (SessionHandle& session : sessions_) {
        if (session.tunnel_colour != static_cast<int>(colour) || session.client == nullptr) {
            continue;
        }
        boost::system::error_code ignored;
        session.client->shutdown(Socket::shutdown_both, ignored);
        if (session.upstream != nullptr) {
            session.upstream->shutdown(Socket::shutdown_both, ignored);
        }
        ++closed;
    }
    if (closed > 0) {
        spdlog::info("worker {}: closed {} tunnel(s) of {}: its share is gone", index_, closed,
                     to_string(static_cast<Colour>(colour)));
    }
}

// Tries caught on a backend, or a colour, taken out of the routing (ejected, failing its
// checks, reverted) are retried elsewhere once they have waited outlier.stalled_after, when
// they may be: not left to wait out upstream_try (10 s) on a backend known to hold them. Looked
// at with every table and every load sample (the control thread's beat). The socket is closed,
// as an expiry closes it: never pooled again. As many at a beat as the retry budget has room
// for (the retries after timeouts it stands for): a backend out because it is overloaded does
// not send all its waiting requests onto its peers at once. A reverted colour's tries are cut
// whatever the budget: they go to the colour that carried the traffic before the release, and
// retries stuck on its other hung backends would otherwise fill the budget and leave every
// caught request to a 504.
void Worker::cut_stalled_tries() {
    const Duration after = config_->outlier.stalled_after;
    if (after <= Duration(0) || !failed_upstreams_.any()) {
        return;
    }
    double room = retry_budget_.room(config_->retries);
    const auto now = CoarseClock::now();
    for (SessionHandle& session : sessions_) {
        if (!session.try_cut && failed_upstreams_.should_cut(session, now, after)) {
            if (!failed_upstreams_.colour_reverted_under(session)) {
                if (room < 1) {
                    continue;
                }
                room -= 1;
            }
            session.try_cut = true;
            boost::system::error_code ignored;
            session.upstream->close(ignored);
            WorkerStats::add(stats_.tries_cut);
        }
    }
}

void Worker::report_load(std::function<void(DataPlaneLoad)> done) {
    asio::post(io_, [this, done = std::move(done)] {
        cut_stalled_tries();
        DataPlaneLoad load;
        load.in_flight.resize(table_->backend_id_limit(), 0);
        for (std::uint32_t id = 0; id < load.in_flight.size(); ++id) {
            load.in_flight[id] = balancer_.in_flight(id);
        }
        load.upgraded = tunnels_;
        load.requests = requests_by_backend_;
        load.failures = failures_by_backend_;
        load.failure_kinds = failure_kinds_;
        load.upstream_open.resize(table_->backend_id_limit(), 0);
        for (std::uint32_t id = 0; id < load.upstream_open.size(); ++id) {
            load.upstream_open[id] = static_cast<std::uint32_t>(pool_.idle_count(id));
        }
        load.oldest_wait_ms.resize(table_->backend_id_limit(), 0);
        load.oldest_wait_after_cut_ms.resize(table_->backend_id_limit(), 0);
        load.stalled_waits.resize(table_->backend_id_limit(), 0);
        load.stalled_waits_after_cut.resize(table_->backend_id_limit(), 0);
        const auto now = std::chrono::steady_clock::now();
        const auto stalled_after = config_->outlier.stalled_after;
        for (const SessionHandle& session : sessions_) {
            const std::uint32_t backend = session.upstream_backend;
            if (session.upstream != nullptr && backend < load.upstream_open.size()) {
                ++load.upstream_open[backend];
                // (A try just cut waits no more: its retry goes elsewhere.)
                if (session.awaiting_since != std::chrono::steady_clock::time_point{} &&
                    !session.try_cut) {
                    const auto waited = static_cast<std::uint64_t>(
                        std::chrono::duration_cast<std::chrono::milliseconds>(
                            now - session.awaiting_since)
                            .count());
                    const std::uint32_t stalled =
                        std::chrono::milliseconds(waited) >= stalled_after ? 1 : 0;
                    if (session.awaiting_after_cut) {
                        auto& oldest = load.oldest_wait_after_cut_ms[backend];
                        oldest = std::max(oldest, waited);
                        load.stalled_waits_after_cut[backend] += stalled;
                    } else {
                        load.oldest_wait_ms[backend] =
                            std::max(load.oldest_wait_ms[backend], waited);
                        load.stalled_waits[backend] += stalled;
                    }
                }
            }
            if (session.kept && session.kept_backend < load.upstream_open.size()) {
                ++load.upstream_open[session.kept_backend];
            }
        }
        load.answer_begun_ms.assign(answer_begun_.size(), DataPlaneLoad::never_answered);
        for (std::size_t id = 0; id < answer_begun_.size(); ++id) {
            if (answer_begun_[id] != std::chrono::steady_clock::time_point{}) {
                load.answer_begun_ms[id] = static_cast<std::uint64_t>(
                    std::chrono::duration_cast<std::chrono::milliseconds>(now - answer_begun_[id])
                        .count());
            }
        }
        load.answer_waits = answer_waits_;
        load.traffic = traffic_;
        done(std::move(load));
    });
}

void Worker::record_outcome(const Backend& backend, TryOutcome outcome) {
    count_try(backend.id);
    judge_try(backend, outcome);
}

void Worker::count_try(std::uint32_t backend_id) {
    if (backend_id >= requests_by_backend_.size()) {
        requests_by_backend_.resize(backend_id + 1, 0);
        failures_by_backend_.resize(backend_id + 1, 0);
        failure_kinds_.resize(backend_id + 1);
    }
    ++requests_by_backend_[backend_id];
}

void Worker::judge_try(const Backend& backend, TryOutcome outcome) {
    const std::uint32_t backend_id = backend.id;
    if (backend_id >= requests_by_backend_.size()) {
        return;  // (counted first, always)
    }
    if (outcome != TryOutcome::ok) {
        ++failure_kinds_[backend_id][failure_index(outcome)];
    }
    const bool failed = outcome != TryOutcome::ok &&
                        (outcome != TryOutcome::server_error || config_->outlier.count_5xx);
    failures_by_backend_[backend_id] += failed ? 1 : 0;
    const unsigned threshold = config_->outlier.consecutive_failures;
    if (!backend.failure_run || threshold == 0) {
        return;
    }
    if (!failed) {
        backend.failure_run->succeed();
    } else if (backend.failure_run->fail(threshold) && failure_run_alarm_) {
        failure_run_alarm_();  // once a run: the control thread looks now
    }
}

void Worker::tunnel_opened(std::uint32_t backend_id) {
    if (backend_id >= tunnels_.size()) {
        tunnels_.resize(backend_id + 1, 0);
    }
    ++tunnels_[backend_id];
}

void Worker::tunnel_closed(std::uint32_t backend_id) {
    if (backend_id < tunnels_.size() && tunnels_[backend_id] > 0) {
        --tunnels_[backend_id];
    }
}

void Worker::begin_closing() {
    asio::post(io_, [this] { closing_ = true; });
}

void Worker::begin_shutdown() {
    asio::post(io_, [this] {
        if (draining_) {
            return;
        }
        draining_ = true;
        // Connections already in a listener's backlog are taken (closing the listener would
        // reset them): each is served if its request came, like the idle ones below.
        for (std::size_t i = 0; i < listen_sockets_.size(); ++i) {
            take_backlog(*listen_sockets_[i], i);
            boost::system::error_code ignored;
            listen_sockets_[i]->close(ignored);
        }
        for (auto& pause : accept_pauses_) {
            pause->cancel();
        }
        // Idle keep-alive connections have nothing in flight: closed now, unless a request
        // already waits on one (closing it would reset the request unanswered: it is served,
        // and its answer closes the connection). Busy ones see draining() and close after
        // their current response.
        parked_->drain();
        for (SessionHandle& session : sessions_) {
            if (session.idle && session.client != nullptr &&
                !input_waiting(session.client->native_handle())) {
                boost::system::error_code ignored;
                session.client->cancel(ignored);
            }
        }
        grace_timer_.expires_after(config_->timeouts.shutdown_grace);
        grace_timer_.async_wait([this](boost::system::error_code ec) {
            if (ec) {
                return;
            }
            if (!sessions_.empty()) {
                spdlog::warn("worker {}: shutdown grace over, closing {} connections", index_,
                             sessions_.size());
            }
            parked_->close_all();
            for (SessionHandle& session : sessions_) {
                boost::system::error_code ignored;
                // Its request is not retried elsewhere, nor sent after a connect: the client is
                // gone (its retries outlived the grace by upstream_try, an outside probe).
                session.client_gone = true;
                session.shutdown_cut = true;
                if (session.client != nullptr) {
                    // A reset, not a FIN, while a backend's response is awaited or relayed: one
                    // cut here must not look whole (an HTTP/1.0 body read to the close), as when
                    // a backend dies mid-body. (A session already closing has all its answer
                    // written: a reset would throw away its tail.)
                    if (session.upstream != nullptr) {
                        session.client->set_option(asio::socket_base::linger(true, 0), ignored);
                    }
                    session.client->close(ignored);
                }
                if (session.upstream != nullptr) {
                    session.upstream->close(ignored);
                }
            }
        });
        finish_if_drained();
    });
}

void Worker::reserve_socket_records() {
    // Parked connections have no asio socket; each other one may have a backend's beside it.
    const std::size_t parked = parked_->size();
    const std::size_t active = sessions_.size() > parked ? sessions_.size() - parked : 0;
    reactor_reserve_.ensure(2 * (active + 1) + pool_.idle_count() + listen_sockets_.size());
}

void Worker::arm_in_flight_sweep() {
    if (close_sweep_armed_) {
        return;
    }
    close_sweep_armed_ = true;
    // A floor, so a config of 0 cannot make the sweep spin.
    close_sweep_timer_.expires_after(
        std::max<Duration>(config_->timeouts.client_close_check, std::chrono::milliseconds(10)));
    close_sweep_timer_.async_wait([this](boost::system::error_code ec) {
        close_sweep_armed_ = false;
        if (!ec) {
            sweep_in_flight();
        }
    });
}

// The requests in flight whose clients may close. The sweep runs again while any do; the next
// watch arms it.
void Worker::sweep_in_flight() {
    sweep_client_closes();
    if (!close_sweep_fds_.empty()) {
        arm_in_flight_sweep();
    }
}

// One poll() over the clients of every request in flight that is not reading them: a reset
// (POLLHUP, POLLERR), or a FIN (POLLRDHUP) unless server.abort_on_client_fin is off, marks the
// client gone and closes its backend connection, which ends the exchange at once. Data (a
// pipelined request) is left alone.
void Worker::sweep_client_closes() {
    close_sweep_fds_.clear();
    close_sweep_of_.clear();
    for (SessionHandle& session : sessions_) {
        if (session.watch_close && !session.client_gone && session.client != nullptr &&
            session.client->is_open()) {
            close_sweep_fds_.push_back({session.client->native_handle(), POLLRDHUP, 0});
            close_sweep_of_.push_back(&session);
        }
    }
    if (close_sweep_fds_.empty() ||
        ::poll(close_sweep_fds_.data(), close_sweep_fds_.size(), 0) <= 0) {
        return;
    }
    const short gone =
        config_->abort_on_client_fin ? (POLLRDHUP | POLLHUP | POLLERR) : (POLLHUP | POLLERR);
    for (std::size_t i = 0; i < close_sweep_fds_.size(); ++i) {
        if ((close_sweep_fds_[i].revents & gone) == 0) {
            continue;
        }
        SessionHandle& session = *close_sweep_of_[i];
        session.client_gone = true;
        session.watch_close = false;
        if (session.upstream != nullptr) {
            boost::system::error_code ignored;
            session.upstream->close(ignored);
        }
    }
}

void Worker::untrack(SessionHandle* session) {
    sessions_.erase(sessions_.iterator_to(*session));
    if (draining_) {
        finish_if_drained();
    }
}

void Worker::finish_if_drained() {
    if (sessions_.empty()) {
        // Every pending wait ends here, or the worker's loop would outlive its connections.
        grace_timer_.cancel();
        close_sweep_timer_.cancel();
        for (auto& timer : tunnel_drain_timers_) {
            timer.cancel();
        }
        parked_->stop();
        pool_.close_all();
    }
}

void Worker::join() {
    if (thread_.joinable()) {
        thread_.join();
    }
}

}  // namespace bg
