#include "tls_stream.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <sys/socket.h>

#include <array>
#include <boost/asio/ssl/error.hpp>
#include <cerrno>

#include "pending_input.hpp"
#include "tls_socket_bio.hpp"

namespace bg {

namespace asio = boost::asio;
using boost::system::error_code;

TlsStream::TlsStream(Socket socket, asio::ssl::context& context)
    : socket_(std::move(socket)), ssl_(SSL_new(context.native_handle())) {
    if (!ssl_) {
        throw boost::system::system_error(
            error_code(static_cast<int>(ERR_get_error()), asio::error::get_ssl_category()),
            "SSL_new");
    }
    // Non-blocking at the descriptor: OpenSSL's reads and writes return at once, and the
    // operations wait on the socket instead. (An accepted socket already is, and asio knows it:
    // adopted_socket.hpp. Setting it again was an ioctl per TLS connection.)
    if (!socket_.native_non_blocking()) {
        socket_.native_non_blocking(true);
    }
    if (!attach_socket_bio(ssl_.get(), socket_.native_handle())) {
        throw boost::system::system_error(
            error_code(static_cast<int>(ERR_get_error()), asio::error::get_ssl_category()),
            "BIO_new");
    }
    // As asio::ssl::stream sets them: a write may be partial (one record), may be retried from
    // a different address, and the record buffers are freed whenever empty (an idle connection
    // holds none). Read-ahead: one recv takes what the socket has, not a record header first.
    SSL_set_mode(ssl_.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                 SSL_MODE_RELEASE_BUFFERS);
    SSL_set_read_ahead(ssl_.get(), 1);
}

char* TlsStream::gather_scratch() {
    thread_local std::array<char, record_size> scratch;
    return scratch.data();
}

void TlsStream::note_bytes_came() {
    if (ssl_) {  // (a cancelled wait may end after the TLS state was handed on)
        forget_socket_bio_drained(ssl_.get());
    }
}

namespace {

// A TLS 1.3 server whose whole first flight, its Finished included, is out (not only written:
// a flight cut short by a full socket stays in TLS_ST_SW_FINISHED) waits for the client's
// Finished in TLS_ST_EARLY_DATA; the try that reads it sends only the session tickets, or a
// fatal alert.
bool sends_only_tickets(SSL* ssl) {
    unsigned char none[1];
    return SSL_version(ssl) == TLS1_3_VERSION && SSL_get_state(ssl) == TLS_ST_EARLY_DATA &&
           SSL_get_finished(ssl, none, 0) != 0;
}

// After an OpenSSL call returned `result`: what to wait for, or the error, as asio::ssl::stream
// reports them.
TlsStream::Attempt outcome(SSL* ssl, int result, int saved_errno) {
    using Wait = TlsStream::Wait;
    switch (SSL_get_error(ssl, result)) {
        case SSL_ERROR_WANT_READ:
            return {Wait::read, {}, 0};
        case SSL_ERROR_WANT_WRITE:
            return {Wait::write, {}, 0};
        case SSL_ERROR_ZERO_RETURN:  // the peer's close_notify
            return {Wait::none, asio::error::eof, 0};
        case SSL_ERROR_SYSCALL: {
            const unsigned long e = ERR_get_error();
            ERR_clear_error();
            if (e != 0) {
                return {Wait::none,
                        error_code(static_cast<int>(e), asio::error::get_ssl_category()), 0};
            }
            if (saved_errno != 0) {
                return {Wait::none, error_code(saved_errno, boost::system::system_category()), 0};
            }
            return {Wait::none, asio::ssl::error::stream_truncated, 0};
        }
        default: {
            const unsigned long e = ERR_get_error();
            ERR_clear_error();
            if (ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
                return {Wait::none, asio::ssl::error::stream_truncated, 0};  // closed, no notify
            }
            return {Wait::none, error_code(static_cast<int>(e), asio::error::get_ssl_category()),
                    0};
        }
    }
}

}  // namespace

TlsStream::Attempt TlsStream::try_handshake(asio::ssl::stream_base::handshake_type type) {
    SSL* ssl = ssl_.get();
    if (SSL_in_before(ssl) == 1) {  // the role is set once, before the first try
        if (type == asio::ssl::stream_base::client) {
            SSL_set_connect_state(ssl);
        } else {
            SSL_set_accept_state(ssl);
        }
    }
    ERR_clear_error();
    errno = 0;
    forget_socket_bio_drained(ssl);  // this try's reads decide it
    // The read after our flight is a wait (tls_socket_bio.hpp).
    begin_socket_bio_try(ssl, BioTry::handshake);
    const bool tickets = type == asio::ssl::stream_base::server && sends_only_tickets(ssl);
    if (tickets) {
        hold_socket_bio_try(ssl);  // they leave with the first response
    }
    const int result = SSL_do_handshake(ssl);
    const int saved_errno = errno;
    if (tickets) {
        // The hold ends with the try. Held tickets wait for the response; a held alert goes
        // now, before the close (which a client's unread bytes would turn into a reset).
        const int error = SSL_get_error(ssl, result);
        end_socket_bio_try_hold(
            ssl, result != 1 && error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE);
    }
    if (result == 1) {
        const bool drained = socket_bio_drained(ssl);
        if (tickets && SSL_has_pending(ssl) == 0 &&
            (drained || !input_waiting(socket_.native_handle()))) {
            // The tickets wait for the response, so nothing of ours acknowledges the client's
            // Finished now, and a client with Nagle on (ab, wget, Java's default) holds its
            // request until our delayed ACK: 40 ms a new connection (an outside probe; HAProxy
            // sends its tickets at once). An ACK alone, unless the request is here already.
            // Then back to delayed ACKs if it was in that mode (smart_accept), which the
            // request's own acknowledgement would otherwise lose.
            const int fd = socket_.native_handle();
            int quick = 1;
            socklen_t size = sizeof(quick);
            ::getsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &quick, &size);
            const int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
            if (quick == 0) {
                ::setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &quick, sizeof(quick));
            }
        }
        // As try_read: the first request (or response) starts a new message, and the reactor
        // may trust a read of this try that emptied the socket (socket_drain.hpp).
        if (drained) {
            assume_drained(socket_);
        }
        return {};
    }
    return outcome(ssl, result, saved_errno);
}

void TlsStream::read_in_bulk(std::size_t bytes) {
    if (ssl_) {
        SSL_set_default_read_buffer_len(ssl_.get(), bytes);
    }
}

void TlsStream::hold_until_close() {
    if (ssl_) {
        hold_socket_bio_until_close(ssl_.get());
    }
}

bool TlsStream::before_first_flight() {
    SSL* ssl = ssl_.get();
    if (ssl == nullptr) {
        return false;
    }
    const OSSL_HANDSHAKE_STATE state = SSL_get_state(ssl);
    // After a HelloRetryRequest a TLS 1.3 server waits for the second ClientHello in
    // TLS_ST_EARLY_DATA, as it waits for the client's Finished after its own flight: whether
    // our Finished went tells them apart (a client can force a retry on every connection).
    unsigned char none[1];
    return state == TLS_ST_BEFORE || state == TLS_ST_SR_CLNT_HELLO ||
           (state == TLS_ST_EARLY_DATA && SSL_get_finished(ssl, none, 0) == 0);
}

bool TlsStream::ended_by_close_notify() const {
    SSL* ssl = ssl_.get();
    // OpenSSL stops at a close_notify before the socket's end; an end without one was read
    // from the socket (the BIO's eof flag, tls_socket_bio.cpp).
    return ssl != nullptr && (SSL_get_shutdown(ssl) & SSL_RECEIVED_SHUTDOWN) != 0 &&
           BIO_eof(SSL_get_rbio(ssl)) == 0;
}

void TlsStream::send_close_notify() {
    if (closed()) {
        return;
    }
    begin_socket_bio_try(ssl_.get(), BioTry::closing);
    ERR_clear_error();
    SSL_shutdown(ssl_.get());
    ERR_clear_error();
}

TlsStream::Attempt TlsStream::try_shutdown() {
    SSL* ssl = ssl_.get();
    begin_socket_bio_try(ssl, BioTry::closing);
    ERR_clear_error();
    errno = 0;
    int result = SSL_shutdown(ssl);
    if (result == 0) {  // ours is sent: now the peer's
        ERR_clear_error();
        errno = 0;
        result = SSL_shutdown(ssl);
    }
    if (result == 1) {
        return {};
    }
    return outcome(ssl, result, errno);
}

namespace {

// Every record OpenSSL already holds, up to `into`'s size, the rest of one it holds part of
// read from the socket.
TlsStream::Attempt read_records(SSL* ssl, asio::mutable_buffer into) {
    auto* at = static_cast<char*>(into.data());
    std::size_t total = 0;
    while (total < into.size()) {
        ERR_clear_error();
        errno = 0;
        std::size_t n = 0;
        const int result = SSL_read_ex(ssl, at + total, into.size() - total, &n);
        if (result != 1) {
            TlsStream::Attempt failed = outcome(ssl, result, errno);
            if (total == 0) {
                return failed;
            }
            break;  // what was read first; the error comes again on the next read
        }
        total += n;
        if (SSL_has_pending(ssl) != 1) {
            break;
        }
    }
    return {TlsStream::Wait::none, {}, total};
}

}  // namespace

bool TlsStream::holds_records() {
    SSL* ssl = ssl_.get();
    // An end already read (a close_notify with the last bytes) ends the next read without the
    // socket, whose FIN, if it came before that read, the poller will not report again.
    return ssl != nullptr &&
           (SSL_has_pending(ssl) == 1 || (SSL_get_shutdown(ssl) & SSL_RECEIVED_SHUTDOWN) != 0);
}

bool TlsStream::holds_input() {
    return holds_records() || (ssl_ && !socket_bio_drained(ssl_.get()));
}

// No read at all when OpenSSL holds nothing, its last read emptied the socket and the reactor
// has seen no input since (socket_drain.hpp): that read could only fail, so the wait comes
// first. A read that empties the socket tells the reactor so, as a DrainingBuffer's does: the
// next wait is queued without a try, and a pooled connection is known quiet without a peek.
TlsStream::Attempt TlsStream::try_read(asio::mutable_buffer into) {
    SSL* ssl = ssl_.get();
    if (!holds_input() && !input_seen_since_drained(socket_)) {
        release_socket_bio_holds(ssl);  // a hold until close ends before a wait for the peer
        return {Wait::read, {}, 0};
    }
    forget_socket_bio_drained(ssl);  // this try's reads decide it
    begin_socket_bio_try(ssl, BioTry::other);
    Attempt result = read_records(ssl, into);
    if (socket_bio_drained(ssl)) {
        assume_drained(socket_);
    }
    if (result.wait == Wait::read) {
        release_socket_bio_holds(ssl);
    }
    return result;
}

TlsStream::Attempt TlsStream::try_write(asio::const_buffer from) {
    if (from.size() == 0) {
        return {};
    }
    SSL* ssl = ssl_.get();
    begin_socket_bio_try(ssl, BioTry::other);
    ERR_clear_error();
    errno = 0;
    std::size_t n = 0;
    const int result = SSL_write_ex(ssl, from.data(), from.size(), &n);
    if (result == 1) {
        return {Wait::none, {}, n};
    }
    return outcome(ssl, result, errno);
}

}  // namespace bg
