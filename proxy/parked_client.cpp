#include "parked_client.hpp"

#include "worker.hpp"

namespace bg {

ParkedClients::ParkedClients(Worker& worker) : worker_(worker), timer_(worker.io()) {}

void ParkedClients::park(std::unique_ptr<ParkedClient> client, Duration timeout, Resume resume) {
    client->expires = std::chrono::steady_clock::now() + timeout;
    SessionHandle& handle = client->tracked->handle();
    handle.client = &client->socket;
    handle.idle = true;  // a shutdown cancels the wait below, which closes the connection
    fifo_.push_back(*client);
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
    if (armed_ || fifo_.empty()) {
        return;
    }
    armed_ = true;
    timer_.expires_at(fifo_.front().expires);
    timer_.async_wait([this](boost::system::error_code ec) {
        armed_ = false;
        if (!ec) {
            expire();
        }
    });
}

void ParkedClients::expire() {
    const auto now = std::chrono::steady_clock::now();
    while (!fifo_.empty() && fifo_.front().expires <= now) {
        ParkedClient& client = fifo_.front();
        client.unlink();
        boost::system::error_code ignored;
        client.socket.cancel(ignored);  // its wait ends, and the connection with it
    }
    arm();
}

}  // namespace bg
