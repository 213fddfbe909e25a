#include "write_at_once.hpp"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <cerrno>

#include "tls_stream.hpp"
#include "upstream_stream.hpp"

namespace bg {

std::size_t write_at_once(Socket& socket, std::span<const boost::asio::const_buffer> pieces,
                          boost::system::error_code& ec, int flags) {
    std::array<iovec, 8> vectors{};
    std::size_t count = 0;
    for (const auto& piece : pieces) {
        if (piece.size() == 0) {
            continue;
        }
        if (count == vectors.size()) {
            break;  // the rest goes with the asynchronous write
        }
        vectors[count++] = {const_cast<void*>(piece.data()), piece.size()};
    }
    if (count == 0 || !socket.is_open()) {
        return 0;
    }
    msghdr message{};
    message.msg_iov = vectors.data();
    message.msg_iovlen = count;
    for (;;) {
        const ssize_t n =
            ::sendmsg(socket.native_handle(), &message, MSG_DONTWAIT | MSG_NOSIGNAL | flags);
        if (n >= 0) {
            return static_cast<std::size_t>(n);
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            ec.assign(errno, boost::system::system_category());
        }
        return 0;
    }
}

std::size_t write_at_once(TlsStream& tls, std::span<const boost::asio::const_buffer> pieces,
                          boost::system::error_code& ec) {
    std::array<boost::asio::const_buffer, 8> storage;
    pieces = pieces.first(std::min(pieces.size(), storage.size()));  // the rest: asynchronously
    std::size_t total = 0;
    while (!tls.closed()) {
        const auto rest = unwritten(pieces, total, storage);
        if (rest.empty()) {
            break;
        }
        // One record per call, never more: the asynchronous write that follows a would-block
        // must offer OpenSSL at least the bytes of the record it holds, and offers one record
        // at least (a longer try could leave a multi-record write pending: OpenSSL's
        // multiblock ciphers, which asio's 64 KiB writes could not repeat, a review).
        const auto record = boost::asio::buffer(TlsStream::gather(rest), TlsStream::record_size);
        const TlsStream::Attempt attempt = tls.try_write(record);
        if (attempt.wait != TlsStream::Wait::none || (!attempt.ec && attempt.bytes == 0)) {
            break;
        }
        if (attempt.ec) {
            ec = attempt.ec;
            break;
        }
        total += attempt.bytes;
    }
    return total;
}

std::size_t write_at_once(UpstreamStream& stream, std::span<const boost::asio::const_buffer> pieces,
                          boost::system::error_code& ec) {
    if (TlsStream* tls = stream.tls()) {
        return write_at_once(*tls, pieces, ec);
    }
    return write_at_once(stream.socket(), pieces, ec);
}

std::size_t write_at_once(TlsStream& tls, std::string_view bytes, boost::system::error_code& ec) {
    const boost::asio::const_buffer piece(bytes.data(), bytes.size());
    return write_at_once(tls, {&piece, 1}, ec);
}

std::size_t write_at_once(UpstreamStream& stream, std::string_view bytes,
                          boost::system::error_code& ec) {
    const boost::asio::const_buffer piece(bytes.data(), bytes.size());
    return write_at_once(stream, {&piece, 1}, ec);
}

std::span<const boost::asio::const_buffer> unwritten(
    std::span<const boost::asio::const_buffer> pieces, std::size_t written,
    std::span<boost::asio::const_buffer> storage) {
    std::size_t count = 0;
    for (const auto& piece : pieces) {
        if (written >= piece.size()) {
            written -= piece.size();
            continue;
        }
        storage[count++] = piece + written;
        written = 0;
    }
    return storage.first(count);
}

}  // namespace bg
