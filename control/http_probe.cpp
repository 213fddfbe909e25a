#include "http_probe.hpp"

#include <cerrno>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <optional>

#include "backend_tls_context.hpp"
#include "proxy_protocol.hpp"

namespace bg {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);

// The HTTP exchange, over a plain or a TLS stream.
template <class Stream>
asio::awaitable<void> exchange(Stream& stream, const HostPort& backend, const ProbeRequest& probe,
                               ProbeResult& result) {
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
        co_return;
    }
    // Bounded: Beast 1.81 limits neither a chunk-size line nor the trailers, so an endless one
    // fails here instead of growing the buffer until the timeout.
    beast::flat_buffer buffer(64 * 1024);
    std::optional<http::response_parser<http::string_body>> parser;
    beast::error_code rec;
    // Interim responses (100, 103 Early Hints) come before the answer: each is a whole message
    // to Beast, and the final one follows (a few at most).
    for (int interim = 0;; ++interim) {
        parser.emplace();
        parser->body_limit(1 << 20);
        // A head as large as the data path relays (max_response_header's default, and the
        // buffer's bound), not Beast's 8 KiB: a big header on /healthz must not fail a colour over.
        parser->header_limit(64 * 1024);
        if (!probe.want_body) {
            parser->skip(true);
        }
        std::tie(rec, std::ignore) =
            co_await http::async_read_header(stream, buffer, *parser, nothrow);
        const unsigned status = parser->get().result_int();
        if (rec || status < 100 || status >= 200 || status == 101) {
            break;
        }
        if (interim == 8) {
            result.error = "more than 8 interim (1xx) responses";
            co_return;
        }
    }
    if (!rec && probe.want_body) {
        std::tie(rec, std::ignore) = co_await http::async_read(stream, buffer, *parser, nothrow);
    }
    if (rec) {
        result.error = rec == beast::error::timeout
                           ? "no answer within " + std::to_string(probe.timeout.count()) + "ms"
                           : "read: " + rec.message();
        co_return;
    }
    result.answered = true;
    result.status = parser->get().result_int();
    result.body = std::move(parser->get().body());
}

}  // namespace

ProbeRequest connecting_as(const PoolConfig& pool) {
    ProbeRequest request;
    request.tls = pool.tls_context;
    request.send_proxy_protocol = pool.send_proxy_protocol;
    return request;
}

asio::awaitable<ProbeResult> http_probe(const HostPort& backend, const ProbeRequest& probe) {
    ProbeResult result;
    auto executor = co_await asio::this_coro::executor;
    boost::system::error_code ec;
    tcp::endpoint endpoint(asio::ip::make_address(backend.ip, ec), backend.port);
    beast::tcp_stream stream(executor);
    // The socket is made first: failing, it is the proxy's own shortage (out of descriptors),
    // never the backend's failure.
    stream.socket().open(endpoint.protocol(), ec);
    if (ec) {
        result.error = "socket: " + ec.message();
        result.local_failure = true;
        co_return result;
    }
    // One deadline for the whole exchange.
    stream.expires_after(probe.timeout);
    std::tie(ec) = co_await stream.async_connect(endpoint, nothrow);
    if (ec) {
        result.error = "connect: " + ec.message();
        // Out of local ports or kernel memory: the proxy's shortage too.
        const int code = ec.category() == boost::system::system_category() ? ec.value() : 0;
        result.local_failure = code == ENOBUFS || code == ENOMEM || code == EADDRNOTAVAIL;
        co_return result;
    }
    if (probe.send_proxy_protocol) {
        const std::string header = encode_proxy_v2_local();
        std::tie(ec, std::ignore) =
            co_await asio::async_write(stream, asio::buffer(header), nothrow);
        if (ec) {
            result.error = "PROXY header: " + ec.message();
            co_return result;
        }
    }
    if (probe.tls) {
        asio::ssl::stream<beast::tcp_stream&> tls(stream, probe.tls->context());
        std::string why;
        if (!probe.tls->prepare(tls.native_handle(), backend, why)) {
            result.error = "tls: " + why;
            co_return result;
        }
        std::tie(ec) = co_await tls.async_handshake(asio::ssl::stream_base::client, nothrow);
        if (ec) {
            result.error =
                "tls: " + (ec == beast::error::timeout ? std::string("handshake timed out")
                                                       : BackendTlsContext::handshake_error(
                                                             tls.native_handle(), ec.message()));
            co_return result;
        }
        if (probe.tcp_only) {
            result.answered = true;
        } else {
            co_await exchange(tls, backend, probe, result);
        }
    } else if (probe.tcp_only) {
        result.answered = true;
    } else {
        co_await exchange(stream, backend, probe, result);
    }
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    co_return result;
}

}  // namespace bg
