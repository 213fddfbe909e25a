#include "client_session.hpp"

#include <sys/socket.h>

#include <array>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <cstring>
#include <memory>

#include "address_text.hpp"
#include "client_connection.hpp"
#include "exchange_pool.hpp"
#include "exchange_state.hpp"
#include "http_date.hpp"
#include "parked_client.hpp"
#include "pending_input.hpp"
#include "proxy_header_reader.hpp"
#include "request_exchange.hpp"
#include "socket_drain.hpp"
#include "tls_context.hpp"
#include "tls_stream.hpp"
#include "upstream_request.hpp"

namespace bg {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

// What one TLS client connection holds in malloc'd memory once it has read: OpenSSL's session
// and record buffers (about 40 KiB measured). An estimate, for HeapTrim's count only.
constexpr std::size_t tls_connection_bytes = 40 * 1024;

// The connection loop: who the client is, the TLS handshake, then one RequestExchange per
// request while the connection stays open (keep-alive, pipelining, max_requests_per_connection,
// a graceful shutdown), then the close (TLS close_notify, lingering after an error).
template <class Stream>
class ClientSession {
  public:
    ClientSession(Worker& worker, std::shared_ptr<const Config> config, std::size_t listener,
                  Stream stream, const tcp::endpoint& peer)
        : conn_(worker, std::move(config), listener, std::move(stream)) {
        conn_.client.endpoints.source = peer;
    }
    // A parked connection's next request has started arriving.
    ClientSession(Worker& worker, ParkedClient&& parked, Stream&& stream)
        : conn_(worker, std::move(parked), std::move(stream)),
          served_(parked.served),
          resumed_(true),
          handshaken_(true),
          busy_(came_back_soon(parked)) {}

    Task<void> run() {
        // (No co_await inside && or ||: GCC 12 mishandles temporaries there.)
        bool open = resumed_;
        if (!resumed_) {
            const auto& listeners = conn_.config.listeners;
            if (ClientConnection<Stream>::tls ||
                (conn_.listener < listeners.size() && listeners[conn_.listener].proxy_protocol)) {
                conn_.worker.opening(conn_.handle());
            }
            open = co_await identify_client();
            if (open) {
                open = co_await handshake();
            }
            handshaken_ = open;
            conn_.worker.opened(conn_.handle());
        }
        // Resumed: the socket is readable, so the first wait reads at once.
        for (bool first = !resumed_, readable = resumed_; open; first = readable = false) {
            // Idle, nothing pipelined: wait in a small frame; a plain connection still idle
            // after client_park_after is parked. A new connection's first request and a busy
            // one's next are expected within it; any other connection parks at once.
            open = ex_ && ex_->buffer.size() > 0;
            const bool may_park = !open && !readable && can_park();
            const bool expected = first || busy_;
            if (may_park && (!expected || conn_.config.timeouts.client_park_after.count() == 0)) {
                park(first);
                co_return;
            }
            if (!open) {
                const IdleEnd end = co_await wait_for_request(first, may_park);
                if (end == IdleEnd::park) {
                    park(first);
                    co_return;
                }
                open = end == IdleEnd::request;
            }
            if (open) {
                open = co_await serve_request();
            }
            if (!open) {
                co_await close();
            }
        }
        conn_.deadline.disarm();
        error_code ignored;
        conn_.socket().close(ignored);
        release_exchange();
        if constexpr (ClientConnection<Stream>::tls) {
            // Its OpenSSL session and record buffers go back to malloc with the stream: a
            // burst of TLS connections left tens of MiB in the RSS, no trim ever counting them.
            // (One that never got through its handshake took none: not counted.)
            if (!handshaken_) {
                co_return;
            }
            const Limits& limits = conn_.config.limits;
            conn_.worker.heap_trim().freed(tls_connection_bytes, limits.heap_trim_after,
                                           limits.heap_trim_delay);
        }
    }

  private:
    // Who the client is: the socket's peer (as the accept gave it), or what the PROXY header a
    // load balancer in front sent says. False when the connection is to be closed (a missing
    // or refused header).
    Task<bool> identify_client() {
        Socket& socket = conn_.socket();
        error_code ec;
        const Config& config = conn_.config;
        if (conn_.listener >= config.listeners.size()) {
            co_return false;
        }
        const ListenerConfig& listener = config.listeners[conn_.listener];
        ClientIdentity& client = conn_.client;
        const auto& fixed_local = conn_.worker.fixed_local_endpoint(conn_.listener);
        client.endpoints.destination = fixed_local ? *fixed_local : socket.local_endpoint(ec);
        if (ec) {
            co_return false;
        }
        if (listener.proxy_protocol) {
            auto origin =
                co_await read_proxy_header(conn_.worker, config, listener, socket, conn_.handle());
            if (!origin) {
                co_return false;
            }
            client.endpoints = *origin;
        }
        client.address = client.endpoints.source.address();
        client.ip = address_text(client.address);
        conn_.upstreams.set_client(client.endpoints);
        // TCP_NODELAY: inherited from the listener (worker.cpp).
        // Forwarding headers are believed only from a trusted proxy. Behind a PROXY header the
        // HTTP peer is the client the header named (the balancer in front is transparent), so
        // that address is judged, never the balancer's: a header that named none (UNKNOWN,
        // LOCAL) leaves the client unknown, and an unknown client is not trusted.
        client.trusted =
            !client.endpoints.unnamed && config.trusted_proxies.contains(client.address);
        co_return true;
    }

    Task<bool> handshake() {
        if constexpr (ClientConnection<Stream>::tls) {
            conn_.deadline.arm(conn_.config.timeouts.tls_handshake, ConnectionDeadline::client);
            // OpenSSL takes its record and handshake buffers (~40 KB) at its first read: a
            // connection that has sent nothing yet (a flood of silent ones) costs none of it.
            // The peek that found nothing found no end of stream either: the next input is a
            // poller event, and the wait needs no syscall (socket_drain.hpp). A connection just
            // accepted without defer_accept, with no input reported since (Worker::accept_one
            // marked it drained at its registration, which reports a ClientHello already there),
            // waits before it peeks, as a plain connection's first read does: a peek now would
            // mostly find nothing. With defer_accept it was not marked: the ClientHello is
            // there, and the peek finds it. Not behind a PROXY header, whose reader's reads leave
            // the mark their own.
            Socket& socket = conn_.socket();
            const bool behind_header = conn_.config.listeners[conn_.listener].proxy_protocol;
            FirstByte first{FirstByte::none_yet};
            if (behind_header || input_seen_since_drained(socket)) {
                first = peek_first_byte(socket.native_handle());
            }
            if (first.kind == FirstByte::none_yet) {
                assume_drained(socket);
                auto [wec, none] =
                    co_await socket.async_receive(ReadinessWait(), Socket::message_peek, nothrow);
                if (wec) {
                    count_handshake_failure();
                    co_return false;
                }
                first = peek_first_byte(socket.native_handle());
            }
            if (first.kind == FirstByte::ended) {  // closed (or reset) before a ClientHello
                count_handshake_failure();
                co_return false;
            }
            if (first.plain_http()) {
                WorkerStats::add(conn_.worker.stats().tls_handshake_failures);
                co_await answer_plain_http();
                co_return false;
            }
            auto [ec] =
                co_await conn_.stream.async_handshake(asio::ssl::stream_base::server, nothrow);
            if (ec) {
                count_handshake_failure();
                co_return false;
            }
        }
        co_return true;
    }

    // Unless the connection was closed to make room (counted as such, not as a failure).
    void count_handshake_failure() {
        if (!conn_.handle().slot_released) {
            WorkerStats::add(conn_.worker.stats().tls_handshake_failures);
        }
    }

    // A plain HTTP request on a TLS listener gets a plain answer that says so (as nginx does),
    // not a handshake failure the client would see as an empty reply. Then the client's request
    // is drained for a bounded time, so our close does not reset the answer away.
    Task<void> answer_plain_http() {
        static constexpr std::string_view status = "HTTP/1.1 400 Bad Request\r\nDate: ";
        static constexpr std::string_view head =
            "\r\nContent-Type: text/plain\r\nContent-Length: 59\r\n"
            "X-BG-Error: plain HTTP request sent to a TLS listener\r\nConnection: close\r\n\r\n";
        static constexpr std::string_view body =
            "400 Bad Request: plain HTTP request sent to a TLS listener\n";
        Socket& socket = conn_.socket();
        // The answer to HEAD ends with its head (RFC 9110 9.3.2); every answer has a Date.
        const bool head_only = request_is_head(socket.native_handle());
        const std::array<asio::const_buffer, 4> answer{
            asio::buffer(status), asio::buffer(http_date_now()), asio::buffer(head),
            asio::buffer(body.data(), head_only ? 0 : body.size())};
        auto [ec, n] = co_await asio::async_write(socket, answer, nothrow);
        if (ec) {
            co_return;
        }
        error_code ignored;
        socket.shutdown(tcp::socket::shutdown_send, ignored);
        conn_.deadline.arm(conn_.config.timeouts.client_linger, ConnectionDeadline::client);
        std::array<char, 4096> scratch;
        for (std::size_t discarded = 0; discarded < 65536;) {
            forget_drained(socket);  // socket_drain.hpp
            auto [rec, got] = co_await socket.async_read_some(asio::buffer(scratch), nothrow);
            if (rec) {
                break;
            }
            discarded += got;
        }
    }

    // A connection waiting for its next request, or its first, is parked (parked_client.hpp):
    // it then costs its socket and identity (and its TLS state), no frame, session or timer.
    // Not one keeping a backend connection of its own, not while draining, and not a TLS one
    // whose TLS state holds bytes already read (a pipelined request): the socket would not
    // say they are there.
    // A connection whose next request came within client_park_after of its park is a busy one:
    // from now on it waits that long before it is parked again. (One that sent a request and
    // went quiet, the common idle case and an idle flood's, parks at once.) A new connection
    // waits that long for its first request too: it usually follows the connect at once, and
    // parking in between would cost a second session per connection. A flood of connections
    // that send nothing holds sessions for client_park_after each, then parks them.
    bool came_back_soon(const ParkedClient& parked) const {
        const auto& timeouts = conn_.config.timeouts;
        const auto parked_at = parked.expires - (parked.served == 0 ? timeouts.client_header
                                                                    : timeouts.client_keepalive);
        return parked.served > 0 &&
               std::chrono::steady_clock::now() - parked_at < timeouts.client_park_after;
    }

    // A TLS connection's state may hold bytes already read from the socket (a pipelined
    // request), which the socket would not show.
    bool tls_holds_input() {
        if constexpr (ClientConnection<Stream>::tls) {
            return conn_.stream.holds_records();
        }
        return false;
    }

    bool request_waiting() {
        return tls_holds_input() || input_waiting(conn_.socket().native_handle());
    }

    bool can_park() {
        return !tls_holds_input() && !conn_.upstreams.holds_private() && !conn_.worker.draining() &&
               !conn_.last_request && !conn_.linger;
    }

    // The wait for the first request is bounded by the header timeout, later ones by the
    // keep-alive timeout, as in wait_for_request().
    // (A TLS connection parked from its idle read: that read ended wanting more from the
    // socket, so any bytes its TLS state holds are part of a record the socket will complete.)
    void park(bool first) {
        release_exchange();
        conn_.deadline.disarm();
        conn_.close_watch.stop();
        auto parked = std::make_unique<ParkedClient>(std::move(conn_.stream));
        parked->config = conn_.config_holder;
        parked->listener = conn_.listener;
        parked->tracked = std::move(conn_.tracked);
        parked->client = std::move(conn_.client);
        parked->served = served_;
        const auto& timeouts = conn_.config.timeouts;
        auto refused = conn_.worker.parked().park(
            std::move(parked), first ? timeouts.client_header : timeouts.client_keepalive);
        if (refused) {
            // Closed with the record; the session's accounting (and the handle its close
            // watch refers to) stays the session's until it ends.
            conn_.tracked = std::move(refused->tracked);
        }
    }

    // Between requests: only the keep-alive idle timeout applies, and a graceful shutdown may
    // close the connection. An idle connection holds no buffer: the first bytes land in a
    // small one, and the exchange state (buffers, parsers) is taken when a request arrives
    // (most requests fit whole in the first read). A coroutine of its own: while a connection
    // is idle only this small frame waits, not a request's.
    enum class IdleEnd { request, closed, park };
    Task<IdleEnd> wait_for_request(bool first, bool may_park) {
        release_exchange();
        if (conn_.worker.draining() && !request_waiting()) {
            co_return IdleEnd::closed;  // one that came is served (and its answer closes)
        }
        const auto& timeouts = conn_.config.timeouts;
        // Before any request (also after a park and a resume) the head is due client_header
        // after the wait began, whole: as nginx's client_header_timeout and HAProxy's
        // timeout http-request run from the connect.
        const bool before_first = first || served_ == 0;
        conn_.deadline.arm(before_first ? timeouts.client_header : timeouts.client_keepalive,
                           ConnectionDeadline::client);
        conn_.header_clock_running = before_first;
        conn_.handle().idle = true;
        // A wait that cannot park (a resumed connection's bytes, a TLS record begun, a private
        // backend connection kept) holds its session and slot: at the connection limit it
        // makes room as a connection still opening does. A TLS client sending one byte of a
        // record after each resume held a slot for client_keepalive, out of every eviction's
        // reach, where a plain one's byte of a head was evicted after evict_opening_after.
        const bool evictable = !may_park && !conn_.handle().OpeningHook::is_linked();
        if (evictable) {
            conn_.worker.opening(conn_.handle());
        }
        if (may_park) {
            conn_.worker.parked().wait_idle(idle_wait_, conn_.socket(), timeouts.client_park_after);
        } else {
            // An end the client sent with its last request would go unseen until the timeout;
            // a parked connection's registration reports it (socket_drain.hpp).
            forget_drained(conn_.socket());
        }
        auto [ec, n] =
            co_await conn_.stream.async_read_some(draining(asio::buffer(first_bytes_)), nothrow);
        if (idle_wait_.is_linked()) {
            idle_wait_.unlink();
        }
        if (evictable) {
            conn_.worker.opened(conn_.handle());  // (read_head links it again if need be)
        }
        conn_.handle().idle = false;
        if (conn_.handle().slot_released) {
            // Closed to make room: a read the poller completed in the same turn still brings
            // its bytes, and must not become a request nobody will get the answer to.
            co_return IdleEnd::closed;
        }
        if (ec) {
            const bool park = may_park && idle_wait_.park && ec == asio::error::operation_aborted &&
                              !conn_.deadline.expired() && !conn_.worker.draining();
            co_return park ? IdleEnd::park : IdleEnd::closed;
        }
        take_exchange();
        // (buffer_size may be below first_bytes_'s size.)
        auto into = ex_->buffer.prepare(std::max(conn_.read_chunk(), n));
        std::memcpy(into.data(), first_bytes_.data(), n);
        ex_->buffer.commit(n);
        co_return IdleEnd::request;
    }

    // One request, from its head to the end of its response; whether the connection stays.
    // Its exchange lives in this frame, which exists only while the request does.
    Task<bool> serve_request() {
        RequestExchange<Stream> request(conn_, *ex_);
        if (!co_await request.read_head()) {
            co_return false;
        }
        WorkerStats::add(conn_.worker.stats().requests);
        ++served_;
        const unsigned most = conn_.config.limits.max_requests_per_connection;
        conn_.last_request = most != 0 && served_ >= most;
        co_return co_await request.respond();
    }

    // The exchange state of a request that starts arriving, from the worker's pool, with the
    // bounds on what each side can make the proxy buffer: a head, or a chunk-size line and a
    // trailer, plus one read (the readers check before they reach them).
    void take_exchange() {
        ex_ = conn_.worker.exchanges().take();
        const Limits& limits = conn_.config.limits;
        const std::size_t framing = limits.max_chunk_line + limits.max_trailer;
        const std::size_t read = limits.bulk_read_chunk();
        ex_->buffer.max_size(std::max(limits.max_request_header, framing) + 2 * read);
        ex_->upstream_buffer.max_size(std::max(limits.max_response_header, framing) + 2 * read);
    }

    // Between requests a connection keeps no buffer, parser or head: an edge proxy holds many
    // idle keep-alive connections. The state goes back to the worker's pool, warm.
    void release_exchange() {
        if (ex_) {
            conn_.worker.exchanges().give(std::move(ex_), conn_.config.limits);
        }
    }

    // TLS close_notify (so the client knows the response was not truncated), our FIN, and
    // after an error response the lingering drain; each bounded. After a response cut short,
    // a reset instead (as HAProxy and nginx abort it): a FIN would end a body delimited by
    // the close as if it were whole.
    Task<void> close() {
        conn_.close_watch.stop();
        if (conn_.cut) {
            error_code ignored;
            conn_.socket().set_option(asio::socket_base::linger(true, 0), ignored);
            conn_.socket().close(ignored);
            co_return;
        }
        const auto& timeouts = conn_.config.timeouts;
        if constexpr (ClientConnection<Stream>::tls) {
            conn_.deadline.arm(timeouts.client_linger, ConnectionDeadline::client);
            auto [ec] = co_await conn_.stream.async_shutdown(nothrow);
            if (!ec || ec == asio::error::eof) {
                // The client's close_notify (or its connection's end) came: it sends nothing
                // more, and has usually closed its socket by now (a shutdown would fail with
                // ENOTCONN).
                co_return;
            }
        }
        // A shutdown, not the close alone: with client bytes still unread, close() sends a
        // reset and throws away what the kernel holds of the response (its last piece waits
        // there for this FIN); the shutdown sends them both first.
        error_code ignored;
        conn_.socket().shutdown(tcp::socket::shutdown_send, ignored);
        if (!conn_.linger || !ex_) {
            co_return;
        }
        // Closing a socket with unread input makes the kernel send a reset, which can destroy
        // the error response before the client reads it. So read and discard what the client
        // still sends, for a bounded time and amount (nginx's lingering close).
        conn_.deadline.arm(timeouts.client_linger, ConnectionDeadline::client);
        std::vector<char>& scratch = conn_.relay.piece(ex_->request_body);
        std::size_t discarded = 0;
        while (discarded < (1u << 20)) {
            forget_drained(conn_.socket());  // socket_drain.hpp
            auto [ec, n] = co_await conn_.stream.async_read_some(asio::buffer(scratch), nothrow);
            if (ec) {
                break;
            }
            discarded += n;
        }
    }

    ClientConnection<Stream> conn_;
    std::unique_ptr<ExchangeState> ex_;  // while a request is in flight (see take_exchange())
    // Where an idle connection's next request lands: a head of 2 KiB or less (a browser's,
    // cookies and all; an API client's with its token) in one read. At 256 bytes, a 600-byte
    // head took two recvs, five syscalls a request where four do (bench shape `browser`).
    std::array<char, 2048> first_bytes_;
    unsigned served_ = 0;      // requests on this connection so far
    bool resumed_ = false;     // from a park: no PROXY header or handshake again
    bool handshaken_ = false;  // a TLS handshake completed, now or before a park
    IdleWait idle_wait_;       // while idle, before it is parked
    bool busy_ = false;        // its requests come close together: parked later
};

Task<void> serve_parked(Worker& worker, std::unique_ptr<ParkedClient> parked, Socket socket) {
    if (parked->tls) {
        TlsStream stream(std::move(socket), std::move(parked->tls));
        auto session = std::make_unique<ClientSession<TlsStream>>(worker, std::move(*parked),
                                                                  std::move(stream));
        parked.reset();
        co_await session->run();
    } else {
        auto session =
            std::make_unique<ClientSession<Socket>>(worker, std::move(*parked), std::move(socket));
        parked.reset();
        co_await session->run();
    }
}

}  // namespace

void resume_parked(Worker& worker, std::unique_ptr<ParkedClient> parked, Socket socket) {
    asio::co_spawn(worker.io().get_executor(),
                   serve_parked(worker, std::move(parked), std::move(socket)), asio::detached);
}

Task<void> serve_client(Worker& worker, Socket socket, std::size_t listener_index,
                        tcp::endpoint peer) {
    // The config and its TLS contexts this connection started with stay alive as long as it.
    std::shared_ptr<const Config> config = worker.config();
    const auto& listeners = config->listeners;
    // The session is allocated at its exact size, apart from this frame (a frame keeps room
    // for every local of every branch: a plain connection would carry a TLS session's too).
    if (listener_index < listeners.size() && listeners[listener_index].tls_context) {
        using TlsSession = ClientSession<TlsStream>;
        auto& context = listeners[listener_index].tls_context->initial();
        auto session = std::make_unique<TlsSession>(worker, std::move(config), listener_index,
                                                    TlsStream(std::move(socket), context), peer);
        co_await session->run();
    } else {
        auto session = std::make_unique<ClientSession<Socket>>(
            worker, std::move(config), listener_index, std::move(socket), peer);
        co_await session->run();
    }
}

}  // namespace bg
