#include "parked_client.hpp"

#include "worker.hpp"

#include <optional>

namespace bg {

ParkedClients::ParkedClients(Worker& worker) : worker_(worker), timer_(worker.io()) {}

void ParkedClients::park(std::unique_ptr<ParkedClient> client, Duration timeout, Resume resume) {
    client->expires = std::chrono::steady_clock::now() + timeout;
    SessionHandle& handle = client->tracked->handle();
    handle.client = &client->socket;
    handle.idle = true;  // a shutdown cancels the wait below, which closes the connection
    fifos_[timeout.count()].push_back(*client);
    ++count_;
    WorkerStats::add(worker_.stats().connections_parked);
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
