#include <doctest/doctest.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pending_input.hpp"
#include "socket_drain.hpp"
#include "tls_socket_bio.hpp"
#include "tls_stream.hpp"

namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

// A server context with a throwaway P-256 certificate, made in memory.
void give_certificate(asio::ssl::context& context) {
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(EVP_EC_gen("P-256"), EVP_PKEY_free);
    REQUIRE(key);
    std::unique_ptr<X509, decltype(&X509_free)> cert(X509_new(), X509_free);
    X509_set_version(cert.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
    X509_NAME* name = X509_get_subject_name(cert.get());
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("unit.test"), -1, -1, 0);
    X509_set_issuer_name(cert.get(), name);
    X509_set_pubkey(cert.get(), key.get());
    REQUIRE(X509_sign(cert.get(), key.get(), EVP_sha256()) > 0);
    REQUIRE(SSL_CTX_use_certificate(context.native_handle(), cert.get()) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey(context.native_handle(), key.get()) == 1);
}

// A TLS connection on 127.0.0.1, both ends TlsStreams in one single-threaded io_context (as a
// worker runs them), handshaken.
struct TlsPair {
    asio::io_context io{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
    asio::ssl::context server_context{asio::ssl::context::tls_server};
    asio::ssl::context client_context{asio::ssl::context::tls_client};
    std::optional<bg::TlsStream> server;
    std::optional<bg::TlsStream> client;

    // Handshaken, unless `handshake` is false (the test makes it).
    explicit TlsPair(bool handshake = true) {
        give_certificate(server_context);
        bg::Acceptor acceptor(io.get_executor(),
                              tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
        bg::Socket ours(io.get_executor());
        bg::Socket peer(io.get_executor());
        peer.connect(acceptor.local_endpoint());
        acceptor.accept(ours);
        ours.set_option(tcp::no_delay(true));  // as the proxy's accepted sockets have it
        server.emplace(std::move(ours), server_context);
        client.emplace(std::move(peer), client_context);
        if (handshake) {
            shake_hands();
        }
    }

    void shake_hands() {
        std::optional<error_code> served, connected;
        server->async_handshake(asio::ssl::stream_base::server,
                                [&](error_code ec) { served = ec; });
        client->async_handshake(asio::ssl::stream_base::client,
                                [&](error_code ec) { connected = ec; });
        run_until([&] { return served && connected; });
        REQUIRE(served);
        REQUIRE(connected);
        REQUIRE_FALSE(*served);
        REQUIRE_FALSE(*connected);
    }

    template <class Done>
    void run_until(Done done, std::chrono::milliseconds limit = std::chrono::seconds(2)) {
        io.restart();  // a loop that ran out of work stays stopped until restarted
        const auto deadline = std::chrono::steady_clock::now() + limit;
        while (!done() && std::chrono::steady_clock::now() < deadline) {
            io.run_one_for(std::chrono::milliseconds(20));
        }
    }

    // Runs the loop (its poller included) for a while with nothing else to do: what came is
    // reported to the reactor while no read waits. (run_until alone returns at once when no
    // operation is pending, without polling.)
    void settle() {
        asio::steady_timer timer(io, std::chrono::milliseconds(60));
        bool done = false;
        timer.async_wait([&](error_code) { done = true; });
        run_until([&] { return done; });
    }

    void client_sends(std::string_view bytes) {
        bool sent = false;
        client->async_write_some(asio::buffer(bytes), [&](error_code ec, std::size_t n) {
            REQUIRE_FALSE(ec);
            REQUIRE(n == bytes.size());
            sent = true;
        });
        run_until([&] { return sent; });
        REQUIRE(sent);
    }

    // A server read started now; its outcome once it ends.
    struct Read {
        std::array<char, 256> bytes{};
        std::optional<error_code> ec;
        std::size_t n = 0;
        std::string text() const { return std::string(bytes.data(), n); }
    };
    void start_read(Read& read) {
        server->async_read_some(bg::draining(asio::buffer(read.bytes)),
                                [&read](error_code ec, std::size_t n) {
                                    read.ec = ec;
                                    read.n = n;
                                });
    }
    std::string read_now() {
        Read read;
        start_read(read);
        run_until([&] { return read.ec.has_value(); });
        REQUIRE(read.ec);
        REQUIRE_FALSE(*read.ec);
        return read.text();
    }
};

}  // namespace

TEST_CASE("a server's handshake answers a ClientHello after the light handlers ready before it") {
    TlsPair pair(false);
    std::optional<error_code> served, connected;
    // The client's first try sends its ClientHello from the initiating call: on loopback it is
    // in the server's socket at once.
    pair.client->async_handshake(asio::ssl::stream_base::client,
                                 [&](error_code ec) { connected = ec; });
    std::optional<OSSL_HANDSHAKE_STATE> seen;
    asio::post(pair.io, [&] { seen = SSL_get_state(pair.server->native_handle()); });
    pair.server->async_handshake(asio::ssl::stream_base::server,
                                 [&](error_code ec) { served = ec; });
    pair.run_until([&] { return served && connected; });
    REQUIRE(seen);
    CHECK(*seen == TLS_ST_BEFORE);  // the key exchange and signature had not run yet
    REQUIRE(served);
    REQUIRE(connected);
    CHECK_FALSE(*served);
    CHECK_FALSE(*connected);
}

TEST_CASE("a server's handshake waits its turn again for the ClientHello after a retry request") {
    for (const bool retry : {false, true}) {
        CAPTURE(retry);
        TlsPair pair(false);
        if (retry) {
            // The client's key share (for X25519, its first group) is not for a group the
            // server takes: a HelloRetryRequest asks for P-384, and a second ClientHello comes.
            REQUIRE(SSL_set1_groups_list(pair.client->native_handle(), "X25519:P-384") == 1);
            REQUIRE(SSL_set1_groups_list(pair.server->native_handle(), "P-384") == 1);
        }
        std::optional<error_code> served, connected;
        pair.client->async_handshake(asio::ssl::stream_base::client,
                                     [&](error_code ec) { connected = ec; });
        pair.server->async_handshake(asio::ssl::stream_base::server,
                                     [&](error_code ec) { served = ec; });
        pair.run_until([&] { return served && connected; });
        REQUIRE(served);
        REQUIRE(connected);
        CHECK_FALSE(*served);
        CHECK_FALSE(*connected);
        // Each ClientHello's answer (key exchange, signature) took a turn in the queue. (After
        // a retry request the wait may also end at the first ClientHello's event, which the
        // poller reported before the queued try read it: a try that finds nothing yet, in a
        // turn of its own.)
        const std::size_t turns = bg::HeavyQueue::of(pair.io.get_executor()).steps_run();
        if (retry) {
            CHECK(turns >= 2);
            CHECK(turns <= 3);
        } else {
            CHECK(turns == 1);
        }
    }
}

TEST_CASE("a TLS read that emptied the socket waits for the next bytes, and gets them") {
    TlsPair pair;
    pair.client_sends("GET one");
    CHECK(pair.read_now() == "GET one");
    CHECK(bg::socket_bio_drained(pair.server->native_handle()));  // fewer bytes than asked
    TlsPair::Read next;
    pair.start_read(next);
    pair.run_until([] { return false; }, std::chrono::milliseconds(60));
    CHECK_FALSE(next.ec.has_value());  // nothing came: it waits
    pair.client_sends("GET two");
    pair.run_until([&] { return next.ec.has_value(); });
    REQUIRE(next.ec);
    CHECK_FALSE(*next.ec);
    CHECK(next.text() == "GET two");
}

TEST_CASE("a handshake whose last read emptied the socket tells the reactor so") {
    // The server's last read is the client's Finished (TLS 1.3): the first request starts a new
    // message, so its read may wait at once, as a keep-alive request's does.
    TlsPair pair;
    CHECK(bg::socket_bio_drained(pair.server->native_handle()));
    CHECK_FALSE(bg::input_seen_since_drained(pair.server->next_layer()));
    // And the request still comes.
    TlsPair::Read next;
    pair.start_read(next);
    pair.client_sends("GET first");
    pair.run_until([&] { return next.ec.has_value(); });
    REQUIRE(next.ec);
    CHECK_FALSE(*next.ec);
    CHECK(next.text() == "GET first");
}

// Segments that carried data out of `socket` so far. glibc's tcp_info stops before the field,
// and linux/tcp.h clashes with netinet/tcp.h: the kernel's layout after glibc's fields.
std::uint32_t data_segments_out(bg::Socket& socket) {
    struct {
        tcp_info glibc_part;
        std::uint64_t pacing_rate, max_pacing_rate, bytes_acked, bytes_received;
        std::uint32_t segs_out, segs_in, notsent_bytes, min_rtt, data_segs_in, data_segs_out;
    } info{};
    socklen_t size = sizeof info;
    REQUIRE(::getsockopt(socket.native_handle(), IPPROTO_TCP, TCP_INFO, &info, &size) == 0);
    REQUIRE(size >= sizeof info);
    return info.data_segs_out;
}

// Bytes written to `socket` that the kernel holds back, not sent yet (a held send's).
int unsent_bytes(bg::Socket& socket) {
    int unsent = -1;
    REQUIRE(::ioctl(socket.native_handle(), SIOCOUTQNSD, &unsent) == 0);
    return unsent;
}

void server_writes(TlsPair& pair, std::string_view bytes) {
    std::optional<error_code> written;
    pair.server->async_write_some(asio::buffer(bytes),
                                  [&](error_code ec, std::size_t) { written = ec; });
    pair.run_until([&] { return written.has_value(); });
    REQUIRE(written);
    REQUIRE_FALSE(*written);
}

std::string client_reads(TlsPair& pair, std::optional<error_code>& outcome) {
    std::array<char, 256> bytes{};
    std::size_t n = 0;
    outcome.reset();
    pair.client->async_read_some(asio::buffer(bytes), [&](error_code ec, std::size_t got) {
        outcome = ec;
        n = got;
    });
    pair.run_until([&] { return outcome.has_value(); });
    REQUIRE(outcome);
    return std::string(bytes.data(), n);
}

int tickets_seen = 0;  // by the client context of the test that counts them

TEST_CASE("a TLS 1.3 server's ticket leaves with its first response, which a close_notify joins") {
    TlsPair pair;
    REQUIRE(SSL_version(pair.server->native_handle()) == TLS1_3_VERSION);
    bg::Socket& socket = pair.server->next_layer();
    // Nothing after the handshake on its own: the ticket is held for the first response.
    // (Checked at once: the kernel sends a held segment by itself at its retransmission
    // timeout, 200 ms or more.) A read's wait leaves it held: the client needs no ticket to send
    // its request.
    CHECK(unsent_bytes(socket) > 0);
    CHECK_FALSE(bg::input_waiting(pair.client->next_layer().native_handle()));
    TlsPair::Read request;
    pair.start_read(request);
    CHECK(unsent_bytes(socket) > 0);
    const std::uint32_t before = data_segments_out(socket);

    // The last response before a close is held until the close_notify pushes it out.
    pair.server->hold_until_close();
    const std::string_view response = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    server_writes(pair, response);
    CHECK(unsent_bytes(socket) > 0);
    std::optional<error_code> shut;
    pair.server->async_shutdown([&](error_code ec) { shut = ec; });  // sends, then waits
    CHECK(unsent_bytes(socket) == 0);
    // Ticket, response and close_notify: one segment.
    CHECK(data_segments_out(socket) - before == 1);

    std::optional<error_code> read;
    CHECK(client_reads(pair, read) == response);
    CHECK_FALSE(*read);
    // The client has the ticket: its session can be resumed.
    CHECK(SSL_SESSION_is_resumable(SSL_get0_session(pair.client->native_handle())) == 1);
    client_reads(pair, read);
    CHECK(*read == asio::error::eof);  // the close_notify
}

TEST_CASE("a full TLS 1.3 handshake's two tickets leave with the first response, in its segment") {
    TlsPair pair(false);
    SSL_CTX* client = pair.client_context.native_handle();
    SSL_CTX_set_session_cache_mode(client, SSL_SESS_CACHE_CLIENT);
    tickets_seen = 0;
    SSL_CTX_sess_set_new_cb(client, [](SSL*, SSL_SESSION*) {
        ++tickets_seen;
        return 0;  // not kept
    });
    pair.shake_hands();
    bg::Socket& socket = pair.server->next_layer();
    CHECK(unsent_bytes(socket) > 0);  // both tickets, held
    const std::uint32_t before = data_segments_out(socket);
    server_writes(pair, "first");
    CHECK(unsent_bytes(socket) == 0);  // pushed by the response's record
    CHECK(data_segments_out(socket) - before == 1);
    std::optional<error_code> read;
    CHECK(client_reads(pair, read) == "first");
    CHECK(tickets_seen == SSL_CTX_get_num_tickets(pair.server_context.native_handle()));
    CHECK(tickets_seen == 2);  // OpenSSL's default
}

TEST_CASE("a TLS server's later responses carry no ticket and are not held") {
    TlsPair pair;
    for (const std::string_view response : {"first", "second"}) {
        server_writes(pair, response);
        CHECK(unsent_bytes(pair.server->next_layer()) == 0);
        std::optional<error_code> read;
        CHECK(client_reads(pair, read) == response);
        CHECK_FALSE(*read);
    }
}

TEST_CASE("a TLS read's wait pushes out what a hold until close kept") {
    TlsPair pair;
    server_writes(pair, "first");
    pair.server->hold_until_close();
    server_writes(pair, "last");
    CHECK(unsent_bytes(pair.server->next_layer()) > 0);
    TlsPair::Read read;
    pair.start_read(read);  // no close came: the wait is for the client
    CHECK(unsent_bytes(pair.server->next_layer()) == 0);
    server_writes(pair, "after");  // and the hold is over
    CHECK(unsent_bytes(pair.server->next_layer()) == 0);
}

TEST_CASE("TLS bytes that came while no read waited are read at once") {
    TlsPair pair;
    pair.client_sends("first");
    CHECK(pair.read_now() == "first");
    pair.client_sends("second");
    pair.settle();  // the poller sees them
    CHECK(pair.read_now() == "second");
    pair.client_sends("third");  // and before the poller has looked
    CHECK(pair.read_now() == "third");
}

TEST_CASE("a close_notify sent with the last TLS bytes ends the next read") {
    TlsPair pair;
    pair.client_sends("last");
    pair.client->send_close_notify();
    pair.client->next_layer().shutdown(tcp::socket::shutdown_send);
    CHECK(pair.read_now() == "last");
    TlsPair::Read end;
    pair.start_read(end);
    pair.run_until([&] { return end.ec.has_value(); });
    REQUIRE(end.ec);
    CHECK(*end.ec == asio::error::eof);
}

TEST_CASE("an end without close_notify after TLS bytes is found by a read that continues") {
    TlsPair pair;
    pair.client_sends("part of a message");
    pair.client->next_layer().shutdown(tcp::socket::shutdown_send);
    pair.settle();
    CHECK(pair.read_now() == "part of a message");
    // As a body's reader does (socket_drain.hpp): the mark forgotten, the read tries at once.
    bg::forget_drained(pair.server->next_layer());
    TlsPair::Read end;
    pair.start_read(end);
    pair.run_until([&] { return end.ec.has_value(); });
    REQUIRE(end.ec);
    CHECK(*end.ec == asio::ssl::error::stream_truncated);
}

TEST_CASE(
    "a close_notify read with the last TLS bytes ends the next read though the FIN came first") {
    TlsPair pair;
    pair.client_sends("last");
    pair.client->send_close_notify();
    pair.client->next_layer().shutdown(tcp::socket::shutdown_send);
    // All of it (bytes, close_notify, FIN) is in the socket before the server reads: the read
    // that takes the bytes and the alert is the poller's last word on this socket.
    pair.settle();
    CHECK(pair.read_now() == "last");
    TlsPair::Read end;
    pair.start_read(end);
    pair.run_until([&] { return end.ec.has_value(); }, std::chrono::milliseconds(500));
    REQUIRE(end.ec);
    CHECK(*end.ec == asio::error::eof);
}

TEST_CASE("TLS on a closed socket touches no descriptor, though its number was given again") {
    TlsPair pair;
    const int number = pair.server->next_layer().native_handle();
    std::array<int, 2> other{};  // (made first: neither end may take the number itself)
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, other.data()) == 0);
    pair.server->next_layer().close();
    // Another connection gets the number, as the next accept of a busy worker would.
    REQUIRE(::dup2(other[0], number) == number);
    ::close(other[0]);

    pair.server->send_close_notify();
    std::optional<error_code> wrote;
    pair.server->async_write_some(asio::buffer(std::string_view("response")),
                                  [&](error_code ec, std::size_t) { wrote = ec; });
    TlsPair::Read read;
    pair.start_read(read);
    std::optional<error_code> shut;
    pair.server->async_shutdown([&](error_code ec) { shut = ec; });
    pair.run_until([&] { return wrote && read.ec && shut; });
    REQUIRE(wrote);
    REQUIRE(read.ec);
    REQUIRE(shut);
    CHECK(*wrote == asio::error::bad_descriptor);
    CHECK(*read.ec == asio::error::bad_descriptor);
    CHECK(*shut == asio::error::bad_descriptor);

    std::array<char, 64> got{};
    CHECK(::recv(other[1], got.data(), got.size(), MSG_DONTWAIT) < 0);  // nothing was written
    CHECK(::send(other[1], "x", 1, MSG_NOSIGNAL) == 1);
    CHECK(::recv(number, got.data(), got.size(), MSG_DONTWAIT) == 1);  // nothing was read
    ::close(number);
    ::close(other[1]);
}

TEST_CASE("in a handshake's try, the read after the socket emptied and our flight makes no recv") {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) == 0);
    struct Closer {
        int* fds;
        ~Closer() {
            ::close(fds[0]);  // (the SSL's BIO does not own it)
            ::close(fds[1]);
        }
    } closer{fds};
    std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_method()), SSL_CTX_free);
    std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
    REQUIRE(bg::attach_socket_bio(ssl.get(), fds[0]));
    BIO* bio = SSL_get_rbio(ssl.get());
    std::array<char, 64> buffer{};
    std::size_t n = 0;
    const auto peer_sends = [&](std::string_view bytes) {
        REQUIRE(::send(fds[1], bytes.data(), bytes.size(), 0) ==
                static_cast<ssize_t>(bytes.size()));
    };
    const auto read = [&] {
        n = 0;
        return BIO_read_ex(bio, buffer.data(), buffer.size(), &n) == 1
                   ? std::string(buffer.data(), n)
                   : std::string();
    };
    const auto send_flight = [&] { REQUIRE(BIO_write_ex(bio, "flight", 6, &n) == 1); };

    bg::begin_socket_bio_try(ssl.get(), bg::BioTry::handshake);
    peer_sends("hello");
    CHECK(read() == "hello");  // fewer bytes than asked: the socket is empty
    send_flight();
    peer_sends("answer");  // came meanwhile: the poller's event is still to be collected
    CHECK(read().empty());
    CHECK(BIO_should_retry(bio));
    CHECK(BIO_should_read(bio));
    CHECK(bg::socket_bio_drained(ssl.get()));

    // The next try (after the poller's event) reads it.
    bg::begin_socket_bio_try(ssl.get(), bg::BioTry::handshake);
    CHECK(read() == "answer");
    // With no write since, a read after the socket emptied makes its recv (a record's rest).
    peer_sends("rest");
    CHECK(read() == "rest");

    // Emptied by a recv that found nothing: the same.
    bg::begin_socket_bio_try(ssl.get(), bg::BioTry::handshake);
    CHECK(read().empty());
    send_flight();
    peer_sends("late");
    CHECK(read().empty());
    // A write before the emptying read does not count.
    bg::begin_socket_bio_try(ssl.get(), bg::BioTry::handshake);
    send_flight();
    CHECK(read() == "late");
    peer_sends("more");
    CHECK(read() == "more");

    // In a try that is not a handshake's (a KeyUpdate answered in SSL_read, a close_notify),
    // every read makes its recv.
    bg::begin_socket_bio_try(ssl.get(), bg::BioTry::other);
    peer_sends("request");
    CHECK(read() == "request");
    send_flight();
    peer_sends("next");
    CHECK(read() == "next");
}
