#include "proxy_header_reader.hpp"

#include <sys/socket.h>

#include <array>
#include <cerrno>

#include "connection_deadline.hpp"
#include "proxy_protocol.hpp"
#include "worker.hpp"

namespace bg {

namespace asio = boost::asio;
using boost::system::error_code;

Task<std::optional<ClientEndpoints>> read_proxy_header(Worker& worker, const Config& config,
                                                       const ListenerConfig& listener,
                                                       Socket& socket, SessionHandle& handle) {
    error_code ec;
    const auto peer = socket.remote_endpoint(ec);
    if (ec || !listener.proxy_protocol_from.contains(peer.address())) {
        WorkerStats::add(worker.stats().proxy_headers_refused);
        co_return std::nullopt;
    }
    ConnectionDeadline deadline(socket.get_executor(), handle);
    deadline.arm(config.timeouts.client_header, ConnectionDeadline::client);
    std::array<char, max_proxy_header> bytes;
    std::size_t have = 0;  // bytes consumed so far: all of them part of the header
    for (;;) {
        auto [wec] = co_await socket.async_wait(asio::socket_base::wait_read, nothrow);
        if (wec) {
            break;
        }
        // Peek, so that what follows the header stays in the socket for the session.
        const ssize_t n = ::recv(socket.native_handle(), bytes.data() + have, bytes.size() - have,
                                 MSG_PEEK | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        const auto seen = static_cast<std::size_t>(n);
        const ProxyHeaderParse parsed =
            parse_proxy_header(std::string_view(bytes.data(), have + seen));
        if (parsed.status == ProxyHeaderStatus::malformed) {
            break;
        }
        // Consume what belongs to the header: all of it when incomplete, up to its end otherwise.
        const std::size_t take =
            parsed.status == ProxyHeaderStatus::complete ? parsed.length - have : seen;
        if (::recv(socket.native_handle(), bytes.data() + have, take, MSG_DONTWAIT) !=
            static_cast<ssize_t>(take)) {
            break;
        }
        have += take;
        if (parsed.status == ProxyHeaderStatus::complete) {
            deadline.disarm();
            if (parsed.header.local) {
                // The balancer's own connection (a health check): it speaks for itself.
                co_return ClientEndpoints{peer, socket.local_endpoint(ec), true};
            }
            co_return ClientEndpoints{parsed.header.source, parsed.header.destination, false};
        }
        if (have == bytes.size()) {
            break;
        }
    }
    if (!handle.slot_released) {  // (closed to make room: counted as such)
        WorkerStats::add(worker.stats().proxy_headers_refused);
    }
    co_return std::nullopt;
}

}  // namespace bg
