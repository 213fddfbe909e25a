#include "parked_client.hpp"

#include "worker.hpp"

#include <optional>

namespace bg {

ParkedClients::ParkedClients(Worker& worker)
    : worker_(worker), timer_(worker.io()), idle_timer_(worker.io()) {}

void ParkedClients::wait_idle(IdleWait& wait, Socket& socket, Duration park_after) {
    wait.socket = &socket;
    wait.park = false;
    wait.park_at = std::chrono::steady_clock::now() + park_after;
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

void ParkedClients::park(std::unique_ptr<ParkedClient> client, Duration timeout, Resume resume) {
    client->expires = std::chrono::steady_clock::now() + timeout;
    SessionHandle& handle = client->tracked->handle();
    handle.client = &client->socket;
    handle.idle = true;  // a shutdown cancels the wait below, which closes the connection
    fifos_[timeout.count()].push_back(*client);
    ++count_;
    WorkerStats::add(worker_.stats().connections_parked);
    WorkerStats::add(worker_.stats().parks);
    arm();
    Socket& socket = client->socket;
    socket.async_wait(Socket::wait_read, [this, resume, client = std::move(client)](
                                             boost::system::error_code ec) mutable {
        if (client->is_linked()) {
            client->unlink();
        }
        --count_;
        WorkerStats::sub(worker_.stats().connections_parked);
        client->tracked->handle().idle = false;
        if (ec || worker_.draining()) {
            return;  // the connection closes here, with its session's accounting
        }
        resume(worker_, std::move(client));
    });
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

void ParkedClients::expire() {
    const auto now = std::chrono::steady_clock::now();
    for (auto& [timeout, fifo] : fifos_) {
        while (!fifo.empty() && fifo.front().expires <= now) {
            ParkedClient& client = fifo.front();
            client.unlink();
            boost::system::error_code ignored;
            client.socket.cancel(ignored);  // its wait ends, and the connection with it
        }
    }
    arm();
}

}  // namespace bg
