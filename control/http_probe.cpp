#include "http_probe.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

namespace bg {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

asio::awaitable<ProbeResult> http_probe(const HostPort& backend, const ProbeRequest& probe) {
    constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);
    ProbeResult result;
    auto executor = co_await asio::this_coro::executor;
    boost::system::error_code ec;
    tcp::endpoint endpoint(asio::ip::make_address(backend.ip, ec), backend.port);
    beast::tcp_stream stream(executor);
    // One deadline for the whole exchange.
    stream.expires_after(probe.timeout);
    std::tie(ec) = co_await stream.async_connect(endpoint, nothrow);
    if (ec) {
        result.error = "connect: " + ec.message();
        co_return result;
    }
    if (probe.tcp_only) {
        result.answered = true;
        co_return result;
    }
    http::request<http::empty_body> request{http::verb::get, probe.path, 11};
    request.method_string(probe.method);
    request.set(http::field::host, probe.host.empty() ? backend.text : probe.host);
    request.set(http::field::user_agent, "bgproxy-check");
    request.set(http::field::connection, "close");
    for (const auto& [name, value] : probe.headers) {
        request.set(name, value);
    }
    auto [wec, wn] = co_await http::async_write(stream, request, nothrow);
    if (wec) {
        result.error = "send: " + wec.message();
        co_return result;
    }
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(1 << 20);
    if (!probe.want_body) {
        parser.skip(true);
    }
    auto [rec, rn] = co_await http::async_read_header(stream, buffer, parser, nothrow);
    if (!rec && probe.want_body) {
        std::tie(rec, rn) = co_await http::async_read(stream, buffer, parser, nothrow);
    }
    if (rec) {
        result.error = rec == beast::error::timeout
                           ? "no answer within " + std::to_string(probe.timeout.count()) + "ms"
                           : "read: " + rec.message();
        co_return result;
    }
    result.answered = true;
    result.status = parser.get().result_int();
    result.body = std::move(parser.get().body());
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    co_return result;
}

}  // namespace bg
