#include "descriptor_limit.hpp"

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <algorithm>
#include <boost/asio/error.hpp>
#include <cerrno>

#include "config.hpp"

namespace bg {

bool out_of_descriptors(const boost::system::error_code& ec) {
    if (ec.category() != boost::system::system_category()) {
        return false;
    }
    switch (ec.value()) {
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
            return true;
        default:
            return false;
    }
}

DescriptorLimit descriptor_limit() {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) {
        return {};
    }
    return {static_cast<std::uint64_t>(limit.rlim_cur), static_cast<std::uint64_t>(limit.rlim_max)};
}

DescriptorLimit raise_descriptor_limit() {
    const DescriptorLimit limit = descriptor_limit();
    if (limit.soft < limit.hard) {
        const rlimit raised{static_cast<rlim_t>(limit.hard), static_cast<rlim_t>(limit.hard)};
        if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) {
            return {limit.hard, limit.hard};
        }
    }
    return limit;
}

DescriptorCeilings descriptor_ceilings(std::uint64_t soft, const Config& config) {
    if (soft == 0 || soft == RLIM_INFINITY) {
        return {};
    }
    const std::uint64_t backends = config.blue.backends.size() + config.green.backends.size();
    const std::uint64_t kept = std::min<std::uint64_t>(
        backends + config.control.max_connections + config.admin_max_connections + 64, soft / 4);
    return {soft - 2 * kept, soft - kept};
}

AcceptPause::AcceptPause(boost::asio::io_context& io, std::string listener)
    : timer_(io), listener_(std::move(listener)) {}

bool AcceptPause::pause_after(const boost::system::error_code& ec, std::chrono::milliseconds pause,
                              std::function<void()> resume) {
    if (!out_of_descriptors(ec)) {
        return false;
    }
    ++pauses_;
    ++unlogged_;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_log_ >= std::chrono::seconds(1)) {
        spdlog::warn(
            "{}: accept failed ({}), {} time(s) since the last report: pausing the "
            "listener {} ms each time",
            listener_, ec.message(), unlogged_, pause.count());
        last_log_ = now;
        unlogged_ = 0;
    }
    timer_.expires_after(pause);
    timer_.async_wait([resume = std::move(resume)](boost::system::error_code wec) {
        if (!wec) {
            resume();
        }
    });
    return true;
}

void AcceptPause::cancel() {
    timer_.cancel();
}

}  // namespace bg
