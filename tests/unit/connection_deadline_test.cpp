#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>

#include "connection_deadline.hpp"
#include "session_handle.hpp"

using namespace std::chrono_literals;

namespace {
// A connected pair on loopback: `ours` is the connection's socket, `peer` the other end.
struct SocketPair {
    explicit SocketPair(boost::asio::io_context& io)
        : ours(io.get_executor()), peer(io.get_executor()) {
        bg::Acceptor acceptor(io.get_executor(), {boost::asio::ip::make_address("127.0.0.1"), 0});
        ours.connect(acceptor.local_endpoint());
        peer = acceptor.accept();
    }
    bg::Socket ours;
    bg::Socket peer;
};
}  // namespace

TEST_CASE("a step after an expiry that closed its socket is still the expiry's") {
    boost::asio::io_context io;
    SocketPair client(io);
    bg::SessionHandle handle;
    handle.client = &client.ours;
    bg::ConnectionDeadline deadline(io.get_executor(), handle);

    deadline.arm(1ms, bg::ConnectionDeadline::client);
    io.run_for(50ms);
    REQUIRE(deadline.expired());
    REQUIRE(!client.ours.is_open());
    // The step that ran out of time completed anyway (its bytes came in the expiry's turn);
    // the next step arms again and fails on the closed socket: a timeout, not a peer's close.
    deadline.arm(1s, bg::ConnectionDeadline::client);
    CHECK(deadline.expired());
}

TEST_CASE("after an upstream expiry, a step on an open socket starts afresh") {
    boost::asio::io_context io;
    SocketPair client(io);
    SocketPair upstream(io);
    bg::SessionHandle handle;
    handle.client = &client.ours;
    handle.upstream = &upstream.ours;
    bg::ConnectionDeadline deadline(io.get_executor(), handle);

    deadline.arm(1ms, bg::ConnectionDeadline::upstream);
    io.run_for(50ms);
    REQUIRE(deadline.expired());
    CHECK(client.ours.is_open());  // only the stalled side was closed
    // A 504 went out; the client's next request waits on the client socket alone.
    deadline.arm(1s, bg::ConnectionDeadline::client);
    CHECK(!deadline.expired());
    // A new backend connection: its steps are not the old expiry's either.
    SocketPair next(io);
    handle.upstream = &next.ours;
    deadline.arm(1ms, bg::ConnectionDeadline::upstream);
    deadline.arm(1s, bg::ConnectionDeadline::both);
    CHECK(!deadline.expired());
}
