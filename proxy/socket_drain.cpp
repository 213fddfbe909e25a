#include "socket_drain.hpp"

#include <boost/asio/detail/epoll_reactor.hpp>

namespace bg {

namespace {

using boost::asio::detail::epoll_reactor;
using DescriptorState = epoll_reactor::descriptor_state;
using SpeculativeFlags = bool (DescriptorState::*)[epoll_reactor::max_ops];

// The reactor's per-socket "try a read before waiting" flags are private to it. An explicit
// instantiation may name a private member (C++20 [temp.spec.general]/6), and hands the member's
// pointer out through a friend function.
SpeculativeFlags speculative_flags();

template <SpeculativeFlags Member>
struct ExposeSpeculativeFlags {
    friend SpeculativeFlags speculative_flags() { return Member; }
};
template struct ExposeSpeculativeFlags<&DescriptorState::try_speculative_>;

// A socket's implementation (and with it the reactor's data for it) is a protected member of
// asio's socket.
struct SocketInternals : Socket {
    static DescriptorState* state(Socket& socket) {
        return (socket.*(&SocketInternals::impl_)).get_implementation().reactor_data_;
    }
};

// The reactor's "try a read first" flag for the socket's reads; nullptr for a socket it has not
// registered.
bool* try_read_first(Socket& socket) {
    DescriptorState* state = SocketInternals::state(socket);
    return state == nullptr ? nullptr : &(state->*speculative_flags())[epoll_reactor::read_op];
}

}  // namespace

bool input_seen_since_drained(Socket& socket) {
    const bool* flag = try_read_first(socket);
    return flag == nullptr || *flag;
}

void forget_drained(Socket& socket) {
    if (bool* flag = try_read_first(socket)) {
        *flag = true;
    }
}

void assume_drained(Socket& socket) {
    if (bool* flag = try_read_first(socket)) {
        *flag = false;
    }
}

}  // namespace bg
