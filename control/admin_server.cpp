#include "admin_server.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
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

}  // namespace

AdminServer::AdminServer(asio::io_context& io, Switchboard& switchboard, MetricsSource metrics)
    : io_(io),
      switchboard_(switchboard),
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
            asio::co_spawn(
                io_,
                [this, socket = std::move(socket)]() mutable -> asio::awaitable<void> {
                    beast::tcp_stream stream(std::move(socket));
                    beast::flat_buffer buffer;
                    for (;;) {
                        http::request<http::string_body> request;
                        stream.expires_after(switchboard_.config()->timeouts.client_keepalive);
                        auto [rec, rn] =
                            co_await http::async_read(stream, buffer, request, nothrow);
                        if (rec) {
                            break;
                        }
                        http::response<http::string_body> response{http::status::ok,
                                                                   request.version()};
                        response.set(http::field::content_type, "text/plain; charset=utf-8");
                        const auto target = request.target();
                        const auto path = target.substr(0, target.find('?'));
                        if (request.method() != http::verb::get &&
                            request.method() != http::verb::head) {
                            // A read-only listener: nothing here changes state.
                            response.result(http::status::method_not_allowed);
                            response.set(http::field::allow, "GET, HEAD");
                            response.body() = "the admin listener is read-only: use bgctl\n";
                        } else if (path == "/healthz") {
                            response.body() = "ok\n";
                        } else if (path == "/readyz") {
                            const bool ready = !draining_ && !switchboard_.panic();
                            response.result(ready ? http::status::ok
                                                  : http::status::service_unavailable);
                            response.body() = draining_ ? "draining\n"
                                              : ready   ? "ready\n"
                                                        : "no colour can serve\n";
                        } else if (path == "/status" || (path == "/metrics" && metrics_)) {
                            // Both are produced by the control thread's own machinery, which
                            // answers through a callback; a channel turns it back into a step.
                            Mailbox mailbox(stream.get_executor(), 1);
                            if (path == "/status") {
                                Caller self;
                                self.role = Role::read;
                                switchboard_.execute(
                                    self, "status", [&mailbox](const json::object& reply) {
                                        mailbox.try_send(boost::system::error_code{},
                                                         json::serialize(reply) + "\n");
                                    });
                                response.set(http::field::content_type, "application/json");
                            } else {
                                metrics_([&mailbox](std::string text) {
                                    mailbox.try_send(boost::system::error_code{}, std::move(text));
                                });
                                response.set(http::field::content_type,
                                             "text/plain; version=0.0.4; charset=utf-8");
                            }
                            auto [mec, body] = co_await mailbox.async_receive(nothrow);
                            response.body() = std::move(body);
                        } else {
                            response.result(http::status::not_found);
                            response.body() =
                                "unknown path; try /healthz, /readyz, /status, /metrics\n";
                        }
                        response.keep_alive(request.keep_alive());
                        response.prepare_payload();
                        auto [wec, wn] = co_await http::async_write(stream, response, nothrow);
                        if (wec || !response.keep_alive()) {
                            break;
                        }
                    }
                    boost::system::error_code ignored;
                    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
                },
                asio::detached);
        }
        accept();
    });
}

}  // namespace bg
