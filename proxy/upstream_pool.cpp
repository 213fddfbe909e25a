#include "upstream_pool.hpp"

#include <openssl/ssl.h>

#include <algorithm>

namespace bg {

UpstreamPool::UpstreamPool(const Executor& executor, const UpstreamSettings& settings,
                           WorkerStats& stats)
    : stats_(stats),
      sweep_timer_(executor),
      max_idle_(settings.max_idle_per_backend),
      idle_timeout_(settings.idle_timeout),
      recheck_after_(settings.recheck_after),
      watch_after_(settings.watch_after),
      watch_timer_(executor) {}

UpstreamPool::~UpstreamPool() {
    for (Resumable& slot : sessions_) {
        SSL_SESSION_free(slot.session);
    }
}

std::optional<UpstreamStream> UpstreamPool::lease(std::uint32_t backend_id, std::uint64_t address,
                                                  bool verify, const BackendTlsContext* tls) {
    if (backend_id >= idle_.size()) {
        return std::nullopt;
    }
    auto& list = idle_[backend_id];
    while (!list.empty()) {
        Idle idle = std::move(list.back());
        list.pop_back();
        boost::system::error_code ignored;
        if (idle.watched) {
            idle.stream.socket().cancel(ignored);  // the request reads it now
        }
        if (reusable(idle.stream, idle.since, address, verify, tls)) {
            return std::move(idle.stream);
        }
        idle.stream.socket().close(ignored);
    }
    return std::nullopt;
}

bool UpstreamPool::reusable(UpstreamStream& stream,
                            std::chrono::steady_clock::time_point idle_since, std::uint64_t address,
                            bool verify, const BackendTlsContext* tls) const {
    const auto idle = std::chrono::steady_clock::now() - idle_since;
    // The peek is skipped when the poller has said nothing of the socket since the response's
    // last read emptied it (as HAProxy knows from its poller), or (recheck_after) when the
    // connection was parked moments ago. Requests that cannot be sent twice always peek.
    const bool check = verify || (idle > recheck_after_ && stream.may_have_sent());
    return idle < idle_timeout_ && stream.address() == address && stream.tls_context() == tls &&
           (!check || stream.still_open());
}

ssl_session_st* UpstreamPool::tls_session(std::uint32_t backend_id, std::uint64_t address,
                                          const BackendTlsContext* tls) const {
    if (backend_id >= sessions_.size() || sessions_[backend_id].context.get() != tls ||
        sessions_[backend_id].address != address) {
        return nullptr;
    }
    return sessions_[backend_id].session;
}

void UpstreamPool::keep_tls_session(std::uint32_t backend_id, UpstreamStream& stream) {
    TlsStream* tls = stream.tls();
    if (tls == nullptr) {
        return;
    }
    // A copy: OpenSSL marks a connection's own session unresumable when that connection ends
    // without a TLS shutdown, as pooled backend connections usually do.
    SSL_SESSION* session = SSL_SESSION_dup(SSL_get0_session(tls->native_handle()));
    if (session == nullptr || SSL_SESSION_is_resumable(session) != 1) {
        SSL_SESSION_free(session);
        return;
    }
    if (backend_id >= sessions_.size()) {
        sessions_.resize(backend_id + 1);
    }
    Resumable& slot = sessions_[backend_id];
    SSL_SESSION_free(slot.session);
    slot.session = session;
    // The pool's context, shared: so the pointer compared in tls_session() stays unique.
    slot.context = stream.shared_tls_context();
    slot.address = stream.address();
}

void UpstreamPool::give_back(std::uint32_t backend_id, UpstreamStream stream) {
    if (backend_id >= idle_.size()) {
        idle_.resize(backend_id + 1);
    }
    auto& list = idle_[backend_id];
    if (list.size() >= max_idle_) {
        boost::system::error_code ignored;
        stream.socket().close(ignored);
        return;
    }
    const std::uint64_t serial = next_serial_++;
    const auto now = std::chrono::steady_clock::now();
    list.push_back(Idle{std::move(stream), now, serial});
    arm_watch(now + watch_after_);
    arm_sweep();
}

// A connection is watched once it has sat idle for watch_after. Under load most are leased
// again sooner, and a watch started on each would cost it a syscall (asio's first peek is
// tried at once) for nothing.
void UpstreamPool::arm_watch(std::chrono::steady_clock::time_point when) {
    if (watch_armed_) {
        return;
    }
    watch_armed_ = true;
    watch_timer_.expires_at(when);
    // On cancellation (close_all, or the pool being destroyed) `this` must not be touched.
    watch_timer_.async_wait([this](boost::system::error_code ec) {
        if (ec) {
            return;
        }
        watch_armed_ = false;
        watch_the_settled();
    });
}

void UpstreamPool::watch_the_settled() {
    const auto now = std::chrono::steady_clock::now();
    const auto settled = now - watch_after_;
    // Next when the oldest connection left unwatched settles: each is watched at watch_after
    // (not up to twice that, as when the timer was set for a full watch_after each time), the
    // timer firing at most four times per watch_after.
    std::optional<std::chrono::steady_clock::time_point> next;
    for (std::uint32_t id = 0; id < idle_.size(); ++id) {
        auto& list = idle_[id];
        // Newest at the back; the watched, oldest, at the front.
        for (auto it = list.rbegin(); it != list.rend() && !it->watched; ++it) {
            if (it->since > settled) {
                next = std::min(next.value_or(it->since), it->since);
            } else {
                watch(id, *it);
            }
        }
    }
    if (next) {
        arm_watch(std::max(*next + watch_after_, now + watch_after_ / 4));
    }
}

UpstreamPool::Idle* UpstreamPool::find(std::uint32_t backend_id, std::uint64_t serial) {
    auto& list = idle_[backend_id];
    // From the back: the connection looked for is most often the one parked last.
    auto it = std::find_if(list.rbegin(), list.rend(),
                           [&](const Idle& idle) { return idle.serial == serial; });
    return it == list.rend() ? nullptr : &*it;
}

void UpstreamPool::watch(std::uint32_t backend_id, Idle& idle) {
    idle.watched = true;
    // Bytes the backend's stack holds back for the ACK of its response come now, and are seen.
    idle.stream.acknowledge_received();
    // A one-byte peek rather than async_wait, which asio starts with an epoll_ctl each time:
    // asio 1.81 tries a read op at once (one recv, EAGAIN when idle as it should be), so a byte
    // already there is seen too, then queues it without a syscall. On cancellation (leased,
    // closed, the pool destroyed) `this` is not touched.
    idle.stream.socket().async_receive(
        boost::asio::buffer(&peek_byte_, 1), boost::asio::socket_base::message_peek,
        [this, backend_id, serial = idle.serial](boost::system::error_code ec, std::size_t) {
            if (ec != boost::asio::error::operation_aborted) {
                readable(backend_id, serial);
            }
        });
}

void UpstreamPool::readable(std::uint32_t backend_id, std::uint64_t serial) {
    Idle* idle = find(backend_id, serial);
    if (idle == nullptr) {
        return;  // leased after its watch fired, before this ran: the request reads it
    }
    if (idle->stream.still_open()) {
        watch(backend_id, *idle);  // nothing to read after all
        return;
    }
    boost::system::error_code ignored;
    idle->stream.socket().close(ignored);
    auto& list = idle_[backend_id];
    list.erase(list.begin() + (idle - list.data()));
    WorkerStats::add(stats_.upstream_idle_closed);
}

void UpstreamPool::close_backend(std::uint32_t backend_id) {
    if (backend_id < idle_.size()) {
        for (auto& idle : idle_[backend_id]) {
            boost::system::error_code ignored;
            idle.stream.socket().close(ignored);
        }
        idle_[backend_id].clear();
    }
    if (backend_id < sessions_.size()) {
        // A backend taken out (down, removed) may come back changed: start afresh.
        SSL_SESSION_free(sessions_[backend_id].session);
        sessions_[backend_id] = Resumable{};
    }
}

void UpstreamPool::close_moved(std::uint32_t backend_id, std::uint64_t address) {
    if (backend_id >= idle_.size()) {
        return;
    }
    auto& idle = idle_[backend_id];
    const bool moved = std::any_of(idle.begin(), idle.end(),
                                   [&](Idle& entry) { return entry.stream.address() != address; });
    if (moved) {
        close_backend(backend_id);  // (its TLS session too: it was the old address's)
    }
}

void UpstreamPool::close_all() {
    for (std::uint32_t id = 0; id < idle_.size(); ++id) {
        close_backend(id);
    }
    sweep_timer_.cancel();
    sweeping_ = false;
    watch_timer_.cancel();
    watch_armed_ = false;
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
            it->stream.socket().close(ignored);
        }
        list.erase(list.begin(), young);
        any_left = any_left || !list.empty();
    }
    if (any_left) {
        arm_sweep();
    }
}

}  // namespace bg
