#pragma once
// What asio's reactor knows of a plain socket's input: whether a read emptied it, and whether
// input has been seen since.
//
// asio 1.81 starts every read with a recv ("speculative"), and marks a socket drained only when
// a read returns nothing (end of file). So each keep-alive request paid one recv that found
// nothing (EAGAIN) before the reactor's wait, and a pooled backend connection could only be
// known to be quiet by a peek of its own (a syscall per request). HAProxy knows both from its
// poller: a read that returns less than it asked for emptied the socket, and the socket stays
// empty until the poller says otherwise.
//
// A read into a DrainingBuffer does the same in asio's reactor: when it returns short, the
// reactor's next read of that socket waits for the poller (epoll, edge-triggered) instead of
// trying a recv first, and a poller event on the socket sets that back. So until an event,
// input_seen_since_drained() is false: nothing has arrived since the drained read, or it
// arrived too recently for the poller to have said so (within one turn of the event loop, the
// same window HAProxy's poller leaves).
//
// One thing a short read does not show: an end of stream (FIN) that came with its bytes. The
// recv stops before it, and the poller will not report it again. So the drained mark is trusted
// only by a read that starts a new message (the next request, a response to a request just
// sent): an end found there is one the peer sent between messages, and is found another way (a
// parked client's registration reports it; a stale pooled connection fails its request, which
// goes again on a fresh one). A read that continues a message forgets the mark first
// (forget_drained): it tries a recv at once, as asio does, and finds a peer that sent part of a
// message and left. (A body relay does that recv itself, and marks the socket drained only when
// it found nothing: no end can hide behind an EAGAIN.)
//
// This reaches into asio's epoll reactor (Boost 1.81, Debian 12's; the stack is fixed): the
// read operation of a DrainingBuffer is asio's, with its own perform step (below).

#include "io_types.hpp"  // first: asio's socket headers, which the next one assumes

#include <boost/asio/buffer.hpp>
#include <boost/asio/detail/reactive_socket_recv_op.hpp>

#if !defined(BOOST_ASIO_HAS_EPOLL) || defined(BOOST_ASIO_HAS_IO_URING_AS_DEFAULT)
#error "socket_drain.hpp knows asio's epoll reactor only"
#endif

namespace bg {

// A single buffer to read into; a read that fills less of it marks the socket drained.
struct DrainingBuffer : boost::asio::mutable_buffer {
    explicit DrainingBuffer(boost::asio::mutable_buffer b) : boost::asio::mutable_buffer(b) {}
};

inline DrainingBuffer draining(boost::asio::mutable_buffer b) {
    return DrainingBuffer(b);
}

// A receive that reads nothing: it ends when the poller reports input on the socket (or an
// error, or the end), as async_wait does, but queued on the socket's edge-triggered
// registration as a read is, with no epoll_ctl. For a reader whose own recv (OpenSSL's, through
// its BIO) found the socket empty: start it with the socket marked drained (assume_drained), so
// the reactor does not "try it first", which would end it at once. Unlike async_wait, whose
// epoll_ctl reports what is already waiting, it needs an event to come: so it only follows a
// recv that found nothing (or a drained mark trusted as above). It may also end at an event
// whose bytes a recv of the reader's already took: the reader's next read finds nothing and
// waits again. Its one byte is never written. A listening socket is waited on the same way
// once accept4 has found its backlog empty (Worker::wait_for_connection).
struct ReadinessWait : boost::asio::mutable_buffer {
    ReadinessWait();
};

// False while the reactor has seen no input on `socket` since a read into a DrainingBuffer
// returned short (see above); true otherwise, and always for a socket the reactor has not
// registered.
bool input_seen_since_drained(Socket& socket);

// Before a read that continues a message: its first recv is tried at once (see above).
void forget_drained(Socket& socket);

// Marks a socket drained without a read of asio's: a connection just accepted, whose first
// bytes (if already there) the poller reports at its next wait, as it reports a new socket's
// readiness; or one whose own recv (a peek, OpenSSL's) just found it empty (EAGAIN).
void assume_drained(Socket& socket);

// After a connect, which asio waits for as writability: the poller stops reporting the socket
// writable. asio leaves EPOLLOUT in its registration for good, so every ACK that frees send
// space (one per request sent to a backend) woke the poller for nothing; asio adds it back
// itself when a write would block. One epoll_ctl; nothing when a write waits already.
void stop_watching_writable(Socket& socket);

}  // namespace bg

namespace boost::asio::detail {

// asio's receive operation for a DrainingBuffer: one recv, as asio's own does, and "done and
// exhausted" (the reactor's word for drained) when it returned fewer bytes than the buffer
// holds, not only when it returned none.
template <>
class reactive_socket_recv_op_base<bg::DrainingBuffer> : public reactor_op {
  public:
    reactive_socket_recv_op_base(const boost::system::error_code& success_ec, socket_type socket,
                                 socket_ops::state_type state, const bg::DrainingBuffer& buffer,
                                 socket_base::message_flags flags, func_type complete_func)
        : reactor_op(success_ec, &reactive_socket_recv_op_base::do_perform, complete_func),
          socket_(socket),
          state_(state),
          buffer_(buffer),
          flags_(flags) {}

    static status do_perform(reactor_op* base) {
        auto* o = static_cast<reactive_socket_recv_op_base*>(base);
        const bool stream = (o->state_ & socket_ops::stream_oriented) != 0;
        if (!socket_ops::non_blocking_recv1(o->socket_, o->buffer_.data(), o->buffer_.size(),
                                            o->flags_, stream, o->ec_, o->bytes_transferred_)) {
            return not_done;
        }
        // A stream socket's recv returns less than asked only when its receive queue is empty.
        return stream && o->bytes_transferred_ < o->buffer_.size() ? done_and_exhausted : done;
    }

  private:
    socket_type socket_;
    socket_ops::state_type state_;
    bg::DrainingBuffer buffer_;
    socket_base::message_flags flags_;
};

// asio's receive operation for a ReadinessWait: the reactor runs it when the poller reports the
// socket readable (or in error, or hung up); it is done then, with no recv.
template <>
class reactive_socket_recv_op_base<bg::ReadinessWait> : public reactor_op {
  public:
    reactive_socket_recv_op_base(const boost::system::error_code& success_ec, socket_type,
                                 socket_ops::state_type, const bg::ReadinessWait&,
                                 socket_base::message_flags, func_type complete_func)
        : reactor_op(success_ec, &reactive_socket_recv_op_base::do_perform, complete_func) {}

    static status do_perform(reactor_op*) { return done; }
};

}  // namespace boost::asio::detail
