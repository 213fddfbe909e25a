#include "client_close_watch.hpp"

#include <poll.h>
#include <sys/socket.h>

namespace bg {

struct ClientCloseWatch::State {
    Socket* client = nullptr;
    Socket* const* upstream = nullptr;
    bool watching = false;
    bool pending = false;  // a peek is queued on the socket
    bool gone = false;
    char byte = 0;  // where the peek lands; MSG_PEEK leaves it in the socket
};

ClientCloseWatch::ClientCloseWatch(Socket& client) : client_(client) {}

ClientCloseWatch::~ClientCloseWatch() {
    stop();
}

void ClientCloseWatch::start(Socket* const* upstream) {
    if (!state_) {
        state_ = std::make_shared<State>();  // once per connection, reused by each request
    }
    state_->client = &client_;
    state_->upstream = upstream;
    state_->watching = true;
    state_->gone = false;
    if (!state_->pending) {
        watch(state_);
    }
}

void ClientCloseWatch::stop() {
    if (!state_ || !state_->watching) {
        return;
    }
    state_->watching = false;
    if (state_->pending) {
        // Only the peek is queued on the client now (no read or write): cancelling ends it.
        boost::system::error_code ignored;
        client_.cancel(ignored);
    }
}

bool ClientCloseWatch::client_gone() const {
    return state_ && state_->gone;
}

namespace {

// Data may stand before the FIN (a TLS close_notify, a pipelined request and a close).
bool peer_shut_down(Socket& socket) {
    pollfd p{socket.native_handle(), POLLRDHUP, 0};
    return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

}  // namespace

void ClientCloseWatch::watch(const std::shared_ptr<State>& state) {
    state->pending = true;
    // A one-byte peek costs nothing while the client is quiet: Asio queues it on the reactor
    // without a syscall after the short read that ended the request (no epoll_ctl, unlike
    // async_wait). It completes with 0 bytes on FIN, an error on a reset, 1 byte on data.
    state->client->async_receive(
        boost::asio::buffer(&state->byte, 1), Socket::message_peek,
        [state](boost::system::error_code ec, std::size_t n) {
            state->pending = false;
            if (!state->watching) {
                return;
            }
            if (ec == boost::asio::error::operation_aborted) {
                watch(state);  // stopped, then started again before the cancel arrived
                return;
            }
            if (n > 0 && !ec && !peer_shut_down(*state->client)) {
                return;  // the client sent more (pipelining): it is still there
            }
            state->gone = true;
            state->watching = false;
            if (state->upstream != nullptr && *state->upstream != nullptr) {
                boost::system::error_code ignored;
                (*state->upstream)->close(ignored);
            }
        });
}

}  // namespace bg
