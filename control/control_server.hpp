#pragma once
// ControlServer: the UNIX control socket. One command per line in, one JSON line out; `watch`
// turns the connection into a stream of events. Control thread only.

#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "config.hpp"
#include "connection_slots.hpp"
#include "descriptor_limit.hpp"
#include "switchboard.hpp"

namespace bg {

class ControlServer {
  public:
    ControlServer(boost::asio::io_context& io, const ControlConfig& config,
                  Switchboard& switchboard);
    ~ControlServer();

    // Creates the socket (replacing a stale one), with the configured mode and group.
    bool open(std::string& error);
    void start();
    void close();
    // Runs `then` once every command taken has its reply written (or `limit` passed): at
    // exit, the answers the fleet gives at its stop are not dropped with the loop.
    void when_replies_written(std::chrono::milliseconds limit, std::function<void()> then);

  private:
    void wait_for_replies(std::chrono::steady_clock::time_point deadline,
                          std::function<void()> then);
    void accept();

    boost::asio::io_context& io_;
    ControlConfig config_;
    Switchboard& switchboard_;
    boost::asio::local::stream_protocol::acceptor acceptor_;
    AcceptPause accept_pause_;
    std::shared_ptr<ConnectionSlots> slots_;
    std::shared_ptr<std::size_t> replies_due_;  // commands whose reply is not written yet
    boost::asio::steady_timer flush_timer_;
    // The socket file this process made (device, inode), so close() never removes another's.
    std::optional<std::pair<dev_t, ino_t>> bound_;
};

}  // namespace bg
