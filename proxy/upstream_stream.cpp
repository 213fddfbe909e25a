#include "upstream_stream.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include "backend_tls_context.hpp"
#include "socket_drain.hpp"
#include "tls_socket_bio.hpp"

namespace bg {

UpstreamStream::UpstreamStream(Socket socket, std::uint64_t address)
    : stream_(std::move(socket)), address_(address) {}

UpstreamStream::UpstreamStream(Socket socket, std::uint64_t address,
                               std::shared_ptr<const BackendTlsContext> tls)
    : stream_(TlsStream(std::move(socket), tls->context())),
      tls_context_(std::move(tls)),
      address_(address) {
    // TlsStream asks OpenSSL to free a connection's record buffers whenever they are empty, so
    // each request would allocate and free them (perf probe on malloc). Backend connections
    // are few (pooled, bounded by max_idle_per_backend), so they keep theirs.
    SSL_clear_mode(this->tls()->native_handle(), SSL_MODE_RELEASE_BUFFERS);
}

bool UpstreamStream::may_have_sent() {
    if (TlsStream* t = tls(); t != nullptr && t->holds_input()) {
        return true;
    }
    return input_seen_since_drained(socket());
}

void UpstreamStream::acknowledge_received() {
    int one = 1;
    ::setsockopt(socket().native_handle(), IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
}

bool UpstreamStream::still_open() {
    // Bytes nobody asked for are as wrong under TLS as on the socket: decrypted ones, or
    // records (a close_notify) already read into OpenSSL's buffers.
    if (TlsStream* t = tls(); t != nullptr) {
        SSL* ssl = t->native_handle();
        if (SSL_has_pending(ssl) == 1 || BIO_ctrl_pending(SSL_get_rbio(ssl)) > 0) {
            return false;
        }
    }
    char probe;
    const ssize_t n = ::recv(socket().native_handle(), &probe, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

}  // namespace bg
