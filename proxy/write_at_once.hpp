#pragma once
// write_at_once: what a socket takes now, in one non-blocking sendmsg, before any asynchronous
// write. asio posts the completion of a write that finished at once, so the coroutine resumed a
// turn of the worker's loop later, behind every other ready connection's step (a TLS
// handshake's is hundreds of microseconds): two such turns on each proxied request, the
// request to the backend and the answer to the client. HAProxy and nginx send in place.
// Over TLS the same, record by record. Worker thread only.

#include <boost/asio/buffer.hpp>
#include <boost/system/error_code.hpp>
#include <cstddef>
#include <span>
#include <string_view>

#include "io_types.hpp"

namespace bg {

class TlsStream;
class UpstreamStream;

// Writes at most once, without waiting; returns the bytes the kernel took (0 when its buffer is
// full). `ec` is set on a real error only (the connection is gone), never for would-block.
// `flags` adds to MSG_DONTWAIT | MSG_NOSIGNAL (MSG_MORE, as BodyCork's HeldSend).
std::size_t write_at_once(Socket& socket, std::span<const boost::asio::const_buffer> pieces,
                          boost::system::error_code& ec, int flags = 0);

// One piece.
inline std::size_t write_at_once(Socket& socket, std::string_view bytes,
                                 boost::system::error_code& ec, int flags = 0) {
    const boost::asio::const_buffer piece(bytes.data(), bytes.size());
    return write_at_once(socket, {&piece, 1}, ec, flags);
}

// Over TLS: records written until all of `pieces` is, or the socket is full (OpenSSL then
// holds the record it could not finish: the asynchronous write that follows must start at the
// first unwritten byte, with a record's worth at least or all that is left, as asio's writes
// over a TlsStream do). The bytes taken are returned.
std::size_t write_at_once(TlsStream& tls, std::span<const boost::asio::const_buffer> pieces,
                          boost::system::error_code& ec);
// A backend's connection, plain or TLS.
std::size_t write_at_once(UpstreamStream& stream, std::span<const boost::asio::const_buffer> pieces,
                          boost::system::error_code& ec);

// One piece.
std::size_t write_at_once(TlsStream& tls, std::string_view bytes, boost::system::error_code& ec);
std::size_t write_at_once(UpstreamStream& stream, std::string_view bytes,
                          boost::system::error_code& ec);

// What is left of `pieces` after their first `written` bytes: a view of `storage`, which must
// have room for as many buffers as `pieces`.
std::span<const boost::asio::const_buffer> unwritten(
    std::span<const boost::asio::const_buffer> pieces, std::size_t written,
    std::span<boost::asio::const_buffer> storage);

}  // namespace bg
