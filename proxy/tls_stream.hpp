#pragma once
// TlsStream: TLS over one of a worker's TCP sockets, with OpenSSL reading and writing the
// socket itself (through tls_socket_bio.hpp). It replaces asio::ssl::stream, which moves every
// byte through a BIO pair and two buffers of its own: 4 x 17 KiB per connection, held even
// while the connection is idle (76 KiB per idle TLS client against HAProxy's 16). Here the
// only buffers are OpenSSL's record buffers, released whenever they are empty; a read takes
// every record OpenSSL already holds, and a write of several small buffers (a head and its
// body) leaves as one record. The asynchronous operations have asio::ssl::stream's signatures
// and errors (eof on a close_notify, ssl::error::stream_truncated on a close without one; a
// listener's contexts take a client's close without one as an end too, tls_context.cpp, and
// ended_by_close_notify() tells the two apart).

#include <openssl/ssl.h>

#include <boost/asio/buffer.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream_base.hpp>
#include <boost/system/error_code.hpp>
#include <cstddef>
#include <iterator>
#include <memory>
#include <type_traits>

#include "heavy_queue.hpp"
#include "io_types.hpp"
#include "socket_drain.hpp"

namespace bg {

struct SslFree {
    void operator()(SSL* ssl) const { SSL_free(ssl); }
};
using SslPtr = std::unique_ptr<SSL, SslFree>;

class TlsStream {
  public:
    using executor_type = Executor;
    using next_layer_type = Socket;

    // Over `socket` (made non-blocking), with a connection of `context`'s.
    TlsStream(Socket socket, boost::asio::ssl::context& context);
    // A connection's TLS state again, over its socket (a parked connection resumed).
    TlsStream(Socket socket, SslPtr ssl) : socket_(std::move(socket)), ssl_(std::move(ssl)) {}
    TlsStream(TlsStream&&) noexcept = default;
    TlsStream& operator=(TlsStream&&) noexcept = default;

    executor_type get_executor() { return socket_.get_executor(); }
    Socket& next_layer() { return socket_; }  // what beast::get_lowest_layer looks for
    SSL* native_handle() { return ssl_.get(); }
    // The TLS state, taken out (a connection being parked keeps it, and its socket).
    SslPtr release_ssl() { return std::move(ssl_); }
    // The socket was closed, or the TLS state handed on: no OpenSSL call may run.
    bool closed() const { return !ssl_ || !socket_.is_open(); }
    // Whether OpenSSL itself holds something for the next read: records (a pipelined request),
    // or the end of the stream it has read, which ends that read without the socket.
    bool holds_records();
    // After a read ended with eof: whether the peer said so with a close_notify (else its
    // connection just ended, which a listener reads as an end too, not as an error).
    bool ended_by_close_notify() const;
    // Whether a read may find something without the socket's poller having said so: what
    // holds_records() says, or a last read that did not empty the socket.
    bool holds_input();

    // One try at an operation, without waiting: done (its error and bytes), or what the
    // socket must become before the next try.
    enum class Wait { none, read, write };
    struct Attempt {
        Wait wait = Wait::none;
        boost::system::error_code ec;
        std::size_t bytes = 0;
    };
    Attempt try_handshake(boost::asio::ssl::stream_base::handshake_type type);
    // A server's handshake has not yet read a whole ClientHello and answered it (after a
    // HelloRetryRequest, the second one). False once the TLS state is gone.
    bool before_first_flight();
    Attempt try_shutdown();
    Attempt try_read(boost::asio::mutable_buffer into);
    Attempt try_write(boost::asio::const_buffer from);

    // A server's handshake tries are heavy until its first flight is out: the try that reads
    // the whole ClientHello makes the key exchange and the signature (hundreds of microseconds).
    // Each such try waits its turn in the worker's HeavyQueue, behind the light steps ready
    // before it. The later tries, which read the client's Finished and the request behind it,
    // do not wait.
    template <class Token>
    auto async_handshake(boost::asio::ssl::stream_base::handshake_type type, Token&& token) {
        return run<false, true>([this, type] { return try_handshake(type); }, token,
                                type == boost::asio::ssl::stream_base::server);
    }
    // Input comes in bulk: OpenSSL's record buffer takes up to `bytes` per recv from now on
    // (several records instead of one) each time it is allocated again, which it is once
    // emptied (SSL_MODE_RELEASE_BUFFERS). 0: one record's size again. (OpenSSL 3.0 and 3.1,
    // Debian 12's: from 3.2 the length is taken only when a record layer is made, at a key
    // change.)
    void read_in_bulk(std::size_t bytes);
    // The bytes written from now on are the last before close_notify (or the FIN): they are
    // held in the kernel, and the close_notify pushes them out with their last segment, one
    // segment fewer for the peer (tls_socket_bio.hpp). Call only when the close follows (a
    // read's wait pushes them too).
    void hold_until_close();
    // Sends close_notify now, without waiting for the peer's (a tunnel's end passed on while
    // the other direction still reads); best effort: a full socket buffer leaves just the FIN.
    void send_close_notify();
    // Sends close_notify and waits for the peer's (or its close).
    template <class Token>
    auto async_shutdown(Token&& token) {
        return run<false>([this] { return try_shutdown(); }, token);
    }
    // Into the first non-empty buffer.
    template <class MutableBuffers, class Token>
    auto async_read_some(const MutableBuffers& buffers, Token&& token) {
        return run<true>([this, buffers] { return try_read(first(buffers)); }, token);
    }
    // Up to one record: buffers smaller than one are gathered into it.
    template <class ConstBuffers, class Token>
    auto async_write_some(const ConstBuffers& buffers, Token&& token) {
        return run<true>([this, buffers] { return try_write(gather(buffers)); }, token);
    }

    static constexpr std::size_t record_size = 16384;  // TLS's largest plaintext record

    // One record's worth: the first non-empty buffer itself when it fills a record or is the
    // only one, else the buffers copied into this thread's scratch up to a record's size. (A
    // retried write gathers the same bytes again; OpenSSL resends the record it holds.)
    template <class ConstBuffers>
    static boost::asio::const_buffer gather(const ConstBuffers& buffers) {
        auto it = boost::asio::buffer_sequence_begin(buffers);
        const auto end = boost::asio::buffer_sequence_end(buffers);
        while (it != end && boost::asio::const_buffer(*it).size() == 0) {
            ++it;
        }
        if (it == end) {
            return {};
        }
        const boost::asio::const_buffer head(*it);
        if (head.size() >= record_size || std::next(it) == end) {
            return head;
        }
        char* scratch = gather_scratch();
        std::size_t used = 0;
        for (; it != end && used < record_size; ++it) {
            const boost::asio::const_buffer b(*it);
            used += boost::asio::buffer_copy(
                boost::asio::buffer(scratch + used, record_size - used), b);
        }
        return {scratch, used};
    }

  private:
    // Tries `attempt` until it is done, waiting on the socket between tries (and, for a heavy
    // handshake's tries, for a turn in the HeavyQueue). A result ready in the initiating call
    // is posted: a handler never runs inside it. Only handshakes (MayDefer) compile the queue.
    template <bool WithBytes, bool MayDefer, class Try>
    struct Operation {
        TlsStream& stream;
        Try attempt;
        bool heavy = false;  // tries before the first flight wait their turn (HeavyQueue)
        bool started = false;
        bool finished = false;
        bool queued = false;  // this try was queued: the next call is its turn
        Attempt result{};

        template <class Self>
        void operator()(Self& self, boost::system::error_code waited = {}) {
            if (finished) {
                return complete(self);
            }
            const bool first = !started;
            started = true;
            if (waited) {
                result = Attempt{Wait::none, waited, 0};
                return complete(self);
            }
            if constexpr (MayDefer) {
                if (heavy && !queued && !stream.closed() && stream.before_first_flight()) {
                    queued = true;
                    HeavyQueue::of(stream.get_executor()).enqueue(std::move(self));
                    return;
                }
                queued = false;
            }
            // OpenSSL's BIO holds the descriptor's number, which a closed socket (a deadline,
            // the other end of a tunnel) may have handed to another connection by now.
            result = stream.closed() ? Attempt{Wait::none, boost::asio::error::bad_descriptor, 0}
                                     : attempt();
            if (result.wait == Wait::read) {
                // OpenSSL wants bytes only when its recv (in this try) found the socket empty
                // (EAGAIN: an end of stream would have been found), or the BIO skipped the recv
                // after our handshake flight (tls_socket_bio.hpp: a recv of this try emptied
                // the socket just before; an end of stream behind those bytes waits for the
                // handshake's deadline), or try_read trusted the reactor's drained mark without
                // one (socket_drain.hpp: a mark from a short read, as the peek this replaces
                // trusted it): input from now on is a poller
                // event. So the wait is a ReadinessWait, with no syscall of its own: not
                // async_wait, which re-arms the descriptor in epoll (epoll_ctl) each time, nor
                // a peek, which asio tries at once (EAGAIN) and again at the event, before
                // OpenSSL's read. (message_peek: were the specialization ever not used, asio's
                // own receive would peek, not take a byte.)
                assume_drained(stream.socket_);
                stream.socket_.async_receive(ReadinessWait(), Socket::message_peek,
                                             std::move(self));
                return;
            }
            if (result.wait == Wait::write) {
                stream.socket_.async_wait(Socket::wait_write, std::move(self));
                return;
            }
            if (first) {
                finished = true;
                auto executor = stream.get_executor();
                return boost::asio::post(executor, std::move(self));
            }
            complete(self);
        }

        // The wait ended: bytes (or the end of the stream, or an error) for OpenSSL to read.
        template <class Self>
        void operator()(Self& self, boost::system::error_code waited, std::size_t) {
            stream.note_bytes_came();
            (*this)(self, waited);
        }

        template <class Self>
        void complete(Self& self) {
            if constexpr (WithBytes) {
                self.complete(result.ec, result.bytes);
            } else {
                self.complete(result.ec);
            }
        }
    };

    template <bool WithBytes, bool MayDefer = false, class Try, class Token>
    auto run(Try attempt, Token& token, bool heavy = false) {
        using Signature =
            std::conditional_t<WithBytes, void(boost::system::error_code, std::size_t),
                               void(boost::system::error_code)>;
        return boost::asio::async_compose<Token, Signature>(
            Operation<WithBytes, MayDefer, Try>{*this, std::move(attempt), heavy}, token, socket_);
    }

    template <class MutableBuffers>
    static boost::asio::mutable_buffer first(const MutableBuffers& buffers) {
        for (auto it = boost::asio::buffer_sequence_begin(buffers);
             it != boost::asio::buffer_sequence_end(buffers); ++it) {
            boost::asio::mutable_buffer b(*it);
            if (b.size() != 0) {
                return b;
            }
        }
        return {};
    }

    static char* gather_scratch();  // record_size bytes, per thread
    void note_bytes_came();

    Socket socket_;
    SslPtr ssl_;
};

}  // namespace bg
