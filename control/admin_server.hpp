#pragma once
// AdminServer: the admin HTTP listener, on the control thread, with the same Beast stack as the
// data plane. Read-only: /healthz (the process lives), /readyz (ready for traffic: 503 from the
// moment a graceful shutdown begins), /status (bgctl status's JSON), /metrics (Prometheus).
// Nothing here changes state: those commands go through the control socket and its roles.
// Control thread only.

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <functional>
#include <string>

#include "config.hpp"
#include "descriptor_limit.hpp"
#include "switchboard.hpp"

namespace bg {

class AdminServer {
  public:
    // `metrics` renders the Prometheus text exposition and hands it to its callback; without
    // one, /metrics is not served.
    using MetricsSource = std::function<void(std::function<void(std::string)>)>;

    AdminServer(boost::asio::io_context& io, Switchboard& switchboard, MetricsSource metrics = {});

    bool open(const std::string& address, std::string& error);
    void start();
    void close();
    // From now on /readyz answers 503, so a load balancer in front stops sending.
    void set_draining() { draining_ = true; }
    std::uint16_t port() const { return port_; }

  private:
    void accept();

    boost::asio::io_context& io_;
    Switchboard& switchboard_;
    MetricsSource metrics_;
    boost::asio::ip::tcp::acceptor acceptor_;
    AcceptPause accept_pause_;
    bool draining_ = false;
    std::uint16_t port_ = 0;
};

}  // namespace bg
