#include "tls_socket_bio.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>

namespace bg {

namespace {

// The descriptor and the flags, packed into the BIO's data pointer: no allocation of our own
// beside the BIO itself.
struct SocketState {
    int descriptor;
    bool drained;
    bool in_handshake;    // the current try is a handshake's
    bool emptied;         // and a read of it emptied the socket
    bool sent_since;      // and a write of it has sent something since
    bool held_for_close;  // every send is held until a closing try
    bool held_this_try;   // this try's sends are held (a server's session tickets)
    bool held_unpushed;   // the last send was held, and nothing has pushed it since
};

constexpr int flag_count = 7;

SocketState state_of(BIO* bio) {
    const auto packed = reinterpret_cast<std::intptr_t>(BIO_get_data(bio));
    const auto bit = [packed](int i) { return ((packed >> i) & 1) != 0; };
    return {static_cast<int>(packed >> flag_count),
            bit(0),
            bit(1),
            bit(2),
            bit(3),
            bit(4),
            bit(5),
            bit(6)};
}

void store(BIO* bio, SocketState state) {
    const bool flags[flag_count] = {state.drained,      state.in_handshake,   state.emptied,
                                    state.sent_since,   state.held_for_close, state.held_this_try,
                                    state.held_unpushed};
    std::intptr_t packed = static_cast<std::intptr_t>(state.descriptor) << flag_count;
    for (int i = 0; i < flag_count; ++i) {
        packed |= static_cast<std::intptr_t>(flags[i]) << i;
    }
    BIO_set_data(bio, reinterpret_cast<void*>(packed));
}

// Setting TCP_NODELAY sends what the socket holds back (tcp_push_pending_frames), as a send
// without MSG_MORE would.
void push(SocketState& state) {
    const int on = 1;
    ::setsockopt(state.descriptor, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    state.held_unpushed = false;
}

// After a read: whether it emptied the socket during a handshake's try.
void note_read(SocketState& state) {
    if (state.in_handshake && state.drained) {
        state.emptied = true;
        state.sent_since = false;
    }
}

bool would_block(int error) {
    return error == EAGAIN || error == EWOULDBLOCK;
}

int read_socket(BIO* bio, char* into, std::size_t size, std::size_t* done) {
    SocketState state = state_of(bio);
    BIO_clear_retry_flags(bio);
    if (state.emptied && state.sent_since) {
        // The socket was empty a moment ago, in this same handshake call into OpenSSL, and
        // what we sent since (our flight) takes the peer a round trip to answer: a recv would
        // find nothing. Anything that has come since is a poller event still to be collected
        // (no poll runs within the call), which ends the wait that follows. (Not so an end of
        // stream that came behind the bytes the emptying read took: see the header.)
        BIO_set_retry_read(bio);
        errno = EAGAIN;
        return 0;
    }
    ssize_t n = 0;
    do {  // (an interrupted recv is no sign the socket is empty: it is tried again)
        n = ::recv(state.descriptor, into, size, 0);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        state.drained = static_cast<std::size_t>(n) < size;
        note_read(state);
        store(bio, state);
        *done = static_cast<std::size_t>(n);
        return 1;
    }
    const int error = errno;
    state.drained = n < 0 && would_block(error);
    note_read(state);
    store(bio, state);
    if (state.drained) {
        BIO_set_retry_read(bio);
    } else if (n == 0) {
        BIO_set_flags(bio, BIO_FLAGS_IN_EOF);
    }
    errno = error;  // OpenSSL's SSL_ERROR_SYSCALL leaves it to the caller
    return 0;
}

int write_socket(BIO* bio, const char* from, std::size_t size, std::size_t* done) {
    SocketState state = state_of(bio);
    BIO_clear_retry_flags(bio);
    const bool hold = state.held_this_try || state.held_for_close;
    ssize_t n = 0;
    do {
        n = ::send(state.descriptor, from, size, MSG_NOSIGNAL | (hold ? MSG_MORE : 0));
    } while (n < 0 && errno == EINTR);
    if (n >= 0) {
        const bool handshake_flight = n > 0 && state.emptied && !state.sent_since;
        if (handshake_flight || (n > 0 && state.held_unpushed != hold)) {
            state.sent_since = state.sent_since || handshake_flight;
            state.held_unpushed = hold;
            store(bio, state);
        }
        *done = static_cast<std::size_t>(n);
        return 1;
    }
    if (would_block(errno)) {
        BIO_set_retry_write(bio);
    }
    return 0;
}

long control(BIO* bio, int command, long, void* argument) {
    switch (command) {
        case BIO_CTRL_FLUSH:  // nothing held back here: every write went to the socket
            return 1;
        case BIO_C_GET_FD:
            if (argument != nullptr) {
                *static_cast<int*>(argument) = state_of(bio).descriptor;
            }
            return state_of(bio).descriptor;
        case BIO_CTRL_EOF:
            return BIO_test_flags(bio, BIO_FLAGS_IN_EOF) != 0 ? 1 : 0;
        default:  // pending bytes, close flags, kTLS queries: none of them apply
            return 0;
    }
}

int create(BIO* bio) {
    BIO_set_init(bio, 1);
    return 1;
}

// Built once, for the process's life.
struct Method {
    int type = BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR;
    const BIO_METHOD* method = nullptr;
};

const Method& socket_method() {
    static const Method built = [] {
        Method m;
        BIO_METHOD* made = BIO_meth_new(m.type, "bgproxy socket");
        BIO_meth_set_read_ex(made, read_socket);
        BIO_meth_set_write_ex(made, write_socket);
        BIO_meth_set_ctrl(made, control);
        BIO_meth_set_create(made, create);
        m.method = made;
        return m;
    }();
    return built;
}

bool is_socket_bio(BIO* bio) {
    return bio != nullptr && BIO_method_type(bio) == socket_method().type;
}

// Changes the state of `ssl`'s BIO, when it is one of this kind.
template <class Change>
void update_state(SSL* ssl, Change change) {
    if (BIO* bio = SSL_get_rbio(ssl); is_socket_bio(bio)) {
        SocketState state = state_of(bio);
        change(state);
        store(bio, state);
    }
}

}  // namespace

bool attach_socket_bio(SSL* ssl, int descriptor) {
    BIO* bio = BIO_new(socket_method().method);
    if (bio == nullptr) {
        return false;
    }
    store(bio, {descriptor, false, false, false, false, false, false, false});
    SSL_set_bio(ssl, bio, bio);  // the same BIO both ways: it takes the one reference
    return true;
}

bool socket_bio_drained(SSL* ssl) {
    BIO* bio = SSL_get_rbio(ssl);
    return is_socket_bio(bio) && state_of(bio).drained;
}

void forget_socket_bio_drained(SSL* ssl) {
    update_state(ssl, [](SocketState& state) { state.drained = false; });
}

void begin_socket_bio_try(SSL* ssl, BioTry kind) {
    update_state(ssl, [kind](SocketState& state) {
        state.in_handshake = kind == BioTry::handshake;
        state.emptied = false;
        state.sent_since = false;
        state.held_this_try = false;
        state.held_for_close = state.held_for_close && kind != BioTry::closing;
    });
}

void hold_socket_bio_try(SSL* ssl) {
    update_state(ssl, [](SocketState& state) { state.held_this_try = true; });
}

void end_socket_bio_try_hold(SSL* ssl, bool push_now) {
    update_state(ssl, [push_now](SocketState& state) {
        state.held_this_try = false;
        if (push_now && state.held_unpushed) {
            push(state);
        }
    });
}

void hold_socket_bio_until_close(SSL* ssl) {
    update_state(ssl, [](SocketState& state) { state.held_for_close = true; });
}

void release_socket_bio_holds(SSL* ssl) {
    update_state(ssl, [](SocketState& state) {
        if (state.held_for_close && state.held_unpushed) {
            push(state);
        }
        state.held_for_close = false;
    });
}

}  // namespace bg
