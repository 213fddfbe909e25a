#pragma once
// Running out of file descriptors: the process's limit raised at start, the errors that say
// the proxy itself (not a peer) lacks descriptors or memory, and the pause an accept loop takes
// then instead of spinning on a listener whose pending connection it cannot take (HAProxy
// pauses its listeners likewise).

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/system/error_code.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace bg {

// EMFILE, ENFILE, ENOBUFS, ENOMEM: the failure is the proxy's, not the peer's.
bool out_of_descriptors(const boost::system::error_code& ec);

struct DescriptorLimit {
    std::uint64_t soft = 0;
    std::uint64_t hard = 0;
};
// Raises the soft RLIMIT_NOFILE to the hard limit; returns the limits now in force.
DescriptorLimit raise_descriptor_limit();
// The limits in force (0s when unknown).
DescriptorLimit descriptor_limit();

struct Config;
// The descriptor numbers from which the proxy stops taking on more (connection_limits.hpp): the
// kernel gives the lowest free number, so one that returns it has that many in use. Backend
// connections stop below `soft` by what the proxy must keep for itself (control and admin
// connections, health checks, a margin; at most a quarter of `soft`), and new clients that much
// lower again, which leaves the clients already in room for their backend connections. 0s
// (none) when `soft` is unknown.
struct DescriptorCeilings {
    std::uint64_t clients = 0;
    std::uint64_t upstream = 0;
};
DescriptorCeilings descriptor_ceilings(std::uint64_t soft, const Config& config);

// One accept loop's pause after an exhaustion error. Logs at most once a second.
class AcceptPause {
  public:
    AcceptPause(boost::asio::io_context& io, std::string listener);
    // Calls `resume` after `pause`. Returns false (and does nothing) for an error that is not
    // an exhaustion: the caller accepts again at once.
    bool pause_after(const boost::system::error_code& ec, std::chrono::milliseconds pause,
                     std::function<void()> resume);
    void cancel();
    std::uint64_t pauses() const { return pauses_; }

  private:
    boost::asio::steady_timer timer_;
    std::string listener_;
    std::chrono::steady_clock::time_point last_log_{};
    std::uint64_t pauses_ = 0;
    std::uint64_t unlogged_ = 0;
};

}  // namespace bg
