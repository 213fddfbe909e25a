#include "request_exchange.hpp"

#include <array>
#include <boost/asio/write.hpp>
#include <boost/beast/http/parser.hpp>
#include <string>
#include <type_traits>
#include <utility>

#include "access_record.hpp"
#include "coarse_clock.hpp"
#include "colour_hints.hpp"
#include "forwarding_headers.hpp"
#include "http_date.hpp"
#include "message_head.hpp"
#include "request_validation.hpp"
#include "socket_drain.hpp"
#include "tls_stream.hpp"

namespace bg {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using boost::system::error_code;

namespace {

// The answer to a head the raw scan refused.
Refusal refusal_for(RawHeaderVerdict verdict) {
    switch (verdict) {
        case RawHeaderVerdict::request_line_too_long:
            return {http::status::uri_too_long, "request line too long", LimitBreach::request_line};
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

Exchange connect_failure(Connected connected) {
    switch (connected) {
        case Connected::no_backend:
            return Exchange::no_backend;
        case Connected::out_of_descriptors:
            return Exchange::out_of_descriptors;
        default:
            return Exchange::unreachable;
    }
}

// Marks the session as waiting for a response head while in scope (for the stall check).
class AwaitingResponse {
  public:
    AwaitingResponse(SessionHandle& handle, bool retryable, bool after_cut) : handle_(handle) {
        handle_.awaiting_since = CoarseClock::now();
        handle_.awaiting_retryable = retryable;
        handle_.awaiting_after_cut = after_cut;
    }
    ~AwaitingResponse() {
        handle_.awaiting_since = {};
        handle_.awaiting_retryable = false;
        handle_.awaiting_after_cut = false;
    }
    AwaitingResponse(const AwaitingResponse&) = delete;
    AwaitingResponse& operator=(const AwaitingResponse&) = delete;

  private:
    SessionHandle& handle_;
};

HeaderLimits request_header_limits(const Limits& limits) {
    return {limits.max_request_line, limits.max_request_header, limits.max_header_fields,
            limits.max_field_size};
}

HeaderLimits response_header_limits(const Limits& limits) {
    return {limits.max_response_header, limits.max_response_header, limits.max_header_fields,
            limits.max_field_size};
}

}  // namespace

template <class Stream>
RequestExchange<Stream>::RequestExchange(ClientConnection<Stream>& connection, ExchangeState& state)
    : conn_(connection), config_(connection.config), ex_(state) {}

template <class Stream>
RequestExchange<Stream>::~RequestExchange() {
    conn_.close_watch.stop();
    finish_record();
    ex_.end_request();
}

// ---- the request head ---------------------------------------------------------------------

template <class Stream>
Task<bool> RequestExchange<Stream>::read_head() {
    ex_.new_request();
    ex_.request_chunks = conn_.chunk_guard();
    ex_.parser->on_chunk_header(ex_.request_chunks);
    ex_.parser->header_limit(static_cast<std::uint32_t>(config_.limits.max_request_header + 1));
    if (config_.limits.max_request_body > 0) {
        ex_.parser->body_limit(config_.limits.max_request_body);
    } else {
        ex_.parser->body_limit(boost::none);
    }
    ex_.parser->eager(false);
    // The whole header must arrive within client_header (slowloris): from its first byte, or
    // for a connection's first request from the connect (the wait armed it).
    if (!std::exchange(conn_.header_clock_running, false)) {
        conn_.deadline.arm(config_.timeouts.client_header, ConnectionDeadline::client);
    }
    std::size_t checked = 0;  // bytes already seen to hold no line end
    // A head still incomplete after a read holds its slot as a connection still opening does:
    // at the connection limit it makes room once incomplete for evict_opening_after (one byte
    // of a head per connection would hold every slot for client_header). Off the list when
    // the read ends, however it ends.
    // And it holds no more than the head's limit meanwhile (what a client pipelines behind it
    // waits in the socket): the buffer's doubling took 64 KiB for a 32 KiB head, and heads
    // left unfinished are what a memory flood sends.
    // A plain client's head begun and late is answered 408 (late_head_answer.hpp), not once
    // the read has ended.
    struct Incomplete {
        Worker& worker;
        SessionHandle& handle;
        boost::beast::flat_buffer& buffer;
        std::size_t max_size;
        ConnectionDeadline& deadline;
        ~Incomplete() {
            worker.opened(handle);
            buffer.max_size(max_size);
            deadline.answer_late_head(false);
        }
    } incomplete{conn_.worker, conn_.handle(), ex_.buffer, ex_.buffer.max_size(), conn_.deadline};
    ex_.buffer.max_size(std::max(ex_.buffer.size(), config_.limits.max_request_header + 1));
    for (;;) {
        Refusal refusal;
        switch (parse_head(checked, refusal)) {
            case HeadRead::done:
                // (Not one closed to make room whose last read completed in the same turn.)
                co_return !conn_.handle().slot_released;
            case HeadRead::invalid:
                co_await refuse(refusal);
                co_return false;
            case HeadRead::need_more:
                break;
        }
        if (conn_.handle().slot_released) {
            co_return false;  // closed to make room (its read may have completed meanwhile)
        }
        if (!conn_.handle().OpeningHook::is_linked()) {
            conn_.worker.opening(conn_.handle());
        }
        expect_late_head();
        forget_drained(conn_.socket());  // the head goes on (socket_drain.hpp)
        auto [ec, n] = co_await conn_.stream.async_read_some(
            draining(ex_.buffer.prepare(conn_.read_room(ex_.buffer))), nothrow);
        if (conn_.deadline.expired()) {
            // The deadline has closed the socket already (also when this read's bytes came in
            // the same turn: its 408 went, the request must not): a plain client whose head had
            // begun was told 408 (as HAProxy does), others are simply dropped (as nginx does).
            if (!conn_.handle().slot_released) {  // (closed to make room, not for the time)
                note_head_timeout();
            }
            co_return false;
        }
        if (ec) {
            co_return false;
        }
        ex_.buffer.commit(n);
    }
}

template <class Stream>
void RequestExchange<Stream>::expect_late_head() {
    if constexpr (std::is_same_v<Stream, Socket>) {
        if (ex_.buffer.size() > 0) {
            const std::string_view begun(static_cast<const char*>(ex_.buffer.data().data()),
                                         ex_.buffer.size());
            conn_.deadline.answer_late_head(true, begun.starts_with("HEAD "));
        }
    }
}

template <class Stream>
void RequestExchange<Stream>::note_head_timeout() {
    WorkerStats::add(conn_.worker.stats().client_header_timeouts);
    if (conn_.deadline.answered_late_head()) {
        begin_record(nullptr);
        started_ -= config_.timeouts.client_header;  // (at least that long)
        ex_.record.start_unix_ms -= config_.timeouts.client_header.count();
        ex_.record.status = 408;
        ex_.record.error = "request head not received in time";
    }
}

// Screens and parses the request head in ex_.buffer once all of it is there; on a refusal says
// which status and why (the record is begun either way).
template <class Stream>
HeadRead RequestExchange<Stream>::parse_head(std::size_t& checked, Refusal& refusal) {
    const std::size_t skipped = skip_leading_empty_lines();
    checked = checked > skipped ? checked - skipped : 0;
    char* data = static_cast<char*>(ex_.buffer.data().data());
    const std::string_view bytes(data, ex_.buffer.size());
    // A head that trickles in is scanned again only when a line has ended (else a
    // byte-at-a-time client would make the scan quadratic), or to refuse it as too long.
    RawHeaderScan scan;
    const bool line_ended = bytes.find('\n', checked) != std::string_view::npos;
    if (line_ended || bytes.size() >= config_.limits.max_request_line) {
        scan = scan_raw_header(bytes, request_header_limits(config_.limits));
    }
    checked = bytes.size();
    if (scan.verdict == RawHeaderVerdict::incomplete) {
        // A request line that ended without an HTTP version (HTTP/0.9's "GET /") will not be
        // followed by fields: refused now, not after client_header.
        const auto line_end = line_ended ? bytes.find("\r\n") : std::string_view::npos;
        if (line_end != std::string_view::npos &&
            normalize_request_version({data, line_end}) == StartLineVersion::unreadable) {
            begin_record(nullptr);
            refusal = {http::status::bad_request, "request line without an HTTP version"};
            return HeadRead::invalid;
        }
        return HeadRead::need_more;
    }
    if (scan.verdict != RawHeaderVerdict::complete) {
        begin_record(nullptr);  // refused before it could be parsed
        refusal = refusal_for(scan.verdict);
        return HeadRead::invalid;
    }
    if (normalize_request_version({data, bytes.find("\r\n")}) == StartLineVersion::other_major) {
        begin_record(nullptr);
        refusal = {http::status::http_version_not_supported, "HTTP version not supported"};
        return HeadRead::invalid;
    }
    error_code ec;
    const std::size_t used = ex_.parser->put(asio::buffer(data, scan.header_end), ec);
    ex_.buffer.consume(used);
    begin_record(ex_.parser->is_header_done() ? &ex_.parser->get() : nullptr);
    if (ec == http::error::body_limit) {
        refusal = {http::status::payload_too_large, "request body too large",
                   LimitBreach::request_body};
        return HeadRead::invalid;
    }
    if (ec || !ex_.parser->is_header_done()) {
        ex_.body_error = ec ? ec.message() : "malformed request header";
        refusal = {http::status::bad_request, ex_.body_error};
        return HeadRead::invalid;
    }
    return HeadRead::done;
}

// RFC 9112 2.2: a server should ignore empty lines received before the request line.
template <class Stream>
std::size_t RequestExchange<Stream>::skip_leading_empty_lines() {
    std::size_t skipped = 0;
    for (;;) {
        const std::string_view bytes(static_cast<const char*>(ex_.buffer.data().data()),
                                     ex_.buffer.size());
        if (!bytes.starts_with("\r\n")) {
            return skipped;
        }
        ex_.buffer.consume(2);
        skipped += 2;
    }
}

// ---- metrics and the access log -------------------------------------------------------------

// A request head arrived (parsed, or refused before it could be).
template <class Stream>
void RequestExchange<Stream>::begin_record(const Request* request) {
    head_arrived_ = true;
    started_ = std::chrono::steady_clock::now();
    colour_started_ = started_;
    method_ = request != nullptr ? method_class(request->method()) : MethodClass::other;
    if (!conn_.worker.logs_access()) {
        return;
    }
    ex_.record.start_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count();
    ex_.record.client = conn_.client.ip;
    if (request != nullptr) {
        ex_.record.method = std::string(request->method_string());
        ex_.record.path = std::string(request->target().substr(0, 2048));
    }
}

// The request is over: count it and log it.
template <class Stream>
void RequestExchange<Stream>::finish_record() {
    if (!head_arrived_) {
        return;
    }
    const auto now = std::chrono::steady_clock::now();
    const auto elapsed = now - started_;
    Worker& worker = conn_.worker;
    if (config_.metrics) {
        TrafficCounters& traffic = worker.traffic();
        if (ex_.record.status != 0) {
            traffic.count_response(served_slot_, method_, ex_.record.status);
        }
        if (served_slot_ != 0) {
            traffic.request_duration[served_colour_].observe(
                std::chrono::duration<double>(now - colour_started_).count());
            if (ex_.record.upstream_ms > 0) {
                traffic.upstream_duration[served_colour_].observe(ex_.record.upstream_ms / 1000);
            }
            traffic.request_body_bytes[served_colour_] += ex_.record.bytes_in;
            traffic.response_body_bytes[served_colour_] += ex_.record.bytes_out;
        }
    }
    if (worker.logs_access()) {
        ex_.record.duration_ms = std::chrono::duration<double, std::milli>(elapsed).count();
        worker.log_access(to_json_line(ex_.record));
    }
}

// ---- one request ----------------------------------------------------------------------------

template <class Stream>
Task<bool> RequestExchange<Stream>::respond() {
    if (const Refusal refusal = check_request_head(*ex_.parser, config_.limits.max_request_body)) {
        co_await refuse(refusal);
        co_return false;
    }
    const RequestFacts facts = request_facts(*ex_.parser, config_.upgrade_protocols);
    client_version_ = facts.version;
    if (const auto local = apply_max_forwards(ex_.parser->get())) {
        co_return co_await answer_here(*local, facts);
    }
    // One routing snapshot for the whole request, retries included. The colour is chosen before
    // any header rule runs, so no field named in Connection can change the route.
    RoutingTablePtr table = conn_.worker.table();
    ex_.record.version = table->version();
    const Colour colour = choose_colour(*table);
    const ClientIdentity& client = conn_.client;
    if (const Refusal refusal = rewrite_for_upstream(
            *ex_.parser, facts,
            {client.ip, conn_.tls, client.trusted, client.endpoints.destination,
             config_.limits.headers_with_underscores, config_.via})) {
        co_await refuse(refusal);
        co_return false;
    }
    UpstreamLease lease(conn_.worker.balancer(), conn_.handle());
    RetryState retries(conn_.worker.retry_budget(), config_.retries, conn_.worker.stats());
    const Exchange outcome = co_await forward(table, colour, facts, lease, retries);
    if (outcome == Exchange::response_ready) {
        const Backend& backend = lease.backend();
        bool stays = co_await relay_response(lease, facts);
        response_over_ = true;
        if (upload_) {
            co_await let_upload_run_out();  // (a coroutine frame: not for every request)
        }
        // (After a tunnel the parser is gone: ExchangeState::drop_messages.)
        if (ex_.parser && !ex_.parser->is_done()) {
            // The rest of the body was never read: the connection cannot carry another
            // request, and closes after a lingering drain (its answer is not lost to a reset).
            stays = false;
            conn_.linger = true;
            if (ex_.record.error.empty()) {
                ex_.record.error = "backend answered before the request body ended";
            }
        }
        tell_answer(backend);
        co_return stays;
    }
    co_return co_await answer_failure(outcome, facts);
}

// A preview header (from an allowed network) or a sticky cookie may name the colour; else the
// weights choose. (A client a PROXY header left unnamed is in no network.)
template <class Stream>
Colour RequestExchange<Stream>::choose_colour(const RoutingTable& table) {
    auto& request = ex_.parser->get();
    const std::optional<Colour> preview =
        conn_.client.endpoints.unnamed
            ? std::nullopt
            : preview_colour(request, conn_.client.address,
                             conn_.client.trusted ? &config_.trusted_proxies : nullptr,
                             config_.preview, table);
    const std::optional<Colour> sticky =
        preview ? std::nullopt : sticky_colour(request, config_.sticky, table);
    split_since_ = table.split_since();
    set_sticky_ = !config_.sticky.cookie.empty() && !preview && !sticky &&
                  table.pool(Colour::blue).weight_bp > 0 && table.pool(Colour::green).weight_bp > 0;
    colour_pinned_ = preview || sticky;
    sticky_pinned_ = sticky.has_value();
    return preview ? *preview : sticky ? *sticky : conn_.worker.balancer().pick_colour(table);
}

// Sends the request to a backend of `colour` and reads the response head, connecting,
// retrying and crossing colours as the config allows. `lease` holds the backend that answers
// until the response is relayed.
template <class Stream>
Task<Exchange> RequestExchange<Stream>::forward(RoutingTablePtr& table, Colour colour,
                                                const RequestFacts& facts, UpstreamLease& lease,
                                                RetryState& retries) {
    // A request that cannot be sent twice (a body, a non-idempotent method) checks a pooled
    // connection first; another is simply sent again on a fresh connection if the pooled one
    // turns out stale.
    const bool verify = !ex_.parser->is_done() || !facts.idempotent;
    response_due_ = std::chrono::steady_clock::time_point::max();  // set once the request is sent
    bool continue_sent = false;
    Exchange outcome = Exchange::upstream_failed;
    unsigned failed_colours = 0;  // bit index_of(colour): a try of this request failed there
    for (bool retry = false;; retry = true) {
        if (retry) {
            colour = routing_for_retry(table, colour, failed_colours);
        }
        const Connected connected =
            co_await conn_.upstreams.connect(*table, colour, verify, ex_, lease);
        // A client gone meanwhile (or cut at the shutdown grace's end, which aborts a connect)
        // is sent nothing.
        if (conn_.close_watch.client_gone()) {
            co_return Exchange::client_gone;
        }
        if (connected != Connected::yes) {
            // After a retry, nowhere left to go: answer for the attempt that failed.
            co_return retry ? outcome : connect_failure(connected);
        }
        served_by(lease.backend());
        if (facts.expect_continue && !continue_sent && !ex_.parser->is_done()) {
            if (!co_await send_continue()) {
                co_return Exchange::client_gone;
            }
            continue_sent = true;
        }
        conn_.handle().try_cut = false;
        head_broken_ = false;
        tries_left_ = retries.tries_left();
        outcome = co_await exchange(lease, facts);
        // A reused connection that the backend had closed: an idempotent request none of whose
        // body was consumed is intact, so it goes once more on a fresh connection. Anything
        // else may have been processed: it is never sent twice. (Not after the worker cut the
        // try: its backend was taken out, and the retry goes elsewhere.)
        while (outcome == Exchange::upstream_failed && lease.reused() && facts.idempotent &&
               !conn_.handle().try_cut && !body_started_ && !interim_sent_ &&
               !conn_.close_watch.client_gone()) {
            if (co_await conn_.upstreams.reconnect(ex_, lease) != Connected::yes) {
                break;
            }
            outcome = co_await exchange(lease, facts);
        }
        if (conn_.close_watch.client_gone() && outcome != Exchange::response_ready) {
            co_return Exchange::client_gone;  // not the backend's failure: nothing recorded
        }
        if (!conn_.handle().try_cut) {
            record_try(lease.backend(), outcome);  // a cut is the proxy's doing, not the backend's
        } else {
            cut_before_ = true;
        }
        const bool failed =
            outcome == Exchange::upstream_failed || outcome == Exchange::upstream_timeout;
        const TryFailure failure =
            outcome == Exchange::upstream_timeout ? TryFailure::timeout : TryFailure::reset;
        if (!failed || head_broken_ || CoarseClock::now() >= response_due_ ||
            !retries.may_retry(facts.idempotent, body_started_, interim_sent_, failure,
                               conn_.worker.failed_upstreams().colour_out(lease.backend().id))) {
            co_return outcome;
        }
        failed_colours |= 1u << index_of(lease.backend().colour);
        // Retry elsewhere: the failed backend stays in ex_.tried, so it is not picked again.
        retries.retrying();
        ++ex_.record.retries;
        lease.drop();
    }
}

// A retry is a new try: it goes by the routing of now, not of when the request began (a revert
// or an ejection meanwhile is heeded: a request caught on a hung candidate is not sent to it
// again once it was reverted). Unless a preview header or a sticky cookie pinned the colour, it
// goes to the other colour when that one takes traffic and either its own takes none now or
// the request failed in the candidate and the other is the stable colour: a release whose
// backends are killed or reset one after another would otherwise take every try (kill -9 of
// four green backends at 50/50 got 502s with the retries spent on three of them). Never from
// the stable colour to the candidate: a failing stable backend's requests would pile onto the
// small share (and sticky cookies pin clients there) against the weights.
template <class Stream>
Colour RequestExchange<Stream>::routing_for_retry(RoutingTablePtr& table, Colour colour,
                                                  unsigned failed_colours) {
    if (const RoutingTablePtr& now = conn_.worker.table(); now != table) {
        table = now;
        ex_.record.version = table->version();
        split_since_ = table->split_since();
        if (sticky_pinned_) {
            // A cookie pins a client to its colour only while that colour takes traffic: after
            // a rollback or a revert its retry goes where a new request with it would.
            colour_pinned_ = sticky_colour(ex_.parser->get(), config_.sticky, *table).has_value();
            sticky_pinned_ = colour_pinned_;
        }
    }
    // By the weights the data plane acts on: a colour with nothing healthy left has none.
    if (colour_pinned_ || table->effective_weight_bp(other(colour)) == 0) {
        return colour;
    }
    const bool other_failed = (failed_colours & (1u << index_of(other(colour)))) != 0;
    const bool cross =
        config_.retries.cross_colour && !other_failed && table->pool(other(colour)).stable;
    return table->effective_weight_bp(colour) == 0 || cross ? other(colour) : colour;
}

// The last backend tried answers for the request in metrics and log, also when the proxy
// reports its failure.
template <class Stream>
void RequestExchange<Stream>::served_by(const Backend& backend) {
    upstream_started_ = std::chrono::steady_clock::now();
    if (served_slot_ != 0 && index_of(backend.colour) != served_colour_) {
        // A retry crossed colours: the colour that serves it is timed from its own try, not
        // charged the other's failure (canary analysis compares the colours' latencies).
        colour_started_ = upstream_started_;
    }
    served_slot_ = backend.id + 1;
    served_colour_ = index_of(backend.colour);
    if (conn_.worker.logs_access()) {
        ex_.record.colour = to_string(backend.colour);
        ex_.record.backend = backend.name;
    }
}

// What the try tells of the backend, for outlier detection and canary analysis. A response
// head counts as an answer at once (the stall rules), and is judged once its body is through
// (tell_answer): judged a success at its head, a backend that sent 200 and then reset or
// stalled every body was never ejected, each head ending its run of failures, and a release
// doing so passed its canary.
template <class Stream>
void RequestExchange<Stream>::record_try(const Backend& backend, Exchange outcome) {
    TryOutcome seen = TryOutcome::ok;
    switch (outcome) {
        case Exchange::response_ready:
            conn_.worker.record_answer(backend.id, upstream_started_);
            answer_outcome_ = ex_.response_parser->get().result_int() >= 500
                                  ? TryOutcome::server_error
                                  : TryOutcome::ok;
            answer_untold_ = true;
            return;
        case Exchange::upstream_timeout:
            seen = TryOutcome::timeout;
            break;
        case Exchange::upstream_failed:
        case Exchange::response_invalid:
            seen = TryOutcome::reset;
            break;
        default:
            // The client's doing (its body too slow, too large or malformed; it left): the
            // try counts, and tells nothing of the backend (a success would end its run of
            // failures).
            conn_.worker.count_try(backend.id);
            return;
    }
    conn_.worker.record_outcome(backend, seen);
}

template <class Stream>
void RequestExchange<Stream>::tell_answer(const Backend& backend) {
    if (answer_untold_) {
        answer_untold_ = false;
        conn_.worker.judge_try(backend, answer_outcome_);
    }
}

// How long this try may wait for the backend: upstream_try, within what is left of
// upstream_response for the whole request.
template <class Stream>
Duration RequestExchange<Stream>::try_limit() const {
    const Duration left =
        response_due_ == std::chrono::steady_clock::time_point::max()
            ? config_.timeouts.upstream_response
            : std::chrono::duration_cast<Duration>(response_due_ - CoarseClock::now());
    const Duration per_try = config_.timeouts.upstream_try;
    return std::max(Duration(1), per_try > Duration(0) ? std::min(per_try, left) : left);
}

template <class Stream>
Task<bool> RequestExchange<Stream>::send_continue() {
    static constexpr std::string_view continue_line = "HTTP/1.1 100 Continue\r\n\r\n";
    conn_.deadline.arm(config_.timeouts.client_write, ConnectionDeadline::client);
    auto [ec, n] = co_await asio::async_write(conn_.stream, asio::buffer(continue_line), nothrow);
    co_return !ec;
}

// Sends the request (head, then the body as it arrives, beside the response) and reads the
// response head, relaying interim 1xx responses to the client. An upload still going on when
// the response head is here goes on beside it; on any other outcome it has ended.
template <class Stream>
Task<Exchange> RequestExchange<Stream>::exchange(UpstreamLease& lease, const RequestFacts& facts) {
    UpstreamStream& stream = lease.stream();
    ex_.upstream_buffer.clear();
    std::string& head = ex_.to_backend.head;
    write_request_head(ex_.parser->get(), head);
    // With no body, or no body byte at hand yet, the head goes now (the backend can start, and
    // answer early); otherwise it leaves with the first piece of body in one write.
    if (ex_.parser->is_done() || ex_.buffer.size() == 0) {
        conn_.deadline.arm(try_limit(), ConnectionDeadline::upstream);
        error_code ec;
        const std::size_t sent = write_at_once(stream, head, ec);
        if (!ec && sent < head.size()) {
            std::tie(ec, std::ignore) =
                co_await asio::async_write(stream, asio::buffer(head) + sent, nothrow);
        }
        if (ec) {
            co_return conn_.deadline.expired() ? Exchange::upstream_timeout
                                               : Exchange::upstream_failed;
        }
        head.clear();
    }
    if (ex_.parser->is_done() && head.empty()) {
        request_sent();
    } else if (body_at_hand()) {
        // All of it is here (a small POST): it goes at once, with the head, as a backend's
        // socket buffer takes a read's worth whatever the backend does; an upload of its own
        // would cost a coroutine and a timer for nothing. A backend that closed under it may
        // have answered first: its answer is read.
        const Exchange sent = co_await send_request_body(stream, conn_.relay);
        if (sent != Exchange::response_ready && sent != Exchange::upstream_failed) {
            co_return sent;
        }
        request_sent();
    } else {
        start_upload(stream);
    }
    const Exchange outcome = co_await await_response(lease, facts);
    if (outcome == Exchange::response_ready || !upload_) {
        co_return outcome;
    }
    // No response: the upload ends too. Its own failure explains the exchange's when it failed
    // first on the client's side, or timed out writing (its deadline closed the backend
    // connection under the response's read).
    const bool failed_by_itself = upload_->ended && !upload_->stopped;
    const Exchange sent = upload_->outcome;
    co_await stop_upload();
    if (failed_by_itself && sent != Exchange::response_ready && sent != Exchange::upstream_failed) {
        co_return sent;
    }
    co_return outcome;
}

// The request has gone whole: the response's time runs, and the client is watched for leaving.
template <class Stream>
void RequestExchange<Stream>::request_sent() {
    if (response_due_ == std::chrono::steady_clock::time_point::max()) {
        // upstream_response runs from the first try's request sent, over every try after it.
        response_due_ = CoarseClock::now() + config_.timeouts.upstream_response;
    }
    if (!response_over_) {
        // Nothing more is read from the client until the response is over: watch it instead,
        // so a client that leaves releases the backend at once.
        conn_.close_watch.start();
    }
}

// The response head, after any interim responses (relayed to the client).
template <class Stream>
Task<Exchange> RequestExchange<Stream>::await_response(UpstreamLease& lease,
                                                       const RequestFacts& facts) {
    UpstreamStream& stream = lease.stream();
    std::size_t interims = 0;
    for (bool first = true;; first = false) {
        if (!first && CoarseClock::now() >= response_due_) {
            // A backend sending interim responses past upstream_response: each head would
            // re-arm the least try limit (1 ms) from now, for as long as it kept sending.
            co_return Exchange::upstream_timeout;
        }
        const Exchange head = co_await read_response_head(stream, facts);
        if (head != Exchange::response_ready) {
            co_return head;
        }
        const unsigned status = ex_.response_parser->get().result_int();
        if (!lease.reused() && stream.tls() != nullptr) {
            // By now a TLS 1.3 backend has sent its session tickets too.
            conn_.worker.upstream_pool().keep_tls_session(lease.backend().id, stream);
        }
        if (status == 101 && !facts.upgrade) {
            ex_.body_error = "backend switched protocols unasked (101)";
            co_return Exchange::response_invalid;
        }
        if (status == 101 &&
            !upgrade_offered(ex_.response_parser->get()[http::field::upgrade], facts.upgrade_to)) {
            ex_.body_error = "backend switched to a protocol the client did not offer (101)";
            co_return Exchange::response_invalid;
        }
        if (status == 101 && uploading()) {
            // The tunnel begins after the request's body: it goes first, as long as it moves.
            co_await let_upload_run_out();
            if (!upload_sent_all() && !upload_failed_on_client()) {
                // Stalled on either side: not the backend's failure to answer.
                ex_.body_error = "request body stalled before the protocol switch (101)";
                co_return Exchange::body_too_slow;
            }
        }
        if (status >= 200 || status == 101) {
            co_return Exchange::response_ready;
        }
        head_broken_ = true;  // an interim came: a final head that fails now broke off too
        // An interim response (103 Early Hints, 102...): passed on to HTTP/1.1 clients only
        // (RFC 9110 15.2: never to HTTP/1.0), up to max_interim_responses of them.
        // A 100 Continue is the proxy's own to send when the client asked for one (it answers
        // Expect itself); one the client did not ask for is the backend's, passed on too.
        if (facts.version >= 11 && (status != 100 || !facts.expect_continue) &&
            interims++ < config_.limits.max_interim_responses) {
            if (!co_await relay_interim()) {
                co_return Exchange::client_gone;
            }
        }
        forget_drained(stream.socket());  // the response goes on (socket_drain.hpp)
    }
}

// One response head (final or interim) into the response parser, screened and within the
// limits: response_ready when it is there.
template <class Stream>
Task<Exchange> RequestExchange<Stream>::read_response_head(UpstreamStream& stream,
                                                           const RequestFacts& facts) {
    auto& parser = ex_.new_response();
    ex_.response_chunks = conn_.chunk_guard();
    parser.on_chunk_header(ex_.response_chunks);
    parser.header_limit(static_cast<std::uint32_t>(config_.limits.max_response_header));
    parser.body_limit(boost::none);
    if (facts.head) {
        parser.skip(true);
    }
    // A request a preview header pins to its colour is not cut: it was sent there on purpose.
    const bool preview_pinned = colour_pinned_ && !sticky_pinned_;
    // While the request body still goes, the backend may answer at any time, or only once it
    // has it all: the wait is no stall, and the try's limit does not run, until the upload
    // ends (which restarts the read: upload_ended).
    std::optional<AwaitingResponse> awaiting;
    std::size_t checked = 0;
    HeadRead read;
    ResponseRefusal refusal;
    bool continuing = ex_.upstream_buffer.size() > 0;
    while ((read = parse_response_head(ex_.upstream_buffer, parser,
                                       response_header_limits(config_.limits), checked, refusal)) ==
           HeadRead::need_more) {
        if (ex_.upstream_buffer.size() + conn_.read_chunk() > ex_.upstream_buffer.max_size()) {
            break;  // not reached: the scan refuses a head over max_response_header
        }
        if (continuing) {
            forget_drained(stream.socket());  // a head begun (socket_drain.hpp)
        }
        if (!uploading() && !awaiting) {
            conn_.deadline.arm(try_limit(), ConnectionDeadline::upstream);
            awaiting.emplace(conn_.handle(),
                             facts.idempotent && tries_left_ && !preview_pinned && !body_started_ &&
                                 !interim_sent_,
                             cut_before_);
        } else if (!awaiting) {
            conn_.deadline.disarm();
        }
        reading_head_ = uploading();
        auto [ec, n] = co_await stream.async_read_some(
            draining(ex_.upstream_buffer.prepare(conn_.read_room(ex_.upstream_buffer))), nothrow);
        reading_head_ = false;
        if (ec == asio::error::operation_aborted && !awaiting && !uploading() &&
            stream.socket().is_open()) {
            continue;  // the upload ended: the read starts over under the response's limits
        }
        if (ec) {
            break;
        }
        continuing = true;
        ex_.upstream_buffer.commit(n);
    }
    if (read == HeadRead::invalid) {
        if (refusal.breach) {
            conn_.worker.stats().breach(*refusal.breach);
        }
        ex_.body_error = "backend response " + refusal.why;
        co_return Exchange::response_invalid;
    }
    if (read != HeadRead::done || conn_.handle().try_cut) {
        // A head begun and broken off (junk, or half a head, then the close or the timeout):
        // the backend had the request and answered, so it goes nowhere else (HAProxy's 502
        // without `retry-on junk-response`; a GET or DELETE ran twice, the crash hidden: an
        // outside probe). Not a try the worker cut.
        head_broken_ = (head_broken_ || continuing) && !conn_.handle().try_cut;
        if (head_broken_ && !conn_.deadline.expired()) {
            ex_.body_error = "backend closed the connection mid-head";
            co_return Exchange::response_invalid;
        }
        // (Cut as its last read completed: the socket is closed, the body cannot follow.)
        co_return conn_.deadline.expired() ? Exchange::upstream_timeout : Exchange::upstream_failed;
    }
    co_return Exchange::response_ready;
}

// Writes the interim response in the response parser to the client; false if it is gone.
template <class Stream>
Task<bool> RequestExchange<Stream>::relay_interim() {
    auto& interim = ex_.response_parser->get();
    rewrite_interim_head(interim.base());
    write_response_head(interim.base(), ex_.to_client.head);
    conn_.deadline.arm(config_.timeouts.client_write, ConnectionDeadline::client);
    interim_sent_ = true;
    auto [ec, n] =
        co_await asio::async_write(conn_.stream, asio::buffer(ex_.to_client.head), nothrow);
    co_return !ec;
}

// ---- the upload ----------------------------------------------------------------------------

template <class Stream>
RequestExchange<Stream>::Upload::Upload(ClientConnection<Stream>& conn, UpstreamStream& to)
    : stream(to),
      deadline(conn.socket().get_executor(), conn.handle()),
      relay(deadline, conn.worker.stats(), conn.read_chunk(), conn.bulk_read_settings(),
            conn.config.limits.body_burst, conn.splice_settings()),
      task(conn.socket().get_executor()) {}

// Runs at once as far as it goes without waiting: a body at hand that the backend takes has
// gone before the response is read, as when the two went in turn.
template <class Stream>
void RequestExchange<Stream>::start_upload(UpstreamStream& stream) {
    upload_.emplace(conn_, stream);
    upload_->task.start(upload());
}

template <class Stream>
Task<void> RequestExchange<Stream>::upload() {
    const Exchange sent = co_await send_request_body(upload_->stream, upload_->relay);
    upload_ended(sent);
}

namespace {
// An upload that failed on the client's side: the request is broken, whatever the backend says.
bool failed_on_client(Exchange sent) {
    return sent == Exchange::client_gone || sent == Exchange::body_too_slow ||
           sent == Exchange::body_too_large || sent == Exchange::body_malformed;
}
}  // namespace

template <class Stream>
void RequestExchange<Stream>::upload_ended(Exchange sent) {
    upload_->outcome = sent;
    upload_->ended = true;
    // Its last write's limit must not close the connection the response still comes on.
    upload_->deadline.disarm();
    if (upload_->stopped) {
        return;
    }
    UpstreamStream& stream = upload_->stream;
    error_code ignored;
    if (sent == Exchange::response_ready) {
        request_sent();
    } else if (failed_on_client(sent)) {
        // No response can complete the request now: the backend connection goes, and with it
        // the response's read (its outcome is the upload's).
        stream.socket().close(ignored);
        return;
    }
    if (reading_head_) {
        stream.socket().cancel(ignored);  // the read starts over under the response's limits
    }
}

template <class Stream>
bool RequestExchange<Stream>::upload_sent_all() const {
    return !upload_ || (upload_->ended && upload_->outcome == Exchange::response_ready);
}

template <class Stream>
bool RequestExchange<Stream>::upload_failed_on_client() const {
    return upload_ && upload_->ended && !upload_->stopped && failed_on_client(upload_->outcome);
}

// The rest of a body of known length, up to a read's worth, is all in what was read from the
// client, with what the client has sent since (a keep-alive connection's next request lands in
// a small first read, its body behind it in the socket).
template <class Stream>
bool RequestExchange<Stream>::body_at_hand() {
    const auto left = ex_.parser->content_length_remaining();
    if (ex_.parser->chunked() || !left || *left > conn_.read_chunk()) {
        return false;
    }
    if (*left > ex_.buffer.size()) {
        BodyCork cork(BodyCork::plain(conn_.stream), nullptr);
        error_code ec;
        std::size_t n = 0;
        const auto into = ex_.buffer.prepare(conn_.read_room(ex_.buffer));
        if (read_at_once(conn_.stream, cork, into, ec, n) == AtOnce::read && !ec) {
            ex_.buffer.commit(n);
        }
    }
    return *left <= ex_.buffer.size();
}

// Ends an upload still going: its write to the backend (the connection closes) or its read from
// the client; then waits for its coroutine's end. (Caught between two steps, in a turn it gave
// the worker's other connections, it starts its next read afterwards: cancelled again.)
template <class Stream>
Task<void> RequestExchange<Stream>::stop_upload() {
    if (!upload_) {
        co_return;
    }
    while (!upload_->ended) {
        upload_->stopped = true;
        error_code ignored;
        upload_->stream.socket().close(ignored);
        conn_.socket().cancel(ignored);
        co_await upload_->task.wait(std::chrono::milliseconds(10));
    }
    co_await upload_->task.wait();
}

// After the response (or a 101), an upload still going goes on as long as it moves: a backend
// that answered early may still take the body (an answer alone never cuts an upload). One that
// has not moved for timeouts.client_linger (as long as a client gets to send the rest of a
// body nobody reads) is stopped: the backend stopped reading, or the client stopped sending
// once it had its answer.
template <class Stream>
Task<void> RequestExchange<Stream>::let_upload_run_out() {
    const Duration still_limit = std::max(config_.timeouts.client_linger, Duration(100));
    const Duration look =
        std::clamp(config_.timeouts.client_close_check, Duration(10), still_limit);
    auto moved_at = CoarseClock::now();
    std::uint64_t seen = ex_.record.bytes_in;
    while (upload_ && !upload_->ended) {
        if (co_await upload_->task.wait(look)) {
            break;
        }
        const auto now = CoarseClock::now();
        if (ex_.record.bytes_in != seen) {
            seen = ex_.record.bytes_in;
            moved_at = now;
        } else if (now - moved_at >= still_limit) {
            co_await stop_upload();
        }
    }
    if (upload_) {
        co_await upload_->task.wait();
    }
}

// Streams the request body to the backend; response_ready means all of it went.
template <class Stream>
Task<Exchange> RequestExchange<Stream>::send_request_body(UpstreamStream& stream,
                                                          BodyRelay& relay) {
    const BodyLeg leg{config_.timeouts.client_body,
                      ConnectionDeadline::client,
                      try_limit(),
                      ConnectionDeadline::upstream,
                      ex_.parser->get().chunked(),
                      config_.limits.min_request_body_rate};
    // A body still to come may make room at the connection limit if it comes too slowly.
    struct Uploading {
        Worker& worker;
        SessionHandle& handle;
        ~Uploading() { worker.uploaded(handle); }
    } uploading{conn_.worker, conn_.handle()};
    if (!ex_.parser->is_done() && !conn_.handle().OpeningHook::is_linked() &&
        !conn_.handle().slot_released) {
        conn_.worker.uploading(conn_.handle(), ex_.record.bytes_in, ex_.to_backend.body_clock);
    }
    switch (co_await relay.relay(ex_, ex_.to_backend, conn_.stream, ex_.buffer, *ex_.parser, stream,
                                 leg, ex_.record.bytes_in, body_started_)) {
        case BodyEnd::done:
            co_return Exchange::response_ready;
        case BodyEnd::read_failed:
            if (conn_.handle().slot_released) {
                ex_.body_error =
                    "request body slower than min_request_body_rate, closed to make "
                    "room at max_connections";
                co_return Exchange::body_too_slow;
            }
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

// ---- the response ---------------------------------------------------------------------------

template <class Stream>
Task<bool> RequestExchange<Stream>::relay_response(UpstreamLease& lease,
                                                   const RequestFacts& facts) {
    const ResponsePlan plan = prepare_response_head(lease.backend(), facts);
    // The head goes out on its own only when no body byte is at hand; otherwise it leaves with
    // the first piece of body in one write (one syscall instead of two).
    if (plan.no_body || (ex_.upstream_buffer.size() == 0 && !ex_.response_parser->is_done())) {
        conn_.deadline.arm(config_.timeouts.client_write, ConnectionDeadline::client);
        // The whole answer before a close waits for the FIN (see BodyLeg::sink_closes), or
        // under TLS for the close_notify. (Not while the request body still goes: the close
        // waits for its end.)
        const bool closes_after =
            plan.no_body && !plan.keep_alive && !plan.switching && !uploading();
        const bool hold = !ClientConnection<Stream>::tls && closes_after;
        error_code ec;
        std::size_t sent = 0;
        if constexpr (ClientConnection<Stream>::tls) {
            if (closes_after) {
                conn_.stream.hold_until_close();
            }
            sent = write_at_once(conn_.stream, ex_.to_client.head, ec);
        } else {
            sent = write_at_once(conn_.socket(), ex_.to_client.head, ec, hold ? MSG_MORE : 0);
        }
        if (ec || sent == ex_.to_client.head.size()) {
            // All of it went at once (or the client is gone).
        } else if (hold) {
            HeldSend held(conn_.socket());
            std::tie(ec, std::ignore) =
                co_await asio::async_write(held, asio::buffer(ex_.to_client.head) + sent, nothrow);
        } else {
            std::tie(ec, std::ignore) = co_await asio::async_write(
                conn_.stream, asio::buffer(ex_.to_client.head) + sent, nothrow);
        }
        if (ec) {
            co_return false;
        }
        ex_.to_client.head.clear();
    }
    if (plan.switching) {
        tell_answer(lease.backend());  // the 101 was the answer; a tunnel may last an hour
        conn_.close_watch.stop();      // the tunnel reads the client itself
        const std::uint32_t backend = lease.backend().id;
        conn_.worker.tunnel_opened(backend);
        conn_.handle().tunnel_colour = static_cast<int>(index_of(lease.backend().colour));
        co_await conn_.relay.tunnel(ex_, conn_.stream, lease.stream(), config_.timeouts.tunnel_idle,
                                    config_.timeouts.tunnel_half_closed);
        conn_.handle().tunnel_colour = -1;
        conn_.worker.tunnel_closed(backend);
        co_return false;
    }
    if (!plan.no_body) {
        BodyLeg leg{config_.timeouts.upstream_response, ConnectionDeadline::upstream,
                    config_.timeouts.client_write, ConnectionDeadline::client, plan.chunked};
        leg.sink_closes = !plan.keep_alive && !uploading();
        bool started = false;
        const BodyEnd end = co_await conn_.relay.relay(
            ex_, ex_.to_client, lease.stream(), ex_.upstream_buffer, *ex_.response_parser,
            conn_.stream, leg, ex_.record.bytes_out, started);
        if (!response_body_relayed(end)) {
            if (upload_failed_on_client()) {
                // The request failed on the client's side (the backend connection went with it):
                // answered as such while nothing of the response has gone, else cut.
                if (!ex_.to_client.head.empty()) {
                    co_await answer_failure(upload_->outcome, facts);
                } else {
                    conn_.cut = true;
                }
                co_return false;
            }
            // Nothing of the response has gone out (its head waits for the first piece of
            // body): the client gets the proxy's 502 or 504, not a cut connection with no answer.
            const bool backend_side = end == BodyEnd::read_failed || end == BodyEnd::read_timeout ||
                                      end == BodyEnd::malformed;
            if (!ex_.to_client.head.empty() && backend_side && !conn_.close_watch.client_gone()) {
                const std::string reason = ex_.record.error.empty()
                                               ? std::string("backend response cut before its body")
                                               : ex_.record.error;
                co_await reply_error(end == BodyEnd::read_timeout ? http::status::gateway_timeout
                                                                  : http::status::bad_gateway,
                                     reason, true);
            } else if (ex_.to_client.head.empty() && end != BodyEnd::done) {
                // The head went out, not all of the body: the client must see the cut. (A
                // client gone after the whole response went gets it closed as usual: its last
                // piece may wait in the kernel for the FIN, which a reset would throw away.)
                conn_.cut = true;
            }
            co_return false;
        }
    }
    ex_.record.upstream_ms = std::chrono::duration<double, std::milli>(
                                 std::chrono::steady_clock::now() - upstream_started_)
                                 .count();
    const bool complete = ex_.response_parser->is_done() || plan.no_body;
    // The connection is kept only after a clean, fully framed exchange; else the lease closes
    // it.
    if (complete && ex_.parser->is_done() && upload_sent_all() &&
        ex_.response_parser->keep_alive() && !plan.until_close && ex_.upstream_buffer.size() == 0 &&
        !conn_.close_watch.client_gone()) {
        if (plan.no_body) {
            // A body the backend sent anyway (to HEAD, a 204, a 304: the usual stray bytes)
            // must come before the next request does (UpstreamStream::acknowledge_received).
            lease.stream().acknowledge_received();
        }
        conn_.upstreams.keep(lease);
    }
    co_return plan.keep_alive&& complete;
}

// The response head for the client (rewrite_response_head, then the served-by and sticky
// fields) serialized into ex_.to_client.head.
template <class Stream>
ResponsePlan RequestExchange<Stream>::prepare_response_head(const Backend& backend,
                                                            const RequestFacts& facts) {
    const bool may_stay =
        facts.keep_alive && ex_.parser->is_done() && !conn_.worker.closing() && !conn_.last_request;
    const ResponsePlan plan = rewrite_response_head(*ex_.response_parser, facts, may_stay);
    auto& response = ex_.response_parser->get();
    ex_.record.status = response.result_int();
    if (!config_.served_by_header.empty()) {
        response.set(config_.served_by_header,
                     std::string(to_string(backend.colour)) + "/" + backend.name);
    }
    if (set_sticky_) {
        // The colour that served, which a retry may have changed.
        response.insert(http::field::set_cookie,
                        sticky_cookie(config_.sticky, backend.colour, split_since_));
    }
    if (response.find(http::field::date) == response.end()) {
        response.insert(http::field::date, http_date_now());  // (set would look it up again)
    }
    write_response_head(response.base(), ex_.to_client.head);
    return plan;
}

// Whether the response body went through whole; if not, why is counted and logged, and the
// client connection is to close so a cut response never looks complete.
template <class Stream>
bool RequestExchange<Stream>::response_body_relayed(BodyEnd end) {
    if (upload_failed_on_client() && end != BodyEnd::done) {
        return false;  // the backend connection went with the request (upload_ended)
    }
    WorkerStats& stats = conn_.worker.stats();
    if (conn_.close_watch.client_gone()) {
        WorkerStats::add(stats.client_aborts);
        ex_.record.error = "client closed the connection";
        return false;
    }
    if (end == BodyEnd::read_failed || end == BodyEnd::read_timeout || end == BodyEnd::malformed) {
        // The backend died, stalled or framed its body wrongly mid-body: its try failed.
        WorkerStats::add(stats.upstream_broken_responses);
        answer_outcome_ = end == BodyEnd::read_timeout ? TryOutcome::timeout : TryOutcome::reset;
        if (end == BodyEnd::malformed) {
            ex_.record.error = "backend response " + ex_.body_error;
        }
        return false;
    }
    return end == BodyEnd::done;
}

// ---- the proxy's own answers ----------------------------------------------------------------

// When no response came; returns whether the connection stays.
template <class Stream>
Task<bool> RequestExchange<Stream>::answer_failure(Exchange outcome, const RequestFacts& facts) {
    WorkerStats& stats = conn_.worker.stats();
    // Without the whole request body read, the connection cannot carry another request.
    const bool body_read = ex_.parser->is_done();
    const bool can_continue =
        body_read && facts.keep_alive && !conn_.worker.closing() && !conn_.last_request;
    switch (outcome) {
        case Exchange::response_ready:
            break;
        case Exchange::client_gone:
            // Seen by the close watch, or by a read of the body or a write of an interim
            // answer that failed: either way the client left first (it was logged as status 0
            // when it left mid-upload).
            if (!conn_.handle().shutdown_cut) {
                WorkerStats::add(stats.client_aborts);
            }
            ex_.record.status = 499;  // nginx's code: the client closed first
            if (conn_.handle().shutdown_cut) {
                ex_.record.error = "cut at the end of shutdown_grace";
            } else if (conn_.close_watch.client_gone()) {
                ex_.record.error = "client closed the connection";  // over a failed try's
            } else if (ex_.record.error.empty()) {
                ex_.record.error = "client connection ended mid-request";
            }
            co_return false;
        case Exchange::body_too_large: {
            const Refusal too_large{http::status::payload_too_large, "request body too large",
                                    LimitBreach::request_body};
            co_await refuse(too_large);
            co_return false;
        }
        case Exchange::body_malformed: {
            const Refusal malformed{http::status::bad_request, ex_.body_error};
            co_await refuse(malformed);
            co_return false;
        }
        case Exchange::body_too_slow:
            // The deadline (or a newcomer past max_connections: counted as such) closed the
            // socket: the 408 is for the log and the metrics.
            if (!conn_.handle().slot_released) {
                WorkerStats::add(stats.client_body_timeouts);
            }
            ex_.record.status = 408;
            ex_.record.error = ex_.body_error;
            co_return false;
        case Exchange::no_backend:
            co_await reply_error(http::status::service_unavailable, "no backend available",
                                 !can_continue);
            co_return can_continue;
        case Exchange::unreachable:
            co_await reply_error(http::status::bad_gateway, "no backend reachable", !can_continue);
            co_return can_continue;
        case Exchange::out_of_descriptors:
            co_await reply_error(http::status::service_unavailable, "proxy out of file descriptors",
                                 !can_continue);
            co_return can_continue;
        case Exchange::upstream_timeout:
            WorkerStats::add(stats.upstream_timeouts);
            co_await reply_error(http::status::gateway_timeout, "backend did not answer in time",
                                 !can_continue);
            co_return can_continue;
        case Exchange::upstream_failed:
            WorkerStats::add(stats.upstream_broken_responses);
            co_await reply_error(http::status::bad_gateway, "backend failed before responding",
                                 !can_continue);
            co_return can_continue;
        case Exchange::response_invalid:
            WorkerStats::add(stats.upstream_broken_responses);
            co_await reply_error(http::status::bad_gateway, ex_.body_error, !can_continue);
            co_return can_continue;
    }
    co_return false;
}

// A request the proxy answers as its final recipient; the connection goes on when the
// client's request allows it and no body of it is left unread.
template <class Stream>
Task<bool> RequestExchange<Stream>::answer_here(const LocalAnswer& answer,
                                                const RequestFacts& facts) {
    const bool keep =
        facts.keep_alive && ex_.parser->is_done() && !conn_.worker.closing() && !conn_.last_request;
    ex_.record.status = 200;
    ResponseHeader response;
    response.result(http::status::ok);
    response.version(11);
    response.insert(http::field::date, http_date_now());
    if (answer.allow) {
        response.set(http::field::allow, forwarded_methods);
    }
    if (!answer.content_type.empty()) {
        response.set(http::field::content_type, answer.content_type);
    }
    response.set(http::field::content_length, std::to_string(answer.body.size()));
    if (!keep) {
        response.set(http::field::connection, "close");
        conn_.linger = true;
    } else if (facts.version < 11) {
        response.set(http::field::connection, "keep-alive");  // RFC 9112 C.2.2
    }
    write_response_head(response, ex_.to_client.head);
    conn_.deadline.arm(config_.timeouts.client_write, ConnectionDeadline::client);
    std::array<asio::const_buffer, 2> out{asio::buffer(ex_.to_client.head),
                                          asio::buffer(answer.body)};
    const auto [ec, written] = co_await conn_.relay.write_pieces(ex_.to_client, conn_.stream, out);
    co_return !ec && keep;
}

// The answer to a refused request, its bound counted if it went over one.
template <class Stream>
Task<void> RequestExchange<Stream>::refuse(const Refusal& refusal) {
    WorkerStats::add(conn_.worker.stats().bad_requests);
    if (refusal.breach) {
        conn_.worker.stats().breach(*refusal.breach);
    }
    return reply_error(refusal.status, refusal.reason);
}

template <class Stream>
Task<void> RequestExchange<Stream>::reply_error(http::status status, std::string_view reason,
                                                bool close) {
    ex_.record.status = static_cast<unsigned>(status);
    ex_.record.error = std::string(reason);
    if (!ex_.connect_error.empty()) {
        ex_.record.error += " (" + ex_.connect_error + ")";  // for the log, not the client
    }
    const std::string body = std::to_string(static_cast<unsigned>(status)) + " " +
                             std::string(http::obsolete_reason(status)) + ": " +
                             std::string(reason) + "\n";
    ResponseHeader response;
    response.result(status);
    response.version(11);
    response.insert(http::field::date, http_date_now());
    response.set(http::field::content_type, "text/plain");
    response.set("X-BG-Error", reason);
    if (status == http::status::method_not_allowed) {
        response.set(http::field::allow, forwarded_methods);
    }
    response.set(http::field::content_length, std::to_string(body.size()));
    if (close || conn_.worker.closing()) {
        response.set(http::field::connection, "close");
    } else if (client_version_ < 11) {
        response.set(http::field::connection, "keep-alive");  // RFC 9112 C.2.2
    }
    conn_.linger = conn_.linger || close;
    write_response_head(response, ex_.to_client.head);
    conn_.deadline.arm(config_.timeouts.client_write, ConnectionDeadline::client);
    // The answer to HEAD ends with its head (RFC 9110 9.3.2): a body after it would be read as
    // the next response on the connection.
    const bool head_only =
        ex_.parser->is_header_done() && ex_.parser->get().method() == http::verb::head;
    std::array<asio::const_buffer, 2> out{asio::buffer(ex_.to_client.head),
                                          asio::buffer(body.data(), head_only ? 0 : body.size())};
    co_await conn_.relay.write_pieces(ex_.to_client, conn_.stream, out);
}

template class RequestExchange<Socket>;
template class RequestExchange<TlsStream>;

}  // namespace bg
