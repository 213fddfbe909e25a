#include <doctest/doctest.h>

#include <sys/epoll.h>
#include <sys/socket.h>

#include <array>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "socket_drain.hpp"

namespace {

namespace asio = boost::asio;
using asio::ip::tcp;

// A connected pair on 127.0.0.1 in one single-threaded io_context, as a worker runs them.
struct SocketPair {
    asio::io_context io{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
    bg::Socket ours{io.get_executor()};
    bg::Socket peer{io.get_executor()};

    SocketPair() {
        bg::Acceptor acceptor(io.get_executor(),
                              tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
        peer.connect(acceptor.local_endpoint());
        acceptor.accept(ours);
        ours.non_blocking(true);
    }

    void send(std::string_view bytes) { asio::write(peer, asio::buffer(bytes)); }

    // Runs the loop, the poller included, for a while.
    void turn() {
        asio::steady_timer timer(io, std::chrono::milliseconds(30));
        bool fired = false;
        timer.async_wait([&](boost::system::error_code) { fired = true; });
        io.restart();  // a loop that ran out of work stays stopped until restarted
        while (!fired) {
            io.run_one_for(std::chrono::seconds(1));
        }
    }

    // One read into a DrainingBuffer of `size`, run to its end; how many bytes it took
    // (-1: not within two seconds).
    long read(std::size_t size) {
        std::array<char, 256> buffer{};
        long got = -1;
        ours.async_read_some(bg::draining(asio::buffer(buffer.data(), size)),
                             [&](boost::system::error_code ec, std::size_t n) {
                                 got = ec ? -2 : static_cast<long>(n);
                             });
        io.restart();
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
        while (got == -1 && std::chrono::steady_clock::now() < deadline) {
            io.run_one_for(std::chrono::milliseconds(100));
        }
        if (got == -1) {
            ours.cancel();
            io.restart();
            io.run_for(std::chrono::milliseconds(100));
            return -1;
        }
        return got;
    }
};

}  // namespace

TEST_CASE("a short read marks the socket drained until the poller reports input") {
    SocketPair pair;
    CHECK(bg::input_seen_since_drained(pair.ours));  // nothing read yet: unknown, so yes
    pair.send("hello");
    CHECK(pair.read(256) == 5);
    CHECK_FALSE(bg::input_seen_since_drained(pair.ours));
    pair.turn();  // nothing came: still drained
    CHECK_FALSE(bg::input_seen_since_drained(pair.ours));
    pair.send("more");
    pair.turn();
    CHECK(bg::input_seen_since_drained(pair.ours));
    CHECK(pair.read(256) == 4);
    CHECK_FALSE(bg::input_seen_since_drained(pair.ours));
}

TEST_CASE("a read on a drained socket waits for the poller and still gets what comes") {
    SocketPair pair;
    pair.send("a");
    CHECK(pair.read(256) == 1);
    REQUIRE_FALSE(bg::input_seen_since_drained(pair.ours));
    // The bytes arrive while no read waits; the next read finds them once the poller says so.
    pair.send("later");
    CHECK(pair.read(256) == 5);
    // And the end of the stream is seen the same way.
    pair.peer.shutdown(tcp::socket::shutdown_send);
    CHECK(pair.read(256) == -2);
}

TEST_CASE("a read that fills its buffer does not mark the socket drained") {
    SocketPair pair;
    pair.send("12345678");
    CHECK(pair.read(8) == 8);
    CHECK(bg::input_seen_since_drained(pair.ours));
}

TEST_CASE("a socket just accepted and assumed drained still reads bytes already there") {
    // As the worker does with a connection it accepts: its registration with the poller
    // reports bytes that came before it.
    SocketPair pair;
    bg::Acceptor acceptor(pair.io.get_executor(),
                          tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    bg::Socket client(pair.io.get_executor());
    client.connect(acceptor.local_endpoint());
    asio::write(client, asio::buffer(std::string_view("first")));
    pair.ours.close();
    acceptor.accept(pair.ours);
    pair.ours.non_blocking(true);
    bg::assume_drained(pair.ours);
    CHECK_FALSE(bg::input_seen_since_drained(pair.ours));
    CHECK(pair.read(256) == 5);
}

namespace {

// A ReadinessWait started on `pair` (marked drained first, as its users do); the result is
// written when it ends.
void start_readiness_wait(SocketPair& pair, std::optional<boost::system::error_code>& ended) {
    bg::assume_drained(pair.ours);
    pair.ours.async_receive(bg::ReadinessWait(), bg::Socket::message_peek,
                            [&](boost::system::error_code ec, std::size_t n) {
                                CHECK(n == 0);
                                ended = ec;
                            });
}

long recv_now(bg::Socket& socket) {
    std::array<char, 64> buffer{};
    return static_cast<long>(
        ::recv(socket.native_handle(), buffer.data(), buffer.size(), MSG_DONTWAIT));
}

}  // namespace

TEST_CASE("a readiness wait ends when bytes come, and leaves them to be read") {
    SocketPair pair;
    std::optional<boost::system::error_code> ended;
    start_readiness_wait(pair, ended);
    pair.turn();
    CHECK_FALSE(ended);  // nothing came: it waits
    pair.send("abc");
    pair.turn();
    REQUIRE(ended);
    CHECK_FALSE(*ended);
    CHECK(recv_now(pair.ours) == 3);  // none taken
}

TEST_CASE("a readiness wait ends at the peer's end of stream, and when cancelled") {
    SocketPair pair;
    std::optional<boost::system::error_code> ended;
    start_readiness_wait(pair, ended);
    pair.peer.shutdown(tcp::socket::shutdown_send);
    pair.turn();
    REQUIRE(ended);
    CHECK_FALSE(*ended);
    CHECK(recv_now(pair.ours) == 0);  // the reader's own read finds the end

    SocketPair other;
    std::optional<boost::system::error_code> cancelled;
    start_readiness_wait(other, cancelled);
    other.turn();
    other.ours.cancel();
    other.turn();
    REQUIRE(cancelled);
    CHECK(*cancelled == asio::error::operation_aborted);
}

namespace {

// The events an epoll set of this process watches `descriptor` for (/proc/self/fdinfo), or
// nothing when no epoll set watches it.
std::optional<unsigned> watched_events(int descriptor) {
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fdinfo")) {
        std::ifstream info(entry.path());
        std::string line;
        while (std::getline(info, line)) {
            unsigned target = 0, events = 0;
            if (std::sscanf(line.c_str(), "tfd: %u events: %x", &target, &events) == 2 &&
                static_cast<int>(target) == descriptor) {
                return events;
            }
        }
    }
    return std::nullopt;
}

}  // namespace

TEST_CASE("a connected socket stops being watched for writability, and writes still wait") {
    SocketPair pair;
    bg::Acceptor acceptor(pair.io.get_executor(),
                          tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    bg::Socket client(pair.io.get_executor());
    bool connected = false;
    client.async_connect(acceptor.local_endpoint(), [&](boost::system::error_code ec) {
        REQUIRE_FALSE(ec);
        connected = true;
    });
    pair.io.restart();
    while (!connected) {
        pair.io.run_one_for(std::chrono::seconds(1));
    }
    bg::Socket server(pair.io.get_executor());
    acceptor.accept(server);
    const auto before = watched_events(client.native_handle());
    REQUIRE(before);
    CHECK((*before & EPOLLOUT) != 0);  // asio waited for the connect as writability
    bg::stop_watching_writable(client);
    const auto after = watched_events(client.native_handle());
    REQUIRE(after);
    CHECK((*after & EPOLLOUT) == 0);
    CHECK((*after & EPOLLIN) != 0);
    // A write larger than the socket buffers waits for room: asio watches again by itself.
    std::vector<char> bytes(8 << 20, 'x');
    bool written = false;
    asio::async_write(client, asio::buffer(bytes),
                      [&](boost::system::error_code ec, std::size_t n) {
                          CHECK_FALSE(ec);
                          CHECK(n == bytes.size());
                          written = true;
                      });
    std::vector<char> sink(1 << 20);
    std::size_t received = 0;
    std::function<void()> drain = [&] {
        server.async_read_some(asio::buffer(sink),
                               [&](boost::system::error_code ec, std::size_t n) {
                                   received += n;
                                   if (!ec && received < bytes.size()) {
                                       drain();
                                   }
                               });
    };
    drain();
    pair.io.restart();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while ((!written || received < bytes.size()) && std::chrono::steady_clock::now() < deadline) {
        pair.io.run_one_for(std::chrono::milliseconds(100));
    }
    CHECK(written);
    CHECK(received == bytes.size());
}
