#pragma once
// BodyCork: a body flowing in bulk leaves in full-sized TCP segments. Each piece of a body that
// arrives in full reads, with more of it to come, is sent with MSG_MORE (as HAProxy sends a
// body), so the kernel joins pieces into full segments: sent alone, every 16 KiB piece was a
// segment of its own (112 TCP segments per proxied MiB against HAProxy's 69, and the kernel
// work of each). What the kernel holds is pushed out (TCP_NODELAY set again) as soon as the
// source has nothing more at once, so a pause in a body never holds back what came before it,
// and when the relay ends. Plain sockets on both sides only: TLS writes records its own way.
// Worker thread only.

#include <boost/asio/buffer.hpp>
#include <boost/system/error_code.hpp>
#include <cstddef>

#include "io_types.hpp"
#include "upstream_stream.hpp"

namespace bg {

class BodyCork {
  public:
    // `source` and `sink`: the plain sockets under the two streams (nullptr for TLS).
    BodyCork(Socket* source, Socket* sink) : source_(source), sink_(sink) {}
    ~BodyCork() { push(); }
    BodyCork(const BodyCork&) = delete;
    BodyCork& operator=(const BodyCork&) = delete;

    // Whether the next piece may be held back: it filled its read (the body flows in bulk),
    // more of the body follows, and both sides are plain sockets. Not a body decrypted from
    // TLS: held, a 1 MiB upload over TLS took 105 TCP segments against 146, but BBR's pacing
    // timers rose from 5.5 to 9.9 per upload, and in three A/B runs of 5 rounds it served
    // 0.91x to 1.01x the uploads at 1.01x to 1.08x the CPU.
    bool may_hold(bool full_read, bool more_follows) const {
        return full_read && more_follows && source_ != nullptr && sink_ != nullptr;
    }
    Socket& sink() { return *sink_; }
    // A piece went out with MSG_MORE, or without it (which pushes out what was held).
    void sent(bool held) { holding_ = held; }
    // Whether the source is a plain socket, read at once by read_at_once.
    bool reads_at_once() const { return source_ != nullptr; }
    // What the source has at once, read into `into` without waiting (asio's read posts its
    // completion even when its recv found bytes: a turn of the worker's loop per piece, and an
    // epoll_wait with it). 0 with no error: nothing yet (`empty`), or its end (which the
    // caller's own read then sees); an error (a reset) is returned here, since the socket
    // reports it only once. Unless bytes came, what the sink holds is pushed out first.
    std::size_t read_at_once(boost::asio::mutable_buffer into, boost::system::error_code& ec,
                             bool& empty);
    Socket& source() { return *source_; }
    void push();

    static Socket* plain(Socket& stream) { return &stream; }
    static Socket* plain(TlsStream&) { return nullptr; }
    static Socket* plain(UpstreamStream& stream) {
        return stream.tls() != nullptr ? nullptr : &stream.socket();
    }

  private:
    Socket* source_;
    Socket* sink_;
    bool holding_ = false;
};

// The sink as a stream whose sends say MSG_MORE, for asio::async_write.
class HeldSend {
  public:
    using executor_type = Executor;
    explicit HeldSend(Socket& socket) : socket_(socket) {}
    executor_type get_executor() { return socket_.get_executor(); }
    template <class ConstBuffers, class Token>
    auto async_write_some(const ConstBuffers& buffers, Token&& token) {
        return socket_.async_send(buffers, MSG_MORE, std::forward<Token>(token));
    }

  private:
    Socket& socket_;
};

}  // namespace bg
