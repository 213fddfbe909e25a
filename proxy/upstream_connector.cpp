#include "upstream_connector.hpp"

#include <openssl/ssl.h>

#include <boost/asio/write.hpp>

#include "backend_tls_context.hpp"
#include "config.hpp"
#include "connection_deadline.hpp"
#include "descriptor_limit.hpp"
#include "exchange_state.hpp"
#include "proxy_protocol.hpp"
#include "session_handle.hpp"
#include "socket_drain.hpp"
#include "worker.hpp"

namespace bg {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

UpstreamConnector::UpstreamConnector(Worker& worker, const Config& config,
                                     ConnectionDeadline& deadline, SessionHandle& handle)
    : worker_(worker), config_(config), deadline_(deadline), handle_(handle) {}

Task<Connected> UpstreamConnector::connect(const RoutingTable& table, Colour colour, bool verify,
                                           ExchangeState& ex, UpstreamLease& lease) {
    Connected result = Connected::no_backend;
    bool crossed = false;
    for (unsigned attempt = 0; attempt < config_.upstream.connect_attempts; ++attempt) {
        const Backend* backend = attempt == 0 ? private_backend(table, colour) : nullptr;
        if (backend == nullptr) {
            backend = worker_.balancer().pick_backend(table, colour, ex.tried);
        }
        if (backend == nullptr && config_.retries.cross_colour) {
            // This colour has nothing left to try: the other one serves rather than fail.
            backend = worker_.balancer().pick_backend(table, other(colour), ex.tried);
        }
        if (backend == nullptr) {
            co_return result;
        }
        crossed = crossed || backend->colour != colour;
        if (reuse_idle(*backend, verify, ex, lease)) {
            co_return Connected::yes;
        }
        result = co_await open_recorded(*backend, ex, lease);
        if (result != Connected::refused || handle_.client_gone) {
            co_return result;  // (a client gone, or cut at shutdown: no other attempt)
        }
    }
    if (!crossed && config_.retries.cross_colour && !handle_.client_gone) {
        // Every attempt in this colour failed to connect (its backends killed, and not yet
        // marked down by their checks): one attempt on the other colour before a 502.
        if (const Backend* backend =
                worker_.balancer().pick_backend(table, other(colour), ex.tried)) {
            result = reuse_idle(*backend, verify, ex, lease)
                         ? Connected::yes
                         : co_await open_recorded(*backend, ex, lease);
        }
    }
    co_return result;
}

// Not a coroutine: a pooled connection, the common case, costs no frame.
bool UpstreamConnector::reuse_idle(const Backend& backend, bool verify, ExchangeState& ex,
                                   UpstreamLease& lease) {
    ex.tried.push_back(backend.id);
    if (auto idle = idle_connection(backend, verify)) {
        lease.hold(backend, std::move(*idle), true);
        return true;
    }
    return false;
}

Task<Connected> UpstreamConnector::open_recorded(const Backend& backend, ExchangeState& ex,
                                                 UpstreamLease& lease) {
    const Connected result = co_await open(backend, ex, lease);
    if (result == Connected::refused && !handle_.client_gone) {
        // (Nor a connect the shutdown grace's end aborted: the backend did nothing wrong.)
        // (The proxy's own lack of descriptors says nothing of the backend: no outcome is
        // recorded, no ejection, no revert; and no other backend would fare better.)
        worker_.record_outcome(backend, TryOutcome::connect_failed);
    }
    co_return result;
}

Task<Connected> UpstreamConnector::reconnect(ExchangeState& ex, UpstreamLease& lease) {
    const Backend& backend = lease.backend();
    lease.drop();
    co_return co_await open(backend, ex, lease);
}

void UpstreamConnector::keep(UpstreamLease& lease) {
    const Backend& backend = lease.backend();
    if (backend.send_proxy_protocol) {
        private_.emplace(
            PrivateUpstream{backend.id, lease.give_back(), std::chrono::steady_clock::now()});
        handle_.kept = true;
        handle_.kept_backend = backend.id;
    } else {
        worker_.upstream_pool().give_back(backend.id, lease.give_back());
    }
}

// The backend of this session's private connection, while it is of `colour` and takes new
// requests: its connection is kept warm rather than a new one opened with a new PROXY header
// (HAProxy's prefer-last-server for connections it cannot share).
const Backend* UpstreamConnector::private_backend(const RoutingTable& table, Colour colour) const {
    if (!private_) {
        return nullptr;
    }
    for (const Backend& backend : table.pool(colour).backends) {
        if (backend.id == private_->backend_id) {
            return backend.takes_new_requests() ? &backend : nullptr;
        }
    }
    return nullptr;
}

// An idle connection to the backend made as it now asks (TLS context, PROXY header): this
// session's private one, or one from the worker's pool, by the pool's rule.
std::optional<UpstreamStream> UpstreamConnector::idle_connection(const Backend& backend,
                                                                 bool verify) {
    UpstreamPool& pool = worker_.upstream_pool();
    if (!backend.send_proxy_protocol) {
        return pool.lease(backend.id, backend.address.key(), verify, backend.tls.get());
    }
    std::optional<PrivateUpstream> kept = std::move(private_);
    private_.reset();
    handle_.kept = false;
    // Checked every time (one peek), whatever `verify` says: unlike a pooled connection, it is
    // not watched while the session waits for its client, and bytes the backend sent since its
    // last response must not be read as the next one.
    if (kept && kept->backend_id == backend.id &&
        pool.reusable(kept->stream, kept->since, backend.address.key(), true, backend.tls.get())) {
        return std::move(kept->stream);
    }
    return std::nullopt;  // a kept connection to another backend closes here
}

// TCP, then the PROXY header and the TLS handshake when the backend's pool asks for them, all
// within upstream_connect. While it connects, the socket is the handle's upstream: the
// deadline closes it there.
Task<Connected> UpstreamConnector::open(const Backend& backend, ExchangeState& ex,
                                        UpstreamLease& lease) {
    error_code ec;
    tcp::endpoint endpoint(asio::ip::make_address(backend.address.ip, ec), backend.address.port);
    Socket connection(handle_.client->get_executor());
    handle_.upstream = &connection;
    handle_.upstream_backend = backend.id;
    deadline_.arm(config_.timeouts.upstream_connect, ConnectionDeadline::upstream);
    // Opened first, to see its number: near the descriptor limit the connection is not made
    // (connection_limits.hpp), as when none is left.
    connection.open(endpoint.protocol(), ec);
    if (!ec && worker_.upstream_near_descriptor_limit(connection.native_handle())) {
        connection.close(ec);
        ec = boost::system::error_code(EMFILE, boost::system::system_category());
    }
    if (!ec) {
        std::tie(ec) = co_await connection.async_connect(endpoint, nothrow);
    }
    if (!ec && backend.send_proxy_protocol) {
        // A client the balancer's own header left unnamed is not named to the backend either.
        const std::string header = client_.unnamed
                                       ? encode_proxy_v2_local()
                                       : encode_proxy_v2(client_.source, client_.destination);
        std::tie(ec, std::ignore) =
            co_await asio::async_write(connection, asio::buffer(header), nothrow);
    }
    handle_.upstream = nullptr;
    if (ec) {
        if (out_of_descriptors(ec)) {
            WorkerStats::add(worker_.stats().out_of_descriptors);
            co_return Connected::out_of_descriptors;
        }
        WorkerStats::add(worker_.stats().upstream_connect_failures);
        co_return Connected::refused;
    }
    connection.set_option(tcp::no_delay(true), ec);
    stop_watching_writable(connection);  // socket_drain.hpp
    if (backend.tls) {
        lease.hold(backend,
                   UpstreamStream(std::move(connection), backend.address.key(), backend.tls),
                   false);
        if (!co_await handshake(backend, lease.stream(), ex)) {
            lease.drop();
            co_return Connected::refused;
        }
    } else {
        lease.hold(backend, UpstreamStream(std::move(connection), backend.address.key()), false);
    }
    worker_.traffic().count_connect(backend.id);
    co_return Connected::yes;
}

// The TLS handshake with a backend, resuming this worker's last session with it when it has
// one. A failure is a failed connect (the next backend is tried), counted, and named in the
// access log.
Task<bool> UpstreamConnector::handshake(const Backend& backend, UpstreamStream& stream,
                                        ExchangeState& ex) {
    SSL* ssl = stream.tls()->native_handle();
    std::string why;
    if (backend.tls->prepare(ssl, backend.address, why)) {
        if (SSL_SESSION* session = worker_.upstream_pool().tls_session(
                backend.id, backend.address.key(), backend.tls.get())) {
            SSL_set_session(ssl, session);
        }
        auto [ec] = co_await stream.tls()->async_handshake(asio::ssl::stream_base::client, nothrow);
        if (!ec) {
            co_return true;
        }
        why = deadline_.expired() ? "handshake timed out"
                                  : BackendTlsContext::handshake_error(ssl, ec.message());
    }
    WorkerStats::add(worker_.stats().upstream_tls_failures);
    WorkerStats::add(worker_.stats().upstream_connect_failures);
    if (worker_.logs_access()) {
        ex.connect_error = "TLS to " + backend.name + ": " + why;
    }
    co_return false;
}

}  // namespace bg
