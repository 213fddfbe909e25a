#pragma once
// AdminServer: the admin HTTP listener, on the control thread, with the same Beast stack as the
// data plane. Read-only: /healthz (the process lives), /readyz (ready for traffic: 503 from the
// moment a graceful shutdown begins), /status (bgctl status's JSON), /metrics (Prometheus).
// Nothing here changes state: those commands go through the control socket and its roles.
// Anyone who can reach it can connect, so it is bounded like the data plane: connections
// ([server] admin_max_connections, the longest idle one giving way), the time to send a head
// (client_header) and its size (limits.max_request_header), and no request body.
// Control thread only.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <functional>
#include <string>

#include "config.hpp"
#include "connection_slots.hpp"
#include "descriptor_limit.hpp"
#include "switchboard.hpp"

namespace bg {

class AdminServer {
  public:
    // `metrics` renders the Prometheus text exposition and hands it to its callback; without
    // one, /metrics is not served.
    using MetricsSource = std::function<void(std::function<void(std::string)>)>;

    AdminServer(boost::asio::io_context& io, Switchboard& switchboard, std::size_t max_connections,
                MetricsSource metrics = {});

    bool open(const std::string& address, std::string& error);
    void start();
    void close();
    // From now on /readyz answers 503, so a load balancer in front stops sending.
    void set_draining() { draining_ = true; }
    std::uint16_t port() const { return port_; }

  private:
    using Request = boost::beast::http::request<boost::beast::http::empty_body>;
    using Response = boost::beast::http::response<boost::beast::http::string_body>;

    void accept();
    boost::asio::awaitable<void> serve(boost::asio::ip::tcp::socket socket);
    // The answer to a head read whole (`has_body`: it announced a body, refused), or to
    // `failed`, why none was read; false when none is owed (the client went, or was slow).
    boost::asio::awaitable<bool> respond(const Request& request, bool has_body,
                                         boost::system::error_code failed, Response& response);
    // The answer to a GET or HEAD of `path` (its body; HEAD's is dropped when written).
    boost::asio::awaitable<void> answer(std::string_view path, Response& response);

    boost::asio::io_context& io_;
    Switchboard& switchboard_;
    ConnectionSlots slots_;
    MetricsSource metrics_;
    boost::asio::ip::tcp::acceptor acceptor_;
    AcceptPause accept_pause_;
    bool draining_ = false;
    std::uint16_t port_ = 0;
};

}  // namespace bg
