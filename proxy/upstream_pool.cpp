#include "upstream_pool.hpp"

#include <sys/socket.h>

#include <algorithm>

namespace bg {

UpstreamPool::UpstreamPool(const Executor& executor, const UpstreamSettings& settings)
    : sweep_timer_(executor),
      max_idle_(settings.max_idle_per_backend),
      idle_timeout_(settings.idle_timeout),
      recheck_after_(settings.recheck_after) {}

namespace {

// An idle keep-alive connection must have nothing to read: bytes mean a protocol error,
// end-of-file means the backend closed it. A peek costs one syscall and avoids sending a
// request into a connection that is already gone.
bool still_open(Socket& socket) {
    char probe;
    auto fd = socket.native_handle();
    ssize_t n = ::recv(fd, &probe, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

}  // namespace

std::optional<Socket> UpstreamPool::lease(std::uint32_t backend_id, bool verify) {
    if (backend_id >= idle_.size()) {
        return std::nullopt;
    }
    auto& list = idle_[backend_id];
    const auto now = std::chrono::steady_clock::now();
    while (!list.empty()) {
        Idle idle = std::move(list.back());
        list.pop_back();
        // A connection parked moments ago is almost surely alive: skip the syscall.
        const bool check = verify || now - idle.since > recheck_after_;
        if (now - idle.since < idle_timeout_ && (!check || still_open(idle.socket))) {
            return std::move(idle.socket);
        }
        boost::system::error_code ignored;
        idle.socket.close(ignored);
    }
    return std::nullopt;
}

void UpstreamPool::give_back(std::uint32_t backend_id, Socket socket) {
    if (backend_id >= idle_.size()) {
        idle_.resize(backend_id + 1);
    }
    auto& list = idle_[backend_id];
    if (list.size() >= max_idle_) {
        boost::system::error_code ignored;
        socket.close(ignored);
        return;
    }
    list.push_back(Idle{std::move(socket), std::chrono::steady_clock::now()});
    arm_sweep();
}

void UpstreamPool::close_backend(std::uint32_t backend_id) {
    if (backend_id < idle_.size()) {
        for (auto& idle : idle_[backend_id]) {
            boost::system::error_code ignored;
            idle.socket.close(ignored);
        }
        idle_[backend_id].clear();
    }
}

void UpstreamPool::close_all() {
    for (std::uint32_t id = 0; id < idle_.size(); ++id) {
        close_backend(id);
    }
    sweep_timer_.cancel();
    sweeping_ = false;
}

std::size_t UpstreamPool::idle_count() const {
    std::size_t n = 0;
    for (const auto& list : idle_) {
        n += list.size();
    }
    return n;
}

void UpstreamPool::arm_sweep() {
    if (sweeping_) {
        return;
    }
    sweeping_ = true;
    sweep_timer_.expires_after(std::max(idle_timeout_ / 4, std::chrono::milliseconds(100)));
    // On cancellation (close_all, or the pool being destroyed) `this` must not be touched.
    sweep_timer_.async_wait([this](boost::system::error_code ec) {
        if (ec) {
            return;
        }
        sweeping_ = false;
        sweep();
    });
}

void UpstreamPool::sweep() {
    const auto now = std::chrono::steady_clock::now();
    bool any_left = false;
    for (auto& list : idle_) {
        // Oldest first: everything before the first young connection has expired.
        auto young = std::find_if(list.begin(), list.end(), [&](const Idle& idle) {
            return now - idle.since < idle_timeout_;
        });
        for (auto it = list.begin(); it != young; ++it) {
            boost::system::error_code ignored;
            it->socket.close(ignored);
        }
        list.erase(list.begin(), young);
        any_left = any_left || !list.empty();
    }
    if (any_left) {
        arm_sweep();
    }
}

}  // namespace bg
