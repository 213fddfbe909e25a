#include "upstream_stream.hpp"

#include <openssl/ssl.h>
#include <sys/socket.h>

#include "backend_tls_context.hpp"

namespace bg {

UpstreamStream::UpstreamStream(Socket socket) : stream_(std::move(socket)) {}

UpstreamStream::UpstreamStream(Socket socket, std::shared_ptr<const BackendTlsContext> tls)
    : stream_(std::make_unique<TlsStream>(std::move(socket), tls->context())),
      tls_context_(std::move(tls)) {}

bool UpstreamStream::still_open() {
    // Decrypted bytes nobody asked for are as wrong as raw ones.
    if (TlsStream* t = tls(); t != nullptr && SSL_pending(t->native_handle()) > 0) {
        return false;
    }
    char probe;
    const ssize_t n = ::recv(socket().native_handle(), &probe, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

}  // namespace bg
