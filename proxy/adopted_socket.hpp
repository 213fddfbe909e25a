#pragma once
// adopt_socket: a connected TCP descriptor the proxy itself accepted (accept4 with
// SOCK_NONBLOCK) or took back from parking, handed to asio as what it is. asio takes any
// descriptor it is given for a possible duplicate, and for blocking: its close would then remove
// it from epoll with a syscall of its own (closing the only descriptor does that already), and
// its first operation would set non-blocking mode with another (ioctl FIONBIO). Neither is
// needed here: two of the twelve syscalls a `Connection: close` request cost.

#include <boost/system/error_code.hpp>

#include "io_types.hpp"

namespace bg {

// `descriptor` must be non-blocking and not shared with any other descriptor (no dup); on
// failure (ec set) it is left open, the caller's to close.
Socket adopt_socket(boost::asio::io_context& io, bool v6, int descriptor,
                    boost::system::error_code& ec);

}  // namespace bg
