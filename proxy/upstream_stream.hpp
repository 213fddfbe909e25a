#pragma once
// UpstreamStream: one connection to a backend, plain TCP or TLS, as one stream type, so the
// upstream pool keeps both kinds alike and the client session relays through either with one
// copy of its code. Which kind is decided per connection, by the backend's pool.

#include <boost/asio/async_result.hpp>
#include <cstdint>
#include <memory>
#include <variant>

#include "io_types.hpp"
#include "tls_stream.hpp"

namespace bg {

class BackendTlsContext;

class UpstreamStream {
  public:
    using executor_type = Executor;

    // A plain connection to the address whose HostPort::key() is `address`.
    UpstreamStream(Socket socket, std::uint64_t address);
    // A TLS connection over `socket`, before its handshake.
    UpstreamStream(Socket socket, std::uint64_t address,
                   std::shared_ptr<const BackendTlsContext> tls);

    executor_type get_executor() { return socket().get_executor(); }
    // The TCP socket, under TLS if any.
    Socket& socket() {
        TlsStream* t = tls();
        return t != nullptr ? t->next_layer() : std::get<Socket>(stream_);
    }
    Socket& next_layer() { return socket(); }  // what beast::get_lowest_layer looks for
    TlsStream* tls() { return std::get_if<TlsStream>(&stream_); }
    // The context a TLS connection was made with (nullptr when plain): a pooled connection is
    // reused only by requests whose backend still has that context.
    const BackendTlsContext* tls_context() const { return tls_context_.get(); }
    const std::shared_ptr<const BackendTlsContext>& shared_tls_context() const {
        return tls_context_;
    }
    // The HostPort::key() of the address it was made to.
    std::uint64_t address() const { return address_; }

    // An idle keep-alive connection must have nothing to read: bytes mean a protocol error,
    // end-of-file means the backend closed it. One non-blocking peek.
    bool still_open();
    // Whether the backend may have sent something (bytes, or its close) since the last read
    // emptied the socket: false only when the poller has reported no input since
    // (socket_drain.hpp) and, under TLS, OpenSSL holds no records.
    bool may_have_sent();
    // Acknowledges what was received now, not with the next request: Linux delays the ACK of
    // a response (up to 40 ms on a request-response connection), and a backend whose stack
    // holds a small write until its last ones are acknowledged (Nagle) would hold any bytes
    // it wrote after the response until the next request went, when they would arrive as its
    // answer, a desync no check can see. Acknowledged, they come at once, and the poller's
    // report closes the connection before reuse. A segment of its own: not for every response.
    void acknowledge_received();

    template <class MutableBuffers, class Token>
    auto async_read_some(const MutableBuffers& buffers, Token&& token) {
        return boost::asio::async_initiate<Token, void(boost::system::error_code, std::size_t)>(
            [this](auto handler, const MutableBuffers& b) {
                if (TlsStream* t = tls()) {
                    t->async_read_some(b, std::move(handler));
                } else {
                    std::get<Socket>(stream_).async_read_some(b, std::move(handler));
                }
            },
            token, buffers);
    }

    template <class ConstBuffers, class Token>
    auto async_write_some(const ConstBuffers& buffers, Token&& token) {
        return boost::asio::async_initiate<Token, void(boost::system::error_code, std::size_t)>(
            [this](auto handler, const ConstBuffers& b) {
                if (TlsStream* t = tls()) {
                    t->async_write_some(b, std::move(handler));
                } else {
                    std::get<Socket>(stream_).async_write_some(b, std::move(handler));
                }
            },
            token, buffers);
    }

  private:
    // A TlsStream is a socket and a pointer: held inline, unlike asio::ssl::stream (4 x 17 KiB
    // of buffers), which had to be held out of line.
    std::variant<Socket, TlsStream> stream_;
    std::shared_ptr<const BackendTlsContext> tls_context_;
    std::uint64_t address_ = 0;
};

}  // namespace bg
