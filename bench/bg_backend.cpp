// bg-backend: a small, fast HTTP/1.1 backend for the demo, the integration tests and the
// benchmarks. Every request (any method, any path) is answered 200 `NAME\n` with X-Backend: NAME,
// unless the path or the query asks for something else:
//
//   /healthz                   200 `ok\n`, or the status set by /admin/health?status=CODE
//   /admin/health?status=CODE  sets the /healthz status (process-wide); answers 200 `ok\n`
//   /admin/fail?fail_rate=F    every later request (but /healthz and /admin/*) answers 500 with
//                              probability F (process-wide, 0 turns it off); answers 200 `ok\n`
//   /admin/delay?delay=MS      every later request (but /healthz and /admin/*) waits at least MS
//                              before its header (process-wide, 0 turns it off); 200 `ok\n`
//   /admin/hang?hang=1         every later request (but /healthz and /admin/*) is read and never
//                              answered, as hang=1 does (hang=0 turns it off); 200 `ok\n`
//   /admin/reset?reset=1       every later request (but /healthz and /admin/*) is closed with
//                              RST after its header, as reset=1 does (reset=0 turns it off)
//   /admin/die_after?die_after=N  every later request (but /healthz and /admin/*) without its
//                              own die_after= is cut after N body bytes, as die_after=N does
//                              (/admin/die_after alone turns it off); 200 `ok\n`
//   /admin/mark                from now on, remember when the first request (but /healthz and
//                              /admin/*) arrives; 200 `ok\n`
//   /admin/first               that arrival as Unix nanoseconds (0: none since the mark)
//   /admin/count               requests (but /healthz and /admin/*) received so far
//   /headers                   echoes the request line and headers as received, then body-bytes: N
//   /upload                    `received N\n`
//   /ws (WebSocket upgrade)    echoes every message until close
//
// Query parameters, combinable, on any path:
//   delay=MS        wait before sending the response header
//   status=CODE     response status (200..599)
//   bytes=N         body of exactly N 'x', Content-Length framed, streamed in 64 KiB pieces
//   chunks=N        chunked body of N chunks of chunk_size=S bytes (default 1024), with
//                   chunk_delay=MS before every chunk after the first
//   fail_rate=F     answer 500 with probability F (0..1)
//   hang=1          read the request, never answer; keep the socket until the client closes
//   close=1         Connection: close, and close after the response
//   die_after=N     send the header, then only N body bytes, then close
//   reset=1         close with RST right after the request header, without answering
//
// Request bodies of any size are read through a fixed 64 KiB buffer, counted and discarded;
// every response carries X-Body-Bytes: N.
//
// Threading: one io_context per thread, each with its own SO_REUSEPORT acceptor on the same port.
// A connection lives on one thread; only Backend (atomic health status, mutexed log) is shared.

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>

#include <CLI/CLI.hpp>

namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;

constexpr auto kUseTuple = net::as_tuple(net::use_awaitable);
constexpr std::size_t kPiece = 64 * 1024;          // body read buffer and response write piece
constexpr std::uint32_t kHeaderLimit = 64 * 1024;  // request header limit
constexpr std::uint64_t kDefaultChunkSize = 1024;
constexpr std::string_view kOkBody = "ok\n";
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

using ReusePort = net::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>;
using Request = http::request<http::buffer_body>;

// Request bodies are discarded, so every connection of a thread reads into the same buffer.
thread_local std::array<char, kPiece> t_discard;

// Read-only filler for generated bodies, shared by all threads.
const std::array<char, kPiece>& filler() {
    static const std::array<char, kPiece> bytes = [] {
        std::array<char, kPiece> b;
        b.fill('x');
        return b;
    }();
    return bytes;
}

std::string_view to_std(beast::string_view s) {
    return {s.data(), s.size()};
}

void append_uint(std::string& out, std::uint64_t value) {
    char digits[24];
    auto const [end, ec] = std::to_chars(std::begin(digits), std::end(digits), value);
    out.append(digits, end);
}

template <class T>
bool parse_number(std::string_view text, T& out) {
    T value{};
    auto const [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size()) {
        return false;
    }
    out = value;
    return true;
}

double random_unit() {
    thread_local std::minstd_rand rng{std::random_device{}()};
    return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

// One line per request, from any thread.
class RequestLog {
  public:
    RequestLog() = default;
    RequestLog(const RequestLog&) = delete;
    RequestLog& operator=(const RequestLog&) = delete;
    ~RequestLog() {
        if (file_ != nullptr) {
            std::fclose(file_);
        }
    }

    bool open(const std::string& path) {
        file_ = std::fopen(path.c_str(), "a");
        return file_ != nullptr;
    }

    void write(std::string_view method, std::string_view target, std::uint64_t body_bytes) {
        if (file_ == nullptr) {
            return;
        }
        std::lock_guard lock(mutex_);
        std::fprintf(file_, "%.*s %.*s body=%llu\n", static_cast<int>(method.size()), method.data(),
                     static_cast<int>(target.size()), target.data(),
                     static_cast<unsigned long long>(body_bytes));
        std::fflush(file_);
    }

  private:
    std::mutex mutex_;
    std::FILE* file_ = nullptr;
};

// Process-wide state shared by all threads.
struct Backend {
    explicit Backend(std::string backend_name)
        : name(std::move(backend_name)),
          name_body(name + "\n"),
          fixed_headers("Content-Type: text/plain\r\nX-Backend: " + name + "\r\n") {}

    const std::string name;
    const std::string name_body;      // "NAME\n"
    const std::string fixed_headers;  // pre-built header lines common to every response
    std::atomic<int> health_status{200};
    std::atomic<double> fail_rate{0.0};       // set by /admin/fail
    std::atomic<std::uint64_t> delay_ms{0};   // set by /admin/delay
    std::atomic<bool> hang{false};            // set by /admin/hang
    std::atomic<bool> reset{false};           // set by /admin/reset
    std::atomic<std::int64_t> die_after{-1};  // set by /admin/die_after (-1: off)
    // For the switch and kill benchmarks: when traffic first arrived after /admin/mark (-1:
    // not marked), and how much has arrived.
    std::atomic<std::int64_t> first_after_mark{-1};
    std::atomic<std::uint64_t> received{0};
    RequestLog log;
};

struct Query {
    std::uint64_t delay_ms = 0;
    int status = 0;  // 0: not given
    std::optional<std::uint64_t> bytes;
    std::optional<std::uint64_t> chunks;
    std::uint64_t chunk_size = kDefaultChunkSize;
    std::uint64_t chunk_delay_ms = 0;
    double fail_rate = 0.0;
    std::optional<std::uint64_t> die_after;
    bool hang = false;
    bool close = false;
    bool reset = false;
};

bool is_true(std::string_view value) {
    return value != "0" && value != "false";
}

// Unknown keys and malformed values are ignored.
Query parse_query(std::string_view query) {
    Query q;
    while (!query.empty()) {
        auto const amp = query.find('&');
        auto const param = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
        auto const eq = param.find('=');
        auto const key = param.substr(0, eq);
        auto const value = eq == std::string_view::npos ? std::string_view{} : param.substr(eq + 1);
        std::uint64_t number = 0;
        if (key == "delay") {
            parse_number(value, q.delay_ms);
        } else if (key == "status") {
            int status = 0;
            if (parse_number(value, status) && status >= 200 && status <= 599) {
                q.status = status;
            }
        } else if (key == "bytes") {
            if (parse_number(value, number)) {
                q.bytes = number;
            }
        } else if (key == "chunks") {
            if (parse_number(value, number)) {
                q.chunks = number;
            }
        } else if (key == "chunk_size") {
            if (parse_number(value, number)) {
                q.chunk_size = std::max<std::uint64_t>(number, 1);  // a 0-size chunk ends the body
            }
        } else if (key == "chunk_delay") {
            parse_number(value, q.chunk_delay_ms);
        } else if (key == "fail_rate") {
            parse_number(value, q.fail_rate);
        } else if (key == "die_after") {
            if (parse_number(value, number)) {
                q.die_after = number;
            }
        } else if (key == "hang") {
            q.hang = is_true(value);
        } else if (key == "close") {
            q.close = is_true(value);
        } else if (key == "reset") {
            q.reset = is_true(value);
        }
    }
    return q;
}

enum class Framing { kNone, kLength, kChunked, kUntilClose };

// Response heads are written by hand into a reused string: no per-field allocation on the hot path.
void append_head(std::string& out, const Backend& backend, unsigned version, int status,
                 std::uint64_t body_bytes, Framing framing, std::uint64_t length, bool keep_alive) {
    out += version == 10 ? "HTTP/1.0 " : "HTTP/1.1 ";
    append_uint(out, static_cast<std::uint64_t>(status));
    out += ' ';
    auto const code = http::int_to_status(static_cast<unsigned>(status));
    out += code == http::status::unknown ? "Unknown" : to_std(http::obsolete_reason(code));
    out += "\r\n";
    out += backend.fixed_headers;
    out += "X-Body-Bytes: ";
    append_uint(out, body_bytes);
    out += "\r\n";
    if (framing == Framing::kLength) {
        out += "Content-Length: ";
        append_uint(out, length);
        out += "\r\n";
    } else if (framing == Framing::kChunked) {
        out += "Transfer-Encoding: chunked\r\n";
    }
    if (!keep_alive) {
        out += "Connection: close\r\n";
    } else if (version == 10) {
        out += "Connection: keep-alive\r\n";
    }
    out += "\r\n";
}

struct ReportException {
    void operator()(std::exception_ptr error) const {
        if (!error) {
            return;
        }
        try {
            std::rethrow_exception(error);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "bg-backend: %s\n", e.what());
        }
    }
};

// One connection; lives in the frame of run_session, on the thread that accepted it.
class Session {
  public:
    Session(Backend& backend, tcp::socket socket)
        : backend_(backend), stream_(std::move(socket)), timer_(stream_.get_executor()) {
        out_.reserve(512);
    }

    net::awaitable<void> run() {
        for (;;) {
            parser_.emplace();
            parser_->header_limit(kHeaderLimit);
            parser_->body_limit(boost::none);
            auto [ec, n] = co_await http::async_read_header(stream_, buffer_, *parser_, kUseTuple);
            if (ec) {
                if (ec.category() == http::make_error_code(http::error::bad_target).category() &&
                    ec != http::error::end_of_stream && ec != http::error::partial_message) {
                    co_await reject(ec);
                }
                co_return;
            }
            if (!co_await handle_request()) {
                co_return;
            }
        }
    }

  private:
    void note_arrival(std::string_view path) {
        if (path == "/healthz" || path.starts_with("/admin/")) {
            return;
        }
        backend_.received.fetch_add(1, std::memory_order_relaxed);
        std::int64_t unset = 0;
        if (backend_.first_after_mark.load(std::memory_order_relaxed) == 0) {
            const auto now = std::chrono::system_clock::now().time_since_epoch();
            backend_.first_after_mark.compare_exchange_strong(
                unset, std::chrono::duration_cast<std::chrono::nanoseconds>(now).count());
        }
    }

    std::string_view arrival_counters(std::string_view path) {
        if (path == "/admin/mark") {
            backend_.first_after_mark.store(0);
            return kOkBody;
        }
        const std::int64_t first = backend_.first_after_mark.load();
        text_.clear();
        append_uint(text_, path == "/admin/first"
                               ? static_cast<std::uint64_t>(std::max<std::int64_t>(first, 0))
                               : backend_.received.load());
        text_ += '\n';
        return text_;
    }

    // What a request is answered with: status, body, and the failure and delay it asks for
    // (an /admin/ path sets them for later requests instead).
    struct Answer {
        int status = 200;
        std::string_view body;
        double fail_rate = 0.0;
        std::uint64_t delay_ms = 0;
    };
    Answer answer_for(std::string_view path, const Query& query, const Request& req,
                      std::uint64_t body_bytes) {
        int status = 200;
        std::string_view body = backend_.name_body;
        double fail_rate = query.fail_rate;
        std::uint64_t delay_ms = query.delay_ms;
        if (path == "/admin/health") {
            if (query.status != 0) {
                backend_.health_status.store(query.status, std::memory_order_relaxed);
            }
            body = kOkBody;
        } else if (path == "/admin/fail") {
            backend_.fail_rate.store(query.fail_rate, std::memory_order_relaxed);
            fail_rate = 0.0;
            body = kOkBody;
        } else if (path == "/admin/hang" || path == "/admin/reset" || path == "/admin/die_after") {
            body = kOkBody;
        } else if (path == "/admin/delay") {
            backend_.delay_ms.store(query.delay_ms, std::memory_order_relaxed);
            delay_ms = 0;
            body = kOkBody;
        } else if (path == "/admin/mark" || path == "/admin/first" || path == "/admin/count") {
            body = arrival_counters(path);
        } else {
            if (path != "/healthz") {
                fail_rate = std::max(fail_rate, backend_.fail_rate.load(std::memory_order_relaxed));
                delay_ms = std::max(delay_ms, backend_.delay_ms.load(std::memory_order_relaxed));
            }
            if (path == "/healthz") {
                status = backend_.health_status.load(std::memory_order_relaxed);
                body = kOkBody;
            } else if (path == "/headers") {
                body = describe_request(req, body_bytes);
            } else if (path == "/upload") {
                text_ = "received ";
                append_uint(text_, body_bytes);
                text_ += '\n';
                body = text_;
            }
            if (query.status != 0) {
                status = query.status;
            }
        }
        return Answer{status, body, fail_rate, delay_ms};
    }

    // /admin/die_after sets the process-wide cut (its own answer is whole); a served request
    // without its own die_after= takes it.
    void apply_die_after(std::string_view path, bool served, Query& query) {
        if (path == "/admin/die_after") {
            backend_.die_after.store(
                query.die_after ? static_cast<std::int64_t>(*query.die_after) : -1,
                std::memory_order_relaxed);
            query.die_after.reset();
        } else if (const std::int64_t cut = backend_.die_after.load(std::memory_order_relaxed);
                   served && !query.die_after && cut >= 0) {
            query.die_after = static_cast<std::uint64_t>(cut);
        }
    }

    // Returns whether the connection stays open for the next request.
    net::awaitable<bool> handle_request() {
        Request& req = parser_->get();
        auto const target = to_std(req.target());
        auto const qmark = target.find('?');
        auto const path = target.substr(0, qmark);
        Query query = parse_query(qmark == std::string_view::npos ? std::string_view{}
                                                                  : target.substr(qmark + 1));
        auto const method = to_std(req.method_string());
        note_arrival(path);

        const bool served = path != "/healthz" && !path.starts_with("/admin/");
        apply_die_after(path, served, query);
        if (path == "/admin/reset") {
            backend_.reset.store(query.reset, std::memory_order_relaxed);
        } else if (query.reset || (served && backend_.reset.load(std::memory_order_relaxed))) {
            backend_.log.write(method, target, 0);
            beast::error_code ignored;
            stream_.socket().set_option(net::socket_base::linger(true, 0), ignored);
            stream_.socket().close(ignored);
            co_return false;
        }
        if (path == "/ws" && websocket::is_upgrade(req)) {
            backend_.log.write(method, target, 0);
            co_await echo_websocket();
            co_return false;
        }

        std::uint64_t body_bytes = 0;
        if (!parser_->is_done()) {
            if (req.version() >= 11 && beast::iequals(req[http::field::expect], "100-continue")) {
                auto [ec, n] =
                    co_await net::async_write(stream_, net::buffer(kContinue), kUseTuple);
                if (ec) {
                    co_return false;
                }
            }
            auto const count = co_await read_body();
            if (!count) {
                co_return false;
            }
            body_bytes = *count;
        }
        backend_.log.write(method, target, body_bytes);
        if (path == "/admin/hang") {
            backend_.hang.store(query.hang, std::memory_order_relaxed);
        } else if (query.hang || (served && backend_.hang.load(std::memory_order_relaxed))) {
            co_await hang();
            co_return false;
        }

        auto [status, body, fail_rate, delay_ms] = answer_for(path, query, req, body_bytes);
        if (fail_rate > 0.0 && random_unit() < fail_rate) {
            status = 500;
        }
        if (delay_ms > 0 && !co_await sleep_ms(delay_ms)) {
            co_return false;
        }

        Reply reply{
            .version = req.version(),
            .status = status,
            .body_bytes = body_bytes,
            .keep_alive = req.keep_alive() && !query.close,
            .head = req.method() == http::verb::head,
        };
        out_.clear();
        if (status == 204 || status == 304) {
            append_head(out_, backend_, reply.version, status, body_bytes, Framing::kNone, 0,
                        reply.keep_alive);
            co_return co_await write_head_and(net::const_buffer{}) && finish(reply.keep_alive);
        }
        if (query.chunks) {
            co_return co_await send_chunked(reply, query);
        }
        co_return co_await send_sized(reply, query, body);
    }

    struct Reply {
        unsigned version;
        int status;
        std::uint64_t body_bytes;
        bool keep_alive;
        bool head;
    };

    // Content-Length framed: either `body` or query.bytes of filler; die_after cuts it short.
    net::awaitable<bool> send_sized(const Reply& reply, const Query& query, std::string_view body) {
        std::uint64_t const length = query.bytes ? *query.bytes : body.size();
        append_head(out_, backend_, reply.version, reply.status, reply.body_bytes, Framing::kLength,
                    length, reply.keep_alive);
        std::uint64_t remaining =
            reply.head ? 0 : std::min(length, query.die_after.value_or(length));
        if (!query.bytes) {
            if (!co_await write_head_and(net::buffer(body.data(), remaining))) {
                co_return false;
            }
        } else {
            auto const first = std::min<std::uint64_t>(remaining, kPiece);
            if (!co_await write_head_and(net::buffer(filler().data(), first))) {
                co_return false;
            }
            if (!co_await write_filler(remaining - first)) {
                co_return false;
            }
        }
        if (query.die_after && !reply.head) {
            beast::error_code ignored;
            stream_.socket().close(ignored);  // an upstream dying mid-body
            co_return false;
        }
        co_return finish(reply.keep_alive);
    }

    // Chunked (HTTP/1.1) or close-delimited (HTTP/1.0 has no chunked coding).
    net::awaitable<bool> send_chunked(Reply reply, const Query& query) {
        bool const raw = reply.version < 11;
        if (raw) {
            reply.keep_alive = false;
        }
        append_head(out_, backend_, reply.version, reply.status, reply.body_bytes,
                    raw ? Framing::kUntilClose : Framing::kChunked, 0, reply.keep_alive);
        if (!co_await write_head_and(net::const_buffer{})) {
            co_return false;
        }
        if (reply.head) {
            co_return finish(reply.keep_alive);
        }
        std::uint64_t const size = query.chunk_size;
        std::uint64_t budget = query.die_after.value_or(UINT64_MAX);
        for (std::uint64_t i = 0; i < *query.chunks; ++i) {
            if (i > 0 && query.chunk_delay_ms > 0 && !co_await sleep_ms(query.chunk_delay_ms)) {
                co_return false;
            }
            std::uint64_t const n = std::min(size, budget);
            budget -= n;
            if (!raw && n == size && size <= kPiece) {
                auto const chunk = http::make_chunk(net::buffer(filler().data(), size));
                if (!co_await write(chunk)) {
                    co_return false;
                }
                continue;
            }
            if (!raw && !co_await write(http::chunk_header{size})) {
                co_return false;
            }
            if (!co_await write_filler(n)) {
                co_return false;
            }
            if (n < size) {
                beast::error_code ignored;
                stream_.socket().close(ignored);  // die_after: cut inside the chunk
                co_return false;
            }
            if (!raw && !co_await write(http::chunk_crlf{})) {
                co_return false;
            }
        }
        if (raw) {
            co_return finish(false);
        }
        if (!co_await write(http::make_chunk_last())) {
            co_return false;
        }
        if (query.die_after) {
            beast::error_code ignored;
            stream_.socket().close(ignored);
            co_return false;
        }
        co_return finish(reply.keep_alive);
    }

    // Reads the rest of the request body into the discard buffer; returns the byte count.
    net::awaitable<std::optional<std::uint64_t>> read_body() {
        std::uint64_t total = 0;
        // Beast reads as much as the buffer has room for, at least 512 bytes: a buffer sized for
        // heads took a 1 MiB upload in 2,048 reads, and the backend, not the proxy, was the limit.
        if (!parser_->is_done()) {
            buffer_.reserve(kPiece);
        }
        while (!parser_->is_done()) {
            auto& discard = t_discard;
            auto& body = parser_->get().body();
            body.data = discard.data();
            body.size = discard.size();
            auto [ec, n] = co_await http::async_read(stream_, buffer_, *parser_, kUseTuple);
            if (ec && ec != http::error::need_buffer) {
                co_return std::nullopt;
            }
            total += discard.size() - parser_->get().body().size;
        }
        co_return total;
    }

    std::string_view describe_request(const Request& req, std::uint64_t body_bytes) {
        text_.clear();
        text_ += to_std(req.method_string());
        text_ += ' ';
        text_ += to_std(req.target());
        text_ += req.version() == 10 ? " HTTP/1.0\n" : " HTTP/1.1\n";
        for (const auto& field : req) {
            text_ += to_std(field.name_string());
            text_ += ": ";
            text_ += to_std(field.value());
            text_ += '\n';
        }
        text_ += "body-bytes: ";
        append_uint(text_, body_bytes);
        text_ += '\n';
        return text_;
    }

    net::awaitable<void> echo_websocket() {
        websocket::stream<beast::tcp_stream> ws(std::move(stream_));
        ws.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
        ws.auto_fragment(false);  // one frame per echoed message: simpler for test clients
        const Backend* backend = &backend_;
        ws.set_option(websocket::stream_base::decorator(
            [backend](websocket::response_type& res) { res.set("X-Backend", backend->name); }));
        auto [ec] = co_await ws.async_accept(parser_->get(), kUseTuple);
        if (ec) {
            co_return;
        }
        beast::flat_buffer message;
        for (;;) {
            auto [read_ec, n] = co_await ws.async_read(message, kUseTuple);
            if (read_ec) {
                co_return;  // websocket::error::closed after a close frame, or a broken peer
            }
            ws.text(ws.got_text());
            auto [write_ec, m] = co_await ws.async_write(message.data(), kUseTuple);
            if (write_ec) {
                co_return;
            }
            message.consume(message.size());
        }
    }

    // hang=1: never answer; hold the socket until the client closes.
    net::awaitable<void> hang() {
        for (;;) {
            auto [ec, n] = co_await stream_.async_read_some(net::buffer(t_discard), kUseTuple);
            if (ec) {
                co_return;
            }
        }
    }

    net::awaitable<void> reject(beast::error_code ec) {
        out_.clear();
        int const status = ec == http::error::header_limit ? 431 : 400;
        append_head(out_, backend_, 11, status, 0, Framing::kLength, 0, false);
        co_await write_head_and(net::const_buffer{});
        finish(false);
    }

    // Writes out_ (the response head) together with the first piece of the body.
    net::awaitable<bool> write_head_and(net::const_buffer body) {
        std::array<net::const_buffer, 2> const buffers{net::buffer(out_), body};
        co_return co_await write(buffers);
    }

    template <class ConstBuffers>
    net::awaitable<bool> write(const ConstBuffers& buffers) {
        auto [ec, n] = co_await net::async_write(stream_, buffers, kUseTuple);
        co_return !ec;
    }

    net::awaitable<bool> write_filler(std::uint64_t count) {
        while (count > 0) {
            auto const piece = std::min<std::uint64_t>(count, kPiece);
            if (!co_await write(net::buffer(filler().data(), piece))) {
                co_return false;
            }
            count -= piece;
        }
        co_return true;
    }

    net::awaitable<bool> sleep_ms(std::uint64_t ms) {
        timer_.expires_after(std::chrono::milliseconds(ms));
        auto [ec] = co_await timer_.async_wait(kUseTuple);
        co_return !ec;
    }

    // After a complete response: keep the connection, or end it with a FIN.
    bool finish(bool keep_alive) {
        if (!keep_alive) {
            beast::error_code ignored;
            stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
        }
        return keep_alive;
    }

    Backend& backend_;
    beast::tcp_stream stream_;
    beast::flat_buffer buffer_;  // reused across the requests of the connection
    std::optional<http::request_parser<http::buffer_body>> parser_;
    net::steady_timer timer_;
    std::string out_;   // response head (+ small body), reused
    std::string text_;  // generated bodies (/headers, /upload), reused
};

net::awaitable<void> run_session(Backend& backend, tcp::socket socket) {
    Session session(backend, std::move(socket));
    co_await session.run();
}

net::awaitable<void> accept_loop(Backend& backend, tcp::acceptor acceptor) {
    auto executor = co_await net::this_coro::executor;
    net::steady_timer backoff(executor);
    for (;;) {
        auto [ec, socket] = co_await acceptor.async_accept(kUseTuple);
        if (ec) {
            if (ec == net::error::operation_aborted) {
                co_return;
            }
            // EMFILE and friends: back off instead of spinning.
            backoff.expires_after(std::chrono::milliseconds(10));
            co_await backoff.async_wait(kUseTuple);
            continue;
        }
        beast::error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);
        net::co_spawn(executor, run_session(backend, std::move(socket)), ReportException{});
    }
}

// "IP:PORT", "[IPv6]:PORT"; "localhost" and "*" (or empty) are accepted for convenience.
std::optional<tcp::endpoint> parse_listen(std::string_view text) {
    std::string_view host;
    std::string_view port;
    if (text.starts_with('[')) {
        auto const close = text.find(']');
        if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
            return std::nullopt;
        }
        host = text.substr(1, close - 1);
        port = text.substr(close + 2);
    } else {
        auto const colon = text.rfind(':');
        if (colon == std::string_view::npos) {
            return std::nullopt;
        }
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
    }
    unsigned short port_number = 0;
    if (!parse_number(port, port_number)) {
        return std::nullopt;
    }
    if (host.empty() || host == "*") {
        host = "0.0.0.0";
    } else if (host == "localhost") {
        host = "127.0.0.1";
    }
    beast::error_code ec;
    auto const address = net::ip::make_address(std::string(host), ec);
    if (ec) {
        return std::nullopt;
    }
    return tcp::endpoint(address, port_number);
}

std::string format_endpoint(const tcp::endpoint& endpoint) {
    auto const address = endpoint.address().to_string();
    auto const port = std::to_string(endpoint.port());
    return endpoint.address().is_v6() ? "[" + address + "]:" + port : address + ":" + port;
}

tcp::acceptor open_acceptor(net::io_context& ioc, const tcp::endpoint& endpoint,
                            beast::error_code& ec) {
    tcp::acceptor acceptor(ioc);
    acceptor.open(endpoint.protocol(), ec);
    if (!ec) {
        acceptor.set_option(net::socket_base::reuse_address(true), ec);
    }
    if (!ec) {
        acceptor.set_option(ReusePort(true), ec);
    }
    if (!ec) {
        acceptor.bind(endpoint, ec);
    }
    if (!ec) {
        acceptor.listen(net::socket_base::max_listen_connections, ec);
    }
    return acceptor;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"bg-backend: HTTP/1.1 backend for the bgproxy demo, tests and benchmarks"};
    std::string listen;
    std::string name;
    unsigned threads = 1;
    std::string log_path;
    app.add_option("--listen", listen, "ADDR:PORT or [IPv6]:PORT; port 0 picks a free port")
        ->required();
    app.add_option("--name", name, "backend name: response body and X-Backend header")->required();
    app.add_option("--threads", threads, "threads, each with its own SO_REUSEPORT acceptor")
        ->capture_default_str()
        ->check(CLI::Range(1, 256));
    app.add_option("--log", log_path, "append one line per request: METHOD TARGET body=N");
    CLI11_PARSE(app, argc, argv);

    if (name.empty() || std::any_of(name.begin(), name.end(),
                                    [](unsigned char c) { return c < 0x20 || c == 0x7f; })) {
        std::fprintf(stderr, "bg-backend: --name must be non-empty printable text\n");
        return 2;
    }
    auto const endpoint = parse_listen(listen);
    if (!endpoint) {
        std::fprintf(stderr, "bg-backend: bad --listen '%s' (want IP:PORT or [IPv6]:PORT)\n",
                     listen.c_str());
        return 2;
    }
    Backend backend(name);
    if (!log_path.empty() && !backend.log.open(log_path)) {
        std::fprintf(stderr, "bg-backend: cannot open log %s: %s\n", log_path.c_str(),
                     std::strerror(errno));
        return 1;
    }

    std::vector<std::unique_ptr<net::io_context>> contexts;
    tcp::endpoint bind_to = *endpoint;
    for (unsigned i = 0; i < threads; ++i) {
        auto& ioc = *contexts.emplace_back(std::make_unique<net::io_context>(1));
        beast::error_code ec;
        tcp::acceptor acceptor = open_acceptor(ioc, bind_to, ec);
        if (i == 0 && !ec) {
            bind_to = acceptor.local_endpoint(ec);  // port 0: the first bind picks the port
        }
        if (ec) {
            std::fprintf(stderr, "bg-backend: cannot listen on %s: %s\n",
                         format_endpoint(bind_to).c_str(), ec.message().c_str());
            return 1;
        }
        net::co_spawn(ioc, accept_loop(backend, std::move(acceptor)), ReportException{});
    }

    net::signal_set signals(*contexts.front(), SIGINT, SIGTERM);
    signals.async_wait([&contexts](const beast::error_code&, int) {
        for (auto& ioc : contexts) {
            ioc->stop();
        }
    });

    std::printf("listening on %s\n", format_endpoint(bind_to).c_str());
    std::fflush(stdout);

    std::vector<std::thread> workers;
    for (unsigned i = 1; i < threads; ++i) {
        workers.emplace_back([ioc = contexts[i].get()] { ioc->run(); });
    }
    contexts.front()->run();
    for (auto& worker : workers) {
        worker.join();
    }
    return 0;
}
