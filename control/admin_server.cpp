#include "admin_server.hpp"

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json/serialize.hpp>

namespace bg {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;

namespace {

constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);
using Mailbox = asio::experimental::channel<void(boost::system::error_code, std::string)>;

// The path of an origin-form or absolute-form target (RFC 9112 3.2.2: a server accepts both),
// without its query.
std::string_view path_of(std::string_view target) {
    if (const auto scheme = target.find("://"); !target.starts_with('/') && scheme != target.npos) {
        const auto slash = target.find('/', scheme + 3);
        target = slash == target.npos ? std::string_view("/") : target.substr(slash);
    }
    return target.substr(0, target.find('?'));
}

// A refusal read while the client was still sending (a body, the rest of a long head): closing
// with its bytes unread would reset the connection, and the reset can overtake the answer.
// So the sending side closes first and what comes is read and dropped, for a second at most.
asio::awaitable<void> drain_before_close(beast::tcp_stream& stream) {
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream.expires_after(std::chrono::seconds(1));
    std::array<char, 4096> sink;
    for (std::size_t drained = 0; drained < (1u << 20);) {
        auto [ec, n] = co_await stream.async_read_some(asio::buffer(sink), nothrow);
        if (ec) {
            break;
        }
        drained += n;
    }
}

}  // namespace

AdminServer::AdminServer(asio::io_context& io, Switchboard& switchboard,
                         std::size_t max_connections, MetricsSource metrics)
    : io_(io),
      switchboard_(switchboard),
      slots_(max_connections, 0),
      metrics_(std::move(metrics)),
      acceptor_(io),
      accept_pause_(io, "admin listener") {}

bool AdminServer::open(const std::string& address, std::string& error) {
    std::string why;
    auto where = resolve_host_port(address, why);
    if (!where) {
        error = "admin listener '" + address + "': " + why;
        return false;
    }
    boost::system::error_code ec;
    tcp::endpoint endpoint(asio::ip::make_address(where->ip, ec), where->port);
    if (!ec) {
        acceptor_.open(endpoint.protocol(), ec);
    }
    if (!ec) {
        acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    }
    if (!ec) {
        acceptor_.bind(endpoint, ec);
    }
    if (!ec) {
        acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    }
    if (ec) {
        error = "cannot listen on admin address " + address + ": " + ec.message();
        return false;
    }
    port_ = acceptor_.local_endpoint().port();
    return true;
}

void AdminServer::start() {
    accept();
}

void AdminServer::close() {
    boost::system::error_code ignored;
    acceptor_.close(ignored);
    accept_pause_.cancel();
}

void AdminServer::accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket socket) {
        if (ec == asio::error::operation_aborted || !acceptor_.is_open()) {
            return;
        }
        if (accept_pause_.pause_after(ec, switchboard_.config()->timeouts.accept_pause,
                                      [this] { accept(); })) {
            return;  // out of descriptors: accepting again at once would spin
        }
        if (!ec) {
            asio::co_spawn(io_, serve(std::move(socket)), asio::detached);
        }
        accept();
    });
}

asio::awaitable<void> AdminServer::serve(tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    // A newcomer finding every slot busy waits its turn, for as long as it has to send a head.
    // (Built outside the co_await: GCC 12 miscompiles temporaries there.)
    ConnectionSlots::Connection connection;
    connection.close = [&stream] {
        boost::system::error_code ignored;
        stream.socket().close(ignored);
    };
    connection.has_request = [&stream, &buffer] {
        const auto read = buffer.data();
        return ConnectionSlots::request_pending(
            stream.socket().native_handle(),
            std::string_view(static_cast<const char*>(read.data()), read.size()), "\r\n\r\n");
    };
    const Duration patience = switchboard_.config()->timeouts.client_header;
    const ConnectionSlots::Handle slot = co_await slots_.take_in_turn(connection, patience);
    // Released however the coroutine ends: a slot left behind would close a dead stream.
    struct Leave {
        ConnectionSlots& slots;
        const ConnectionSlots::Handle& slot;
        ~Leave() { slots.release(slot); }
    } leave{slots_, slot};
    for (bool first = true; slot != nullptr && stream.socket().is_open(); first = false) {
        slots_.idle(slot);
        // A copy: a reload while this connection waits replaces the config it would point into.
        const Timeouts timeouts = switchboard_.config()->timeouts;
        if (!first && buffer.size() == 0) {
            // Between requests only the keep-alive timeout; the next head then has client_header.
            stream.expires_after(timeouts.client_keepalive);
            auto [ec, n] = co_await stream.async_read_some(buffer.prepare(1024), nothrow);
            if (ec) {
                break;
            }
            buffer.commit(n);
        }
        http::request_parser<http::empty_body> parser;
        parser.header_limit(
            static_cast<std::uint32_t>(switchboard_.config()->limits.max_request_header));
        stream.expires_after(timeouts.client_header);
        auto [rec, rn] = co_await http::async_read_header(stream, buffer, parser, nothrow);
        ConnectionSlots::busy(*slot);  // (until its head is in, a connection may give way)
        const auto& request = parser.get();
        Response response{http::status::ok, rec ? 11u : request.version()};
        const bool has_body = !rec && (parser.chunked() || parser.content_length().value_or(0) > 0);
        const bool owed = co_await respond(request, has_body, rec, response);
        if (!owed) {
            break;  // gone, or too slow: nothing to answer
        }
        const bool stays = !rec && response.result() != http::status::payload_too_large &&
                           response.result() != http::status::bad_request && request.keep_alive();
        response.keep_alive(stays);
        response.prepare_payload();
        if (!rec && request.method() == http::verb::head) {
            response.body().clear();  // the length stays: what a GET would get (RFC 9110 9.3.2)
        }
        // While the answer waits on its client the slot may be taken, as the control socket's:
        // clients pipelining requests they never read held every slot, and a load balancer's
        // readiness probe was closed unanswered. (An answer the socket buffers take whole, as
        // a reading client's /metrics, is written before a newcomer waiting its turn wakes.)
        slots_.answering(slot);
        stream.expires_after(timeouts.client_write);
        auto [wec, wn] = co_await http::async_write(stream, response, nothrow);
        if (!wec && !stays && response.result() != http::status::ok) {
            co_await drain_before_close(stream);
        }
        if (wec || !stays) {
            break;
        }
    }
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
}

asio::awaitable<bool> AdminServer::respond(const Request& request, bool has_body,
                                           boost::system::error_code failed, Response& response) {
    response.set(http::field::content_type, "text/plain; charset=utf-8");
    if (failed == http::error::header_limit) {
        response.result(http::status::request_header_fields_too_large);
        response.body() = "request header too large\n";
    } else if (failed &&
               failed.category() == http::make_error_code(http::error::bad_target).category() &&
               failed != http::error::end_of_stream && failed != http::error::partial_message) {
        response.result(http::status::bad_request);
        response.body() = "malformed request: " + failed.message() + "\n";
    } else if (failed) {
        co_return false;
    } else if (const std::size_t hosts = request.count(http::field::host);
               hosts > 1 || (hosts == 0 && request.version() >= 11)) {
        // RFC 9112 3.2: a server MUST refuse these, as the data path does.
        response.result(http::status::bad_request);
        response.body() = "an HTTP/1.1 request carries exactly one Host field\n";
    } else if (has_body) {
        response.result(http::status::payload_too_large);
        response.body() = "the admin listener takes no request body\n";
    } else if (request.method() != http::verb::get && request.method() != http::verb::head) {
        // A read-only listener: nothing here changes state.
        response.result(http::status::method_not_allowed);
        response.set(http::field::allow, "GET, HEAD");
        response.body() = "the admin listener is read-only: use bgctl\n";
    } else {
        co_await answer(path_of(request.target()), response);
    }
    co_return true;
}

asio::awaitable<void> AdminServer::answer(std::string_view path, Response& response) {
    if (path == "/healthz") {
        response.body() = "ok\n";
    } else if (path == "/readyz") {
        const bool ready = !draining_ && !switchboard_.panic();
        response.result(ready ? http::status::ok : http::status::service_unavailable);
        response.body() = draining_ ? "draining\n" : ready ? "ready\n" : "no colour can serve\n";
    } else if (path == "/status" || (path == "/metrics" && metrics_)) {
        // Both are produced by the control thread's own machinery, which answers through a
        // callback; a channel turns it back into a step.
        Mailbox mailbox(io_.get_executor(), 1);
        if (path == "/status") {
            Caller self;
            self.role = Role::read;
            switchboard_.execute(self, "status", [&mailbox](const json::object& reply) {
                mailbox.try_send(boost::system::error_code{}, json::serialize(reply) + "\n");
            });
            response.set(http::field::content_type, "application/json");
        } else {
            metrics_([&mailbox](std::string text) {
                mailbox.try_send(boost::system::error_code{}, std::move(text));
            });
            response.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
        }
        auto [mec, body] = co_await mailbox.async_receive(nothrow);
        response.body() = std::move(body);
    } else {
        response.result(http::status::not_found);
        response.body() = "unknown path; try /healthz, /readyz, /status, /metrics\n";
    }
}

}  // namespace bg
