#include "socket_drain.hpp"

#include <sys/epoll.h>

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

// The same for the socket's registration with epoll (its events, its lock, its queues) and the
// reactor's epoll descriptor.
using RegisteredEvents = std::uint32_t DescriptorState::*;
using DescriptorMutex = boost::asio::detail::conditionally_enabled_mutex DescriptorState::*;
using OperationQueues = boost::asio::detail::op_queue<boost::asio::detail::reactor_op> (
    DescriptorState::*)[epoll_reactor::max_ops];
using ReactorOf = epoll_reactor* DescriptorState::*;
using EpollDescriptor = int epoll_reactor::*;
struct Registration {
    RegisteredEvents events;
    DescriptorMutex mutex;
    OperationQueues queues;
    ReactorOf reactor;
    EpollDescriptor epoll;
};
Registration registration();

template <RegisteredEvents Events, DescriptorMutex Mutex, OperationQueues Queues, ReactorOf Reactor,
          EpollDescriptor Epoll>
struct ExposeRegistration {
    friend Registration registration() { return {Events, Mutex, Queues, Reactor, Epoll}; }
};
template struct ExposeRegistration<&DescriptorState::registered_events_, &DescriptorState::mutex_,
                                   &DescriptorState::op_queue_, &DescriptorState::reactor_,
                                   &epoll_reactor::epoll_fd_>;

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

char never_written;  // a ReadinessWait's byte: a receive of none would end at once in asio

}  // namespace

ReadinessWait::ReadinessWait() : boost::asio::mutable_buffer(&never_written, 1) {}

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

void stop_watching_writable(Socket& socket) {
    DescriptorState* state = SocketInternals::state(socket);
    if (state == nullptr) {
        return;
    }
    const Registration r = registration();
    boost::asio::detail::conditionally_enabled_mutex::scoped_lock lock(state->*r.mutex);
    std::uint32_t& events = state->*r.events;
    if ((events & EPOLLOUT) == 0 || !(state->*r.queues)[epoll_reactor::write_op].empty()) {
        return;
    }
    epoll_event changed{};
    changed.events = events & ~static_cast<std::uint32_t>(EPOLLOUT);
    changed.data.ptr = state;
    const int epoll = (state->*r.reactor)->*r.epoll;
    if (::epoll_ctl(epoll, EPOLL_CTL_MOD, socket.native_handle(), &changed) == 0) {
        events = changed.events;
    }
}

}  // namespace bg
