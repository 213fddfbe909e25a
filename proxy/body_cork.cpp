#include "body_cork.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cerrno>

namespace bg {

std::size_t BodyCork::read_at_once(boost::asio::mutable_buffer into, boost::system::error_code& ec,
                                   bool& empty) {
    const ssize_t n = ::recv(source_->native_handle(), into.data(), into.size(), MSG_DONTWAIT);
    if (n > 0) {
        return static_cast<std::size_t>(n);
    }
    empty = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    if (n < 0 && !empty && errno != EINTR) {
        ec.assign(errno, boost::system::system_category());
    }
    push();  // nothing now (or the end): what is held must not wait for it
    return 0;
}

void BodyCork::push() {
    if (!holding_) {
        return;
    }
    holding_ = false;
    // Setting TCP_NODELAY, even again, makes the kernel send what it holds at once.
    const int one = 1;
    ::setsockopt(sink_->native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace bg
