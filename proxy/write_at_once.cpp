#include "write_at_once.hpp"

#include <sys/socket.h>
#include <sys/uio.h>

#include <array>
#include <cerrno>

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
