#include "parked_client.hpp"

#include <openssl/err.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <optional>
#include <system_error>
#include <vector>

#include "adopted_socket.hpp"
#include "coarse_clock.hpp"
#include "pending_input.hpp"
#include "worker.hpp"

namespace bg {

ParkedClient::ParkedClient(Socket socket) {
    boost::system::error_code ec;
    const int released = socket.release(ec);  // out of asio's reactor too
    descriptor = ec ? -1 : released;
}

ParkedClient::ParkedClient(TlsStream stream) : ParkedClient(std::move(stream.next_layer())) {
    tls = stream.release_ssl();
}

ParkedClient::~ParkedClient() {
    if (tls && descriptor >= 0) {
        SSL_shutdown(tls.get());  // non-blocking: sent now or never
        ERR_clear_error();
    }
    if (descriptor >= 0) {
        ::close(descriptor);  // and out of the epoll set with it
    }
}

namespace {

int open_epoll_set() {
    const int fd = ::epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0) {
        throw std::system_error(errno, std::generic_category(), "epoll_create1 for parked clients");
    }
    return fd;
}

}  // namespace

ParkedClients::ParkedClients(Worker& worker, Resume resume)
    : worker_(worker),
      resume_(resume),
      ready_(worker.io().get_executor(), open_epoll_set()),
      timer_(worker.io()),
      idle_timer_(worker.io()) {}

ParkedClients::~ParkedClients() {
    close_all();
}

void ParkedClients::wait_idle(IdleWait& wait, Socket& socket, Duration park_after) {
    wait.socket = &socket;
    wait.park = false;
    wait.park_at = CoarseClock::now() + park_after;
    idle_.push_back(wait);
    arm_idle();
}

// The timer is set for the oldest wait only and moves on when it fires: a request costs a
// link and an unlink, no timer operation.
void ParkedClients::arm_idle() {
    if (idle_armed_ || idle_.empty()) {
        return;
    }
    idle_armed_ = true;
    idle_timer_.expires_at(idle_.front().park_at);
    idle_timer_.async_wait([this](boost::system::error_code ec) {
        idle_armed_ = false;
        if (!ec) {
            park_idle();
        }
    });
}

void ParkedClients::park_idle() {
    const auto now = std::chrono::steady_clock::now();
    while (!idle_.empty() && idle_.front().park_at <= now) {
        IdleWait& wait = idle_.front();
        wait.unlink();
        wait.park = true;
        boost::system::error_code ignored;
        wait.socket->cancel(ignored);  // the session's read ends, and it parks the connection
    }
    arm_idle();
}

std::unique_ptr<ParkedClient> ParkedClients::park(std::unique_ptr<ParkedClient> client,
                                                  Duration timeout) {
    if (client->descriptor < 0 || worker_.draining()) {
        return client;
    }
    // Level-triggered: a connection readable before it was added is reported at once.
    epoll_event event{};
    event.events = EPOLLIN | EPOLLRDHUP;
    event.data.ptr = client.get();
    if (::epoll_ctl(ready_.native_handle(), EPOLL_CTL_ADD, client->descriptor, &event) != 0) {
        return client;
    }
    client->expires = std::chrono::steady_clock::now() + timeout;
    SessionHandle& handle = client->tracked->handle();
    handle.client = nullptr;  // no socket while parked: close_all() closes it in a shutdown
    handle.idle = true;
    fifos_[timeout.count()].push_back(*client.release());  // the FIFO owns it now
    ++count_;
    WorkerStats::add(worker_.stats().connections_parked);
    WorkerStats::add(worker_.stats().parks);
    arm();
    watch();
    return nullptr;
}

std::unique_ptr<ParkedClient> ParkedClients::unpark(ParkedClient& client) {
    client.unlink();
    --count_;
    WorkerStats::sub(worker_.stats().connections_parked);
    client.tracked->handle().idle = false;
    return std::unique_ptr<ParkedClient>(&client);
}

void ParkedClients::watch() {
    if (watching_ || count_ == 0) {
        return;
    }
    watching_ = true;
    ready_.async_wait(boost::asio::posix::descriptor_base::wait_read,
                      [this](boost::system::error_code ec) {
                          watching_ = false;
                          if (!ec) {
                              take_ready();
                          }
                      });
}

// asio watches the set edge-triggered: every ready descriptor is taken before the wait is
// made again, on this thread, so none can become ready unseen in between.
void ParkedClients::take_ready() {
    std::array<epoll_event, 64> events;
    for (;;) {
        const int n =
            ::epoll_wait(ready_.native_handle(), events.data(), static_cast<int>(events.size()), 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        for (int i = 0; i < n; ++i) {
            resume(static_cast<ParkedClient*>(events[i].data.ptr));
        }
        if (n < static_cast<int>(events.size())) {
            break;
        }
    }
    watch();
}

// Bytes (or the client's FIN) arrived: the connection goes back to asio and a session. Nothing
// a resumed session does at once closes another parked connection, so the rest of the batch
// stays valid.
void ParkedClients::resume(ParkedClient* parked) {
    ::epoll_ctl(ready_.native_handle(), EPOLL_CTL_DEL, parked->descriptor, nullptr);
    std::unique_ptr<ParkedClient> client = unpark(*parked);
    if (worker_.draining() && !input_waiting(client->descriptor)) {
        return;  // closed: nothing asked of it (a request that came is served, and closes)
    }
    worker_.reserve_socket_records();
    boost::system::error_code ec;
    // In the family it was accepted with; non-blocking and undup'ed since its accept.
    Socket socket =
        adopt_socket(worker_.io(), worker_.listener_v6(client->listener), client->descriptor, ec);
    if (ec) {
        return;  // the record still holds the descriptor, and closes it
    }
    client->descriptor = -1;  // the socket's now
    resume_(worker_, std::move(client), std::move(socket));
}

void ParkedClients::drain() {
    std::vector<ParkedClient*> all;
    for (auto& [timeout, fifo] : fifos_) {
        for (ParkedClient& client : fifo) {
            all.push_back(&client);
        }
    }
    for (ParkedClient* client : all) {
        resume(client);
    }
}

void ParkedClients::close_all() {
    for (auto& [timeout, fifo] : fifos_) {
        while (!fifo.empty()) {
            unpark(fifo.front());  // destroyed at once: closed, and out of the epoll set
        }
    }
}

void ParkedClients::arm() {
    std::optional<std::chrono::steady_clock::time_point> earliest;
    for (const auto& [timeout, fifo] : fifos_) {
        if (!fifo.empty() && (!earliest || fifo.front().expires < *earliest)) {
            earliest = fifo.front().expires;
        }
    }
    if (!earliest || (armed_ && armed_until_ <= *earliest)) {
        return;
    }
    armed_ = true;
    armed_until_ = *earliest;
    timer_.expires_at(*earliest);  // a wait for a later time ends aborted, and is ignored
    timer_.async_wait([this](boost::system::error_code ec) {
        if (ec) {
            return;
        }
        armed_ = false;
        expire();
    });
}

std::optional<std::size_t> ParkedClients::evict_one(std::optional<std::size_t> listener) {
    constexpr int scan = 64;  // per FIFO, for a listener's own: bounded work per accept
    ParkedClient* victim = nullptr;
    for (auto& [timeout, fifo] : fifos_) {
        int seen = 0;
        for (auto it = fifo.begin(); it != fifo.end() && seen < scan; ++it, ++seen) {
            if (listener && it->listener != *listener) {
                continue;
            }
            if (victim == nullptr || it->expires < victim->expires) {
                victim = &*it;
            }
            break;  // the FIFO's first match expires first
        }
    }
    if (victim == nullptr) {
        return std::nullopt;
    }
    // Closed at once; its slot stays taken, for the caller to give the new connection.
    victim->tracked->handle().slot_released = true;
    const std::size_t held = victim->listener;
    unpark(*victim);
    return held;
}

void ParkedClients::expire() {
    const auto now = std::chrono::steady_clock::now();
    for (auto& [timeout, fifo] : fifos_) {
        while (!fifo.empty() && fifo.front().expires <= now) {
            unpark(fifo.front());  // closed at once
        }
    }
    arm();
}

}  // namespace bg
