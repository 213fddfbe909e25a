#include "client_session.hpp"

#include <openssl/ssl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <array>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/stream_traits.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/url/parse.hpp>
#include <optional>
#include <span>
#include <vector>

#include "access_record.hpp"
#include "backend_tls_context.hpp"
#include "body_relay.hpp"
#include "colour_hints.hpp"
#include "chunk_framing.hpp"
#include "client_close_watch.hpp"
#include "connection_deadline.hpp"
#include "descriptor_limit.hpp"
#include "exchange_outcome.hpp"
#include "exchange_state.hpp"
#include "forwarding_headers.hpp"
#include "message_head.hpp"
#include "proxy_header_reader.hpp"
#include "proxy_protocol.hpp"
#include "request_validation.hpp"
#include "tls_context.hpp"
#include "upstream_request.hpp"
#include "upstream_response.hpp"
#include "traffic_counters.hpp"
#include "upstream_lease.hpp"
#include "upstream_stream.hpp"
#include "worker.hpp"

namespace bg {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

// Untracks the session from its worker whatever way the coroutine ends.
class TrackedSession {
  public:
    TrackedSession(Worker& worker, Socket& client, std::size_t listener)
        : worker_(worker), listener_(listener) {
        handle_.client = &client;
        worker_.track(&handle_);
        WorkerStats::add(worker_.stats().connections_open);
    }
    ~TrackedSession() {
        worker_.untrack(&handle_);
        WorkerStats::sub(worker_.stats().connections_open);
        worker_.connection_closed(listener_);
    }
    SessionHandle& handle() { return handle_; }

  private:
    Worker& worker_;
    std::size_t listener_;
    SessionHandle handle_;
};

// One session code path for plain and TLS client streams.
template <class Stream>
class ClientSession {
  public:
    static constexpr bool tls = is_tls_stream<Stream>::value;

    ClientSession(Worker& worker, std::shared_ptr<const Config> config, std::size_t listener,
                  Stream stream)
        : worker_(worker),
          config_holder_(std::move(config)),
          config_(*config_holder_),
          listener_(listener),
          client_(std::move(stream)),
          tracked_(worker, socket(), listener),
          deadline_(socket().get_executor(), tracked_.handle()),
          relay_(deadline_, worker.stats(), read_chunk()),
          close_watch_(worker, tracked_.handle()) {}

    Task<void> run() {
        if (!co_await identify_client()) {
            error_code ignored;
            socket().close(ignored);
            co_return;
        }
        if constexpr (tls) {
            deadline_.arm(config_.timeouts.tls_handshake, ConnectionDeadline::client);
            auto [ec] = co_await client_.async_handshake(asio::ssl::stream_base::server, nothrow);
            if (ec) {
                WorkerStats::add(worker_.stats().tls_handshake_failures);
                deadline_.disarm();
                error_code ignored;
                socket().close(ignored);
                co_return;
            }
        }
        bool first = true;
        unsigned served = 0;
        for (;;) {
            request_started_ = false;
            served_slot_ = 0;
            // Idle, nothing pipelined: wait in a small frame (see wait_for_request()).
            // (No co_await inside && or ||: GCC 12 mishandles temporaries there.)
            bool got = ex_ && ex_->buffer.size() > 0;
            if (!got) {
                got = co_await wait_for_request(first);
            }
            if (got) {
                got = co_await read_request_header();
            }
            if (!got) {
                finish_request();  // a refused header is counted and logged too
                break;
            }
            first = false;
            WorkerStats::add(worker_.stats().requests);
            ++served;
            last_request_ = config_.limits.max_requests_per_connection != 0 &&
                            served >= config_.limits.max_requests_per_connection;
            const bool keep = co_await handle_request();
            close_watch_.stop();
            finish_request();
            if (!keep) {
                break;
            }
        }
        close_watch_.stop();
        error_code ignored;
        if constexpr (tls) {
            // close_notify, so the client knows the response was not truncated; bounded.
            deadline_.arm(config_.timeouts.client_linger, ConnectionDeadline::client);
            co_await client_.async_shutdown(nothrow);
        }
        socket().shutdown(tcp::socket::shutdown_send, ignored);
        if (linger_) {
            co_await drain_before_close();
        }
        deadline_.disarm();
        socket().close(ignored);
        release_exchange();
    }

  private:
    Socket& socket() { return beast::get_lowest_layer(client_); }


    // Who the client is: the socket's peer, or what the PROXY header a load balancer in front
    // sent says. False when the connection is to be closed (a missing or refused header).
    Task<bool> identify_client() {
        error_code ec;
        const auto peer = socket().remote_endpoint(ec);
        if (ec || listener_ >= config_.listeners.size()) {
            co_return false;
        }
        const ListenerConfig& listener = config_.listeners[listener_];
        client_endpoints_ = {peer, socket().local_endpoint(ec)};
        if (listener.proxy_protocol) {
            auto origin =
                co_await read_proxy_header(worker_, config_, listener, socket(), tracked_.handle());
            if (!origin) {
                co_return false;
            }
            client_endpoints_ = *origin;
        }
        client_address_ = client_endpoints_.source.address();
        client_ip_ = client_address_.to_string();
        server_authority_ = authority_of(client_endpoints_.destination);
        socket().set_option(tcp::no_delay(true), ec);
        // Forwarding headers are believed only from a trusted proxy. Behind a PROXY header the
        // HTTP peer is the client the header named (the balancer in front is transparent), so
        // that address is judged, never the balancer's.
        trusted_peer_ = config_.trusted_proxies.contains(client_address_);
        co_return true;
    }

    // ---- reading the request header ------------------------------------------------------

    // True when a request header is in ex_->parser (its first bytes are in ex_->buffer); false
    // when the connection should close (a
    // clean end, a timeout, or an error already answered).
    Task<bool> read_request_header() {
        ex_->record = AccessRecord{};
        ex_->parser.emplace();
        ex_->request_chunks = chunk_guard();
        ex_->parser->on_chunk_header(ex_->request_chunks);
        ex_->parser->header_limit(static_cast<std::uint32_t>(config_.limits.max_request_header + 1));
        if (config_.limits.max_request_body > 0) {
            ex_->parser->body_limit(config_.limits.max_request_body);
        } else {
            ex_->parser->body_limit(boost::none);
        }
        ex_->parser->eager(false);
        // The whole header must arrive within client_header (slowloris).
        deadline_.arm(config_.timeouts.client_header, ConnectionDeadline::client);
        std::size_t checked = 0;  // bytes already seen to hold no line end
        for (;;) {
            Refusal refusal;
            switch (parse_request_head(checked, refusal)) {
                case HeadRead::done:
                    co_return true;
                case HeadRead::invalid:
                    co_await refuse(refusal);
                    co_return false;
                case HeadRead::need_more:
                    break;
            }
            auto [ec, n] = co_await client_.async_read_some(
                ex_->buffer.prepare(read_room(ex_->buffer)), nothrow);
            if (ec && deadline_.expired()) {
                // The deadline has closed the socket already: the client is simply dropped (as
                // nginx does for client_header_timeout).
                WorkerStats::add(worker_.stats().client_header_timeouts);
                co_return false;
            }
            if (ec) {
                co_return false;
            }
            ex_->buffer.commit(n);
        }
    }

    // Screens and parses the request head in ex_->buffer once all of it is there; on a refusal
    // says which status and why (the record is begun either way).
    HeadRead parse_request_head(std::size_t& checked, Refusal& refusal) {
        const std::size_t skipped = skip_leading_empty_lines();
        checked = checked > skipped ? checked - skipped : 0;
        char* data = static_cast<char*>(ex_->buffer.data().data());
        const std::string_view bytes(data, ex_->buffer.size());
        // A head that trickles in is scanned again only when a line has ended (else a
        // byte-at-a-time client would make the scan quadratic), or to refuse it as too long.
        RawHeaderScan scan;
        if (bytes.find('\n', checked) != std::string_view::npos ||
            bytes.size() >= config_.limits.max_request_line) {
            scan = scan_raw_header(bytes, request_header_limits());
        }
        checked = bytes.size();
        if (scan.verdict == RawHeaderVerdict::incomplete) {
            return HeadRead::need_more;
        }
        if (scan.verdict != RawHeaderVerdict::complete) {
            begin_record(nullptr);  // refused before it could be parsed
            refusal = refusal_for(scan.verdict);
            return HeadRead::invalid;
        }
        if (normalize_request_version({data, bytes.find("\r\n")}) ==
            StartLineVersion::other_major) {
            begin_record(nullptr);
            refusal = {http::status::http_version_not_supported, "HTTP version not supported"};
            return HeadRead::invalid;
        }
        error_code ec;
        const std::size_t used = ex_->parser->put(asio::buffer(data, scan.header_end), ec);
        ex_->buffer.consume(used);
        begin_record(ex_->parser->is_header_done() ? &ex_->parser->get() : nullptr);
        if (ec == http::error::body_limit) {
            refusal = {http::status::payload_too_large, "request body too large",
                       LimitBreach::request_body};
            return HeadRead::invalid;
        }
        if (ec || !ex_->parser->is_header_done()) {
            ex_->body_error = ec ? ec.message() : "malformed request header";
            refusal = {http::status::bad_request, ex_->body_error};
            return HeadRead::invalid;
        }
        return HeadRead::done;
    }

    // The answer to a head the raw scan refused.
    static Refusal refusal_for(RawHeaderVerdict verdict) {
        switch (verdict) {
            case RawHeaderVerdict::request_line_too_long:
                return {http::status::uri_too_long, "request line too long",
                        LimitBreach::request_line};
            case RawHeaderVerdict::header_too_long:
                return {http::status::request_header_fields_too_large, "request header too large",
                        LimitBreach::request_header};
            case RawHeaderVerdict::too_many_fields:
                return {http::status::request_header_fields_too_large, "too many header fields",
                        LimitBreach::header_fields};
            case RawHeaderVerdict::field_too_long:
                return {http::status::request_header_fields_too_large, "header field too large",
                        LimitBreach::field_size};
            case RawHeaderVerdict::obs_fold:
                return {http::status::bad_request, "obsolete line folding"};
            case RawHeaderVerdict::nul_byte:
                return {http::status::bad_request, "NUL byte in header"};
            case RawHeaderVerdict::bare_cr:
                return {http::status::bad_request, "bare CR in header"};
            default:
                return {http::status::bad_request, "bare LF in header"};
        }
    }

    // ---- metrics and the access log ---------------------------------------------------------

    // A request head arrived (parsed, or refused before it could be).
    void begin_record(const http::request<http::buffer_body>* request) {
        request_started_ = true;
        started_ = std::chrono::steady_clock::now();
        method_ = request != nullptr ? method_class(request->method()) : MethodClass::other;
        if (!worker_.logs_access()) {
            return;
        }
        ex_->record.start_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                    std::chrono::system_clock::now().time_since_epoch())
                                    .count();
        ex_->record.client = client_ip_;
        if (request != nullptr) {
            ex_->record.method = std::string(request->method_string());
            ex_->record.path = std::string(request->target().substr(0, 2048));
        }
    }

    // The request is over: count it and log it.
    void finish_request() {
        if (!request_started_) {
            return;
        }
        request_started_ = false;
        const auto elapsed = std::chrono::steady_clock::now() - started_;
        if (config_.metrics) {
            TrafficCounters& traffic = worker_.traffic();
            if (ex_->record.status != 0) {
                traffic.count_response(served_slot_, method_, ex_->record.status);
            }
            if (served_slot_ != 0) {
                traffic.request_duration[served_colour_].observe(
                    std::chrono::duration<double>(elapsed).count());
                if (ex_->record.upstream_ms > 0) {
                    traffic.upstream_duration[served_colour_].observe(ex_->record.upstream_ms / 1000);
                }
                traffic.request_body_bytes[served_colour_] += ex_->record.bytes_in;
                traffic.response_body_bytes[served_colour_] += ex_->record.bytes_out;
            }
        }
        if (worker_.logs_access()) {
            ex_->record.duration_ms = std::chrono::duration<double, std::milli>(elapsed).count();
            worker_.log_access(to_json_line(ex_->record));
        }
    }

    std::size_t read_chunk() const {
        return std::max<std::size_t>(4096, config_.limits.buffer_size);
    }

    // How much to read into `buffer` next: the room its block still has, so the rest of a head
    // or body piece does not reallocate it; a full read when little room is left.
    std::size_t read_room(const beast::flat_buffer& buffer) const {
        const std::size_t room = buffer.capacity() - buffer.size();
        return room >= 1024 ? room : read_chunk();
    }

    ChunkHeaderGuard chunk_guard() const {
        return {config_.limits.max_chunk_line, config_.limits.max_trailer};
    }

    HeaderLimits request_header_limits() const {
        return {config_.limits.max_request_line, config_.limits.max_request_header,
                config_.limits.max_header_fields, config_.limits.max_field_size};
    }

    // Between requests: only the keep-alive idle timeout applies, and a graceful shutdown may
    // close the connection. An idle connection holds no buffer: the first bytes land in a
    // small one, and the exchange state (buffers, parsers) is taken when a request arrives (most
    // requests fit whole in the first read). A coroutine of its own: while a connection is idle
    // only this small frame waits, not the header reader's.
    Task<bool> wait_for_request(bool first) {
        release_exchange();
        if (worker_.draining()) {
            co_return false;
        }
        deadline_.arm(first ? config_.timeouts.client_header : config_.timeouts.client_keepalive,
                      ConnectionDeadline::client);
        tracked_.handle().idle = true;
        auto [ec, n] = co_await client_.async_read_some(asio::buffer(first_bytes_), nothrow);
        tracked_.handle().idle = false;
        if (ec) {
            co_return false;
        }
        take_exchange();
        auto into = ex_->buffer.prepare(read_chunk());
        std::memcpy(into.data(), first_bytes_.data(), n);
        ex_->buffer.commit(n);
        co_return true;
    }

    // The exchange state of a request that starts arriving, from the worker's pool, with the
    // bounds on what each side can make the proxy buffer: a head, or a chunk-size line and a
    // trailer, plus one read (the readers check before they reach them).
    void take_exchange() {
        ex_ = worker_.exchanges().take();
        const std::size_t framing = config_.limits.max_chunk_line + config_.limits.max_trailer;
        ex_->buffer.max_size(std::max(config_.limits.max_request_header, framing) +
                             2 * read_chunk());
        ex_->upstream_buffer.max_size(std::max(config_.limits.max_response_header, framing) +
                                      2 * read_chunk());
    }

    // Between requests a connection keeps no buffer, parser or head: an edge proxy holds many
    // idle keep-alive connections. The state goes back to the worker's pool, warm.
    void release_exchange() {
        if (ex_) {
            worker_.exchanges().give(std::move(ex_), config_.limits.spare_exchanges);
        }
    }


    // RFC 9112 2.2: a server should ignore empty lines received before the request line.
    std::size_t skip_leading_empty_lines() {
        std::size_t skipped = 0;
        for (;;) {
            auto bytes =
                std::string_view(static_cast<const char*>(ex_->buffer.data().data()), ex_->buffer.size());
            if (!bytes.starts_with("\r\n")) {
                return skipped;
            }
            ex_->buffer.consume(2);
            skipped += 2;
        }
    }

    // ---- one request ------------------------------------------------------------------------

    // Returns whether the client connection stays open for another request.
    Task<bool> handle_request() {
        body_started_ = false;
        ex_->connect_error.clear();
        if (const Refusal refusal = check_request_head(*ex_->parser,
                                                       config_.limits.max_request_body)) {
            co_await refuse(refusal);
            co_return false;
        }
        const RequestFacts facts = request_facts(*ex_->parser);
        // One routing snapshot for the whole request, retries included. The colour is chosen
        // before any header rule runs, so no field named in Connection can change the route.
        RoutingTablePtr table = worker_.table();
        ex_->record.version = table->version();
        const Colour colour = choose_colour(*table);
        if (const Refusal refusal = rewrite_for_upstream(
                *ex_->parser, facts, {client_ip_, tls, trusted_peer_, server_authority_})) {
            co_await refuse(refusal);
            co_return false;
        }

        Upstream upstream;
        RetryState retries(worker_.retry_budget(), config_.retries, worker_.stats());
        std::optional<InFlight> in_flight;
        const Exchange outcome = co_await forward(*table, colour, facts, upstream, retries, in_flight);
        if (outcome == Exchange::response_ready) {
            co_return co_await relay_response(upstream, facts);
        }
        co_return co_await answer_failure(outcome, facts);
    }

    // A preview header (from an allowed network) or a sticky cookie may name the colour; else
    // the weights choose.
    Colour choose_colour(const RoutingTable& table) {
        auto& request = ex_->parser->get();
        const std::optional<Colour> preview =
            preview_colour(request, client_address_, config_.preview, table);
        const std::optional<Colour> sticky =
            preview ? std::nullopt : sticky_colour(request, config_.sticky, table);
        set_sticky_ = !config_.sticky.cookie.empty() && !preview && !sticky &&
                      table.pool(Colour::blue).weight_bp > 0 &&
                      table.pool(Colour::green).weight_bp > 0;
        return preview ? *preview : sticky ? *sticky : worker_.balancer().pick_colour(table);
    }

    // Sends the request to a backend of `colour` and reads the response head, connecting,
    // retrying and crossing colours as the config allows. `in_flight` holds the backend that
    // answers until the response is relayed.
    Task<Exchange> forward(const RoutingTable& table, Colour colour, const RequestFacts& facts,
                           Upstream& upstream, RetryState& retries,
                           std::optional<InFlight>& in_flight) {
        ex_->tried.clear();
        interim_sent_ = false;
        bool continue_sent = false;
        Exchange outcome = Exchange::upstream_failed;
        for (bool retry = false;; retry = true) {
            // The previous try's hold goes first: releasing it clears the session handle's
            // upstream, which must then point at the new connection (its deadline closes it).
            in_flight.reset();
            const Connected connected = co_await connect_upstream(table, colour, facts, upstream);
            if (connected != Connected::yes) {
                // After a retry, nowhere left to go: answer for the attempt that failed.
                co_return retry ? outcome : connect_failure(connected);
            }
            in_flight.emplace(worker_.balancer(), upstream.backend->id, tracked_.handle());
            // The last backend tried answers for the request in metrics and log, also when
            // the proxy reports its failure.
            served_slot_ = upstream.backend->id + 1;
            served_colour_ = index_of(upstream.backend->colour);
            if (worker_.logs_access()) {
                ex_->record.colour = to_string(upstream.backend->colour);
                ex_->record.backend = upstream.backend->name;
            }
            upstream_started_ = std::chrono::steady_clock::now();
            if (facts.expect_continue && !continue_sent && !ex_->parser->is_done()) {
                if (!co_await send_continue()) {
                    co_return Exchange::client_gone;
                }
                continue_sent = true;
            }
            outcome = co_await exchange(upstream, facts);
            // A reused connection that the backend had closed: an idempotent request none of
            // whose body was consumed is intact, so it goes once more on a fresh connection.
            // Anything else may have been processed: it is never sent twice.
            while (outcome == Exchange::upstream_failed && upstream.reused && facts.idempotent &&
                   !body_started_ && !interim_sent_ && !close_watch_.client_gone()) {
                upstream.stream.reset();
                upstream.reused = false;
                if (co_await connect_to(*upstream.backend, upstream) != Connected::yes) {
                    break;
                }
                outcome = co_await exchange(upstream, facts);
            }
            if (close_watch_.client_gone() && outcome != Exchange::response_ready) {
                co_return Exchange::client_gone;  // not the backend's failure: nothing recorded
            }
            const bool failed =
                outcome == Exchange::upstream_failed || outcome == Exchange::upstream_timeout;
            const bool server_error = outcome == Exchange::response_ready &&
                                      ex_->response_parser->get().result_int() >= 500 &&
                                      config_.outlier.count_5xx;
            worker_.record_outcome(upstream.backend->id,
                                   failed || server_error || outcome == Exchange::response_invalid);
            const TryFailure failure =
                outcome == Exchange::upstream_timeout ? TryFailure::timeout : TryFailure::reset;
            if (!failed ||
                !retries.may_retry(facts.idempotent, body_started_, interim_sent_, failure)) {
                co_return outcome;
            }
            // Retry elsewhere: the failed backend stays in ex_->tried, so it is not picked again.
            retries.retrying();
            ++ex_->record.retries;
            upstream.stream.reset();
            tracked_.handle().upstream = nullptr;
        }
    }

    Exchange connect_failure(Connected connected) const {
        switch (connected) {
            case Connected::no_backend: return Exchange::no_backend;
            case Connected::out_of_descriptors: return Exchange::out_of_descriptors;
            default: return Exchange::unreachable;
        }
    }

    Task<bool> send_continue() {
        static constexpr std::string_view continue_line = "HTTP/1.1 100 Continue\r\n\r\n";
        deadline_.arm(config_.timeouts.client_write, ConnectionDeadline::client);
        auto [ec, n] = co_await asio::async_write(client_, asio::buffer(continue_line), nothrow);
        co_return !ec;
    }

    // The proxy's own answer when no response came; returns whether the connection stays.
    Task<bool> answer_failure(Exchange outcome, const RequestFacts& facts) {
        // Without the whole request body read, the connection cannot carry another request.
        const bool can_continue = ex_->parser->is_done() && facts.keep_alive && !worker_.draining();
        switch (outcome) {
            case Exchange::response_ready:
                break;
            case Exchange::client_gone:
                if (close_watch_.client_gone()) {
                    WorkerStats::add(worker_.stats().client_aborts);
                    ex_->record.status = 499;  // nginx's code: the client closed first
                    ex_->record.error = "client closed the connection";
                }
                co_return false;
            case Exchange::body_too_large:
                worker_.stats().breach(LimitBreach::request_body);
                co_await reply_error(http::status::payload_too_large, "request body too large");
                co_return false;
            case Exchange::body_malformed:
                co_await reply_error(http::status::bad_request, ex_->body_error);
                co_return false;
            case Exchange::body_too_slow:
                // The deadline closed the socket: the 408 is for the log and the metrics.
                WorkerStats::add(worker_.stats().client_body_timeouts);
                ex_->record.status = 408;
                ex_->record.error = ex_->body_error;
                co_return false;
            case Exchange::no_backend:
                co_await reply_error(http::status::service_unavailable, "no backend available",
                                     !ex_->parser->is_done());
                co_return can_continue;
            case Exchange::unreachable:
                co_await reply_error(http::status::bad_gateway, "no backend reachable",
                                     !ex_->parser->is_done());
                co_return can_continue;
            case Exchange::out_of_descriptors:
                co_await reply_error(http::status::service_unavailable,
                                     "proxy out of file descriptors", !ex_->parser->is_done());
                co_return can_continue;
            case Exchange::upstream_timeout:
                WorkerStats::add(worker_.stats().upstream_timeouts);
                co_await reply_error(http::status::gateway_timeout,
                                     "backend did not answer in time", !ex_->parser->is_done());
                co_return can_continue;
            case Exchange::upstream_failed:
                WorkerStats::add(worker_.stats().upstream_broken_responses);
                co_await reply_error(http::status::bad_gateway, "backend failed before responding",
                                     !ex_->parser->is_done());
                co_return can_continue;
            case Exchange::response_invalid:
                WorkerStats::add(worker_.stats().upstream_broken_responses);
                co_await reply_error(http::status::bad_gateway, ex_->body_error, !ex_->parser->is_done());
                co_return can_continue;
        }
        co_return false;
    }

    // ---- the backend connection ----------------------------------------------------------

    // Picks a backend of the colour and gets a connection to it: an idle pooled one, else a new
    // one. A backend that refuses is skipped for another, up to connect_attempts.
    Task<Connected> connect_upstream(const RoutingTable& table, Colour colour,
                                     const RequestFacts& facts, Upstream& upstream) {
        Connected result = Connected::no_backend;
        for (unsigned attempt = 0; attempt < config_.upstream.connect_attempts; ++attempt) {
            const Backend* backend = attempt == 0 ? private_backend(table, colour) : nullptr;
            if (backend == nullptr) {
                backend = worker_.balancer().pick_backend(table, colour, ex_->tried);
            }
            if (backend == nullptr && config_.retries.cross_colour) {
                // This colour has nothing left to try: the other one serves rather than fail.
                backend = worker_.balancer().pick_backend(table, other(colour), ex_->tried);
            }
            if (backend == nullptr) {
                co_return result;
            }
            ex_->tried.push_back(backend->id);
            // A request that cannot be sent twice (a body, a non-idempotent method) checks its
            // pooled connection first; another is simply sent again on a fresh connection if
            // the pooled one turns out stale.
            if (auto idle = lease(*backend, !ex_->parser->is_done() || !facts.idempotent)) {
                upstream.backend = backend;
                upstream.stream.emplace(std::move(*idle));
                upstream.reused = true;
                tracked_.handle().upstream = &upstream.stream->socket();
                tracked_.handle().upstream_backend = backend->id;
                co_return Connected::yes;
            }
            result = co_await connect_to(*backend, upstream);
            if (result == Connected::yes || result == Connected::out_of_descriptors) {
                // The proxy's own lack of descriptors says nothing of the backend: no outcome
                // is recorded (no ejection, no revert) and no other backend would fare better.
                co_return result;
            }
            worker_.record_outcome(backend->id, true);
        }
        co_return result;
    }

    // The backend of this session's private connection, while it is of `colour` and takes new
    // requests: its connection is kept warm rather than a new one opened with a new PROXY
    // header (HAProxy's prefer-last-server for connections it cannot share).
    const Backend* private_backend(const RoutingTable& table, Colour colour) const {
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
    // session's private one, or one from the worker's pool.
    std::optional<UpstreamStream> lease(const Backend& backend, bool verify) {
        if (!backend.send_proxy_protocol) {
            return worker_.upstream_pool().lease(backend.id, verify, backend.tls.get());
        }
        std::optional<PrivateUpstream> kept = std::move(private_);
        private_.reset();
        tracked_.handle().kept = false;
        if (!kept || kept->backend_id != backend.id || kept->ip != backend.address.ip ||
            kept->port != backend.address.port || kept->stream.tls_context() != backend.tls.get()) {
            return std::nullopt;  // a kept connection to another backend closes here
        }
        const auto idle = std::chrono::steady_clock::now() - kept->since;
        if (idle < config_.upstream.idle_timeout &&
            ((!verify && idle <= config_.upstream.recheck_after) || kept->stream.still_open())) {
            return std::move(kept->stream);
        }
        return std::nullopt;
    }

    // Connects to the backend: TCP, then the PROXY header and the TLS handshake when its pool
    // asks for them, all within upstream_connect.
    Task<Connected> connect_to(const Backend& backend, Upstream& upstream) {
        error_code ec;
        tcp::endpoint endpoint(asio::ip::make_address(backend.address.ip, ec),
                               backend.address.port);
        Socket connection(socket().get_executor());
        tracked_.handle().upstream = &connection;
        tracked_.handle().upstream_backend = backend.id;
        deadline_.arm(config_.timeouts.upstream_connect, ConnectionDeadline::upstream);
        std::tie(ec) = co_await connection.async_connect(endpoint, nothrow);
        if (!ec && backend.send_proxy_protocol) {
            const std::string header =
                encode_proxy_v2(client_endpoints_.source, client_endpoints_.destination);
            std::tie(ec, std::ignore) =
                co_await asio::async_write(connection, asio::buffer(header), nothrow);
        }
        if (ec) {
            tracked_.handle().upstream = nullptr;
            if (out_of_descriptors(ec)) {
                WorkerStats::add(worker_.stats().out_of_descriptors);
                co_return Connected::out_of_descriptors;
            }
            WorkerStats::add(worker_.stats().upstream_connect_failures);
            co_return Connected::refused;
        }
        connection.set_option(tcp::no_delay(true), ec);
        if (backend.tls) {
            upstream.stream.emplace(std::move(connection), backend.tls);
        } else {
            upstream.stream.emplace(std::move(connection));
        }
        tracked_.handle().upstream = &upstream.stream->socket();
        if (backend.tls && !co_await handshake(backend, *upstream.stream)) {
            tracked_.handle().upstream = nullptr;
            upstream.stream.reset();
            co_return Connected::refused;
        }
        worker_.traffic().count_connect(backend.id);
        upstream.backend = &backend;
        upstream.reused = false;
        co_return Connected::yes;
    }

    // The TLS handshake with a backend, resuming this worker's last session with it when it
    // has one. A failure is a failed connect (the next backend is tried), counted, and named
    // in the access log.
    Task<bool> handshake(const Backend& backend, UpstreamStream& stream) {
        SSL* ssl = stream.tls()->native_handle();
        std::string why;
        if (backend.tls->prepare(ssl, backend.address, why)) {
            if (SSL_SESSION* session =
                    worker_.upstream_pool().tls_session(backend.id, backend.tls.get())) {
                SSL_set_session(ssl, session);
            }
            auto [ec] =
                co_await stream.tls()->async_handshake(asio::ssl::stream_base::client, nothrow);
            if (!ec) {
                co_return true;
            }
            why = deadline_.expired() ? "handshake timed out"
                                      : BackendTlsContext::handshake_error(ssl, ec.message());
        }
        WorkerStats::add(worker_.stats().upstream_tls_failures);
        WorkerStats::add(worker_.stats().upstream_connect_failures);
        if (worker_.logs_access()) {
            ex_->connect_error = "TLS to " + backend.name + ": " + why;
        }
        co_return false;
    }

    // Sends the request (head, then the body as it arrives) and reads the response head,
    // relaying interim 1xx responses to the client.
    Task<Exchange> exchange(Upstream& upstream, const RequestFacts& facts) {
        auto& request = ex_->parser->get();
        auto& stream = *upstream.stream;
        ex_->upstream_buffer.clear();
        write_request_head(request, ex_->head);
        // With no body, or no body byte at hand yet, the head goes now (the backend can start,
        // and answer early); otherwise it leaves with the first piece of body in one write.
        if (ex_->parser->is_done() || ex_->buffer.size() == 0) {
            deadline_.arm(config_.timeouts.upstream_response, ConnectionDeadline::upstream);
            auto [ec, n] = co_await asio::async_write(stream, asio::buffer(ex_->head), nothrow);
            if (ec) {
                co_return deadline_.expired() ? Exchange::upstream_timeout : Exchange::upstream_failed;
            }
            ex_->head.clear();
        }
        if (!ex_->parser->is_done() || !ex_->head.empty()) {
            const Exchange sent = co_await send_request_body(stream);
            if (sent != Exchange::response_ready) {
                co_return sent;
            }
        }
        // Nothing more is read from the client until the response is over: watch it instead,
        // so a client that leaves releases the backend at once.
        close_watch_.start();

        for (;;) {
            ex_->response_parser.emplace();
            ex_->response_chunks = chunk_guard();
            ex_->response_parser->on_chunk_header(ex_->response_chunks);
            ex_->response_parser->header_limit(
                static_cast<std::uint32_t>(config_.limits.max_response_header));
            ex_->response_parser->body_limit(boost::none);
            if (facts.head) {
                ex_->response_parser->skip(true);
            }
            deadline_.arm(config_.timeouts.upstream_response, ConnectionDeadline::upstream);
            std::size_t checked = 0;
            HeadRead read;
            ResponseRefusal refusal;
            while ((read = parse_response_head(ex_->upstream_buffer, *ex_->response_parser,
                                               response_header_limits(), checked, refusal)) ==
                   HeadRead::need_more) {
                if (ex_->upstream_buffer.size() + read_chunk() > ex_->upstream_buffer.max_size()) {
                    break;  // not reached: the scan refuses a head over max_response_header
                }
                auto [rec, n] = co_await stream.async_read_some(
                    ex_->upstream_buffer.prepare(read_room(ex_->upstream_buffer)), nothrow);
                if (rec) {
                    break;
                }
                ex_->upstream_buffer.commit(n);
            }
            if (read == HeadRead::invalid) {
                if (refusal.breach) {
                    worker_.stats().breach(*refusal.breach);
                }
                ex_->body_error = "backend response " + refusal.why;
                co_return Exchange::response_invalid;
            }
            if (read != HeadRead::done) {
                co_return deadline_.expired() ? Exchange::upstream_timeout : Exchange::upstream_failed;
            }
            const unsigned status = ex_->response_parser->get().result_int();
            if (!upstream.reused && stream.tls() != nullptr) {
                // By now a TLS 1.3 backend has sent its session tickets too.
                worker_.upstream_pool().keep_tls_session(upstream.backend->id, stream);
            }
            if (status == 101 && !facts.upgrade) {
                ex_->body_error = "backend switched protocols unasked (101)";
                co_return Exchange::response_invalid;
            }
            if (status >= 200 || status == 101) {
                co_return Exchange::response_ready;
            }
            // An interim response (103 Early Hints, 102...): passed on to HTTP/1.1 clients only
            // (RFC 9110 15.2: never to HTTP/1.0).
            if (facts.version >= 11 && status != 100) {
                if (!co_await relay_interim()) {
                    co_return Exchange::client_gone;
                }
            }
        }
    }

    // Writes the interim response in the response parser to the client; false if it is gone.
    Task<bool> relay_interim() {
        auto& interim = ex_->response_parser->get();
        rewrite_interim_head(interim.base());
        write_response_head(interim.base(), ex_->head);
        deadline_.arm(config_.timeouts.client_write, ConnectionDeadline::client);
        interim_sent_ = true;
        auto [ec, n] = co_await asio::async_write(client_, asio::buffer(ex_->head), nothrow);
        co_return !ec;
    }

    // Streams the request body to the backend; response_ready means all of it went.
    Task<Exchange> send_request_body(UpstreamStream& stream) {
        const BodyLeg leg{config_.timeouts.client_body,      ConnectionDeadline::client,
                          config_.timeouts.upstream_response, ConnectionDeadline::upstream,
                          ex_->parser->get().chunked(),           config_.limits.min_request_body_rate};
        switch (co_await relay_.relay(*ex_, client_, ex_->buffer, *ex_->parser, relay_.piece(ex_->request_body), stream,
                                    leg, ex_->record.bytes_in, body_started_)) {
            case BodyEnd::done:
                co_return Exchange::response_ready;
            case BodyEnd::read_failed:
                co_return Exchange::client_gone;
            case BodyEnd::read_timeout:
                co_return Exchange::body_too_slow;
            case BodyEnd::too_large:
                co_return Exchange::body_too_large;
            case BodyEnd::malformed:
                co_return Exchange::body_malformed;
            case BodyEnd::write_failed:
                co_return Exchange::upstream_failed;
            case BodyEnd::write_timeout:
                co_return Exchange::upstream_timeout;
        }
        co_return Exchange::upstream_failed;
    }

    HeaderLimits response_header_limits() const {
        return {config_.limits.max_response_header, config_.limits.max_response_header,
                config_.limits.max_header_fields, config_.limits.max_field_size};
    }


    // ---- the response -----------------------------------------------------------------------

    Task<bool> relay_response(Upstream& upstream, const RequestFacts& facts) {
        const ResponsePlan plan = prepare_response_head(upstream, facts);
        // The head goes out on its own only when no body byte is at hand; otherwise it leaves
        // with the first piece of body in one write (one syscall instead of two).
        if (plan.no_body ||
            (ex_->upstream_buffer.size() == 0 && !ex_->response_parser->is_done())) {
            deadline_.arm(config_.timeouts.client_write, ConnectionDeadline::client);
            auto [ec, n] = co_await asio::async_write(client_, asio::buffer(ex_->head), nothrow);
            if (ec) {
                co_return false;
            }
            ex_->head.clear();
        }
        if (plan.switching) {
            close_watch_.stop();  // the tunnel reads the client itself
            worker_.tunnel_opened(upstream.backend->id);
            co_await relay_.tunnel(*ex_, client_, *upstream.stream, config_.timeouts.tunnel_idle);
            worker_.tunnel_closed(upstream.backend->id);
            co_return false;
        }
        if (!plan.no_body) {
            const BodyLeg leg{config_.timeouts.upstream_response, ConnectionDeadline::upstream,
                              config_.timeouts.client_write, ConnectionDeadline::client,
                              plan.chunked};
            bool started = false;
            const BodyEnd end = co_await relay_.relay(
                *ex_, *upstream.stream, ex_->upstream_buffer, *ex_->response_parser,
                relay_.piece(ex_->response_body), client_, leg, ex_->record.bytes_out, started);
            if (!response_body_relayed(end)) {
                co_return false;
            }
        }
        ex_->record.upstream_ms = std::chrono::duration<double, std::milli>(
                                      std::chrono::steady_clock::now() - upstream_started_)
                                      .count();
        const bool complete = ex_->response_parser->is_done() || plan.no_body;
        // The connection goes back to the pool only after a clean, fully framed exchange.
        if (complete && ex_->parser->is_done() && ex_->response_parser->keep_alive() &&
            !plan.until_close && ex_->upstream_buffer.size() == 0 &&
            !close_watch_.client_gone()) {
            keep_upstream(upstream);
        }
        co_return plan.keep_alive && complete;
    }

    // The response head for the client (rewrite_response_head, then the served-by and sticky
    // fields) serialized into ex_->head.
    ResponsePlan prepare_response_head(const Upstream& upstream, const RequestFacts& facts) {
        const bool may_stay =
            facts.keep_alive && ex_->parser->is_done() && !worker_.draining() && !last_request_;
        const ResponsePlan plan = rewrite_response_head(*ex_->response_parser, facts, may_stay);
        auto& response = ex_->response_parser->get();
        ex_->record.status = response.result_int();
        if (!config_.served_by_header.empty()) {
            response.set(config_.served_by_header,
                         std::string(to_string(upstream.backend->colour)) + "/" +
                             upstream.backend->name);
        }
        if (set_sticky_) {
            // The colour that served, which a retry may have changed.
            response.insert(http::field::set_cookie,
                            sticky_cookie(config_.sticky, upstream.backend->colour));
        }
        write_response_head(response.base(), ex_->head);
        return plan;
    }

    // Whether the response body went through whole; if not, why is counted and logged, and
    // the client connection is to close so a cut response never looks complete.
    bool response_body_relayed(BodyEnd end) {
        if (close_watch_.client_gone()) {
            WorkerStats::add(worker_.stats().client_aborts);
            ex_->record.error = "client closed the connection";
            return false;
        }
        if (end == BodyEnd::read_failed || end == BodyEnd::read_timeout ||
            end == BodyEnd::malformed) {
            // The backend died, stalled or framed its body wrongly mid-body.
            WorkerStats::add(worker_.stats().upstream_broken_responses);
            if (end == BodyEnd::malformed) {
                ex_->record.error = "backend response " + ex_->body_error;
            }
            return false;
        }
        return end == BodyEnd::done;
    }

    // A backend connection whose exchange completed cleanly: back to the worker's pool, or kept
    // for this client alone when it opened with a PROXY header naming the client.
    void keep_upstream(Upstream& upstream) {
        tracked_.handle().upstream = nullptr;
        if (upstream.backend->send_proxy_protocol) {
            private_.emplace(PrivateUpstream{upstream.backend->id, upstream.backend->address.ip,
                                             upstream.backend->address.port,
                                             std::move(*upstream.stream),
                                             std::chrono::steady_clock::now()});
            tracked_.handle().kept = true;
            tracked_.handle().kept_backend = upstream.backend->id;
        } else {
            worker_.upstream_pool().give_back(upstream.backend->id, std::move(*upstream.stream));
        }
        upstream.stream.reset();
    }

    // ---- proxy-generated responses ------------------------------------------------------------

    // Closing a socket with unread input makes the kernel send a reset, which can destroy the
    // error response before the client reads it. So after an error, read and discard what the
    // client still sends, for a bounded time and amount (nginx's lingering close).
    Task<void> drain_before_close() {
        close_watch_.stop();
        deadline_.arm(config_.timeouts.client_linger, ConnectionDeadline::client);
        std::size_t discarded = 0;
        while (discarded < (1u << 20)) {
            auto [ec, n] = co_await client_.async_read_some(asio::buffer(relay_.piece(ex_->request_body)), nothrow);
            if (ec) {
                break;
            }
            discarded += n;
        }
    }

    // The proxy's answer to a refused request, its bound counted if it went over one.
    Task<void> refuse(const Refusal& refusal) {
        if (refusal.breach) {
            worker_.stats().breach(*refusal.breach);
        }
        return reply_error(refusal.status, refusal.reason);
    }

    Task<void> reply_error(http::status status, std::string_view reason, bool close = true) {
        if (static_cast<unsigned>(status) < 500) {
            WorkerStats::add(worker_.stats().bad_requests);
        }
        ex_->record.status = static_cast<unsigned>(status);
        ex_->record.error = std::string(reason);
        if (!ex_->connect_error.empty()) {
            ex_->record.error += " (" + ex_->connect_error + ")";  // for the log, not the client
        }
        const std::string body = std::to_string(static_cast<unsigned>(status)) + " " +
                                 std::string(http::obsolete_reason(status)) + ": " +
                                 std::string(reason) + "\n";
        http::response_header<> response;
        response.result(status);
        response.version(11);
        response.set(http::field::content_type, "text/plain");
        response.set("X-BG-Error", reason);
        response.set(http::field::content_length, std::to_string(body.size()));
        if (close || worker_.draining()) {
            response.set(http::field::connection, "close");
        }
        linger_ = linger_ || close;
        write_response_head(response, ex_->head);
        deadline_.arm(config_.timeouts.client_write, ConnectionDeadline::client);
        std::array<asio::const_buffer, 2> out{asio::buffer(ex_->head), asio::buffer(body)};
        co_await relay_.write_pieces(*ex_, client_, out);
    }

    Worker& worker_;
    // The config this connection started with: a reload applies to new connections.
    std::shared_ptr<const Config> config_holder_;
    const Config& config_;
    std::size_t listener_;  // index in config_.listeners
    Stream client_;
    TrackedSession tracked_;  // after client_: it points at the socket
    ClientEndpoints client_endpoints_;  // as a PROXY header to a backend tells them
    asio::ip::address client_address_;  // the original client (a PROXY header may have named it)
    std::string client_ip_;
    std::string server_authority_;  // what an HTTP/1.0 request without Host is given
    bool trusted_peer_ = false;  // the peer is in trusted_proxies
    bool last_request_ = false;  // max_requests_per_connection reached: close after this one
    std::array<char, 256> first_bytes_;   // where an idle connection's next request lands
    std::optional<PrivateUpstream> private_;  // kept between requests (send_proxy_protocol)
    bool body_started_ = false;
    bool interim_sent_ = false;
    bool set_sticky_ = false;
    bool request_started_ = false;  // a request head arrived and is not yet counted
    std::chrono::steady_clock::time_point started_;
    std::chrono::steady_clock::time_point upstream_started_;
    MethodClass method_ = MethodClass::other;
    std::uint32_t served_slot_ = 0;  // 0: no backend; else the backend id + 1
    std::size_t served_colour_ = 0;
    bool linger_ = false;  // an error response was sent: drain before closing
    ConnectionDeadline deadline_;
    BodyRelay relay_;  // moves bodies and tunnels under deadline_
    ClientCloseWatch close_watch_;  // while a request is in flight and the client is not read
    std::unique_ptr<ExchangeState> ex_;  // while a request is in flight (see take_exchange())
};

}  // namespace

Task<void> serve_client(Worker& worker, Socket socket, std::size_t listener_index) {
    // The config and its TLS contexts this connection started with stay alive as long as it.
    std::shared_ptr<const Config> config = worker.config();
    const auto& listeners = config->listeners;
    // The session is allocated at its exact size, apart from this frame (a frame keeps room
    // for every local of every branch: a plain connection would carry a TLS session's too).
    if (listener_index < listeners.size() && listeners[listener_index].tls_context) {
        using TlsSession = ClientSession<asio::ssl::stream<Socket>>;
        auto& context = listeners[listener_index].tls_context->initial();
        auto session = std::make_unique<TlsSession>(
            worker, std::move(config), listener_index,
            asio::ssl::stream<Socket>(std::move(socket), context));
        co_await session->run();
    } else {
        auto session = std::make_unique<ClientSession<Socket>>(worker, std::move(config),
                                                               listener_index, std::move(socket));
        co_await session->run();
    }
}

}  // namespace bg
