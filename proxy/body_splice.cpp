// BodyRelay::splice: the rest of a body socket to pipe to socket (splice(2)), never copied into
// the proxy. Both sockets are non-blocking, so each splice moves what is there at once; the
// relay waits on a socket only when it had nothing (the source) or took nothing (the sink),
// under the leg's time limits, as the copying relay does.

#include <fcntl.h>
#include <sys/socket.h>

#include <boost/asio/post.hpp>
#include <cerrno>

#include "body_relay.hpp"
#include "socket_drain.hpp"

namespace bg {

namespace {

bool would_block() {
    return errno == EAGAIN || errno == EWOULDBLOCK;
}

// splice() on a socket blocks unless the socket itself is non-blocking, whatever its flags say.
bool make_non_blocking(Socket& socket) {
    boost::system::error_code ec;
    if (!socket.native_non_blocking()) {
        socket.native_non_blocking(true, ec);
    }
    return !ec;
}

}  // namespace

Task<BodyEnd> BodyRelay::splice(ExchangeState& ex, OutgoingMessage& out, Socket& from, Socket& to,
                                SplicePipe& pipe, std::uint64_t length, const BodyLeg& leg,
                                std::uint64_t& moved, std::uint64_t& bytes, bool& started) {
    BodyRateClock& clock = out.body_clock;
    if (!make_non_blocking(from)) {
        co_return BodyEnd::read_failed;
    }
    if (!make_non_blocking(to)) {
        co_return BodyEnd::write_failed;
    }
    constexpr unsigned flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;
    // A socket the deadline closed while no wait was pending on it (the expiry came in the same
    // turn as its bytes, or during the post below) fails the next splice: that is the timeout's
    // doing, not the peer's (a 408 counted against the minimum rate, never a "client gone").
    const auto read_failed = [&] {
        if (deadline_.expired() && !from.is_open()) {
            return read_timed_out(ex, body_read_limit(leg, clock, moved) < leg.read_limit);
        }
        return BodyEnd::read_failed;
    };
    const auto write_failed = [&] {
        return deadline_.expired() && !to.is_open() ? BodyEnd::write_timeout
                                                    : BodyEnd::write_failed;
    };
    std::uint64_t left = length;  // not yet read from `from`
    while (left > 0 || pipe.held > 0) {
        bool source_empty = false;
        if (left > 0) {
            // At most what a pipe can take anyway: splice(2) refuses a length past SSIZE_MAX.
            const ssize_t n =
                ::splice(from.native_handle(), nullptr, pipe.write_end, nullptr,
                         static_cast<std::size_t>(std::min<std::uint64_t>(left, 1 << 30)), flags);
            if (n > 0) {
                left -= static_cast<std::uint64_t>(n);
                pipe.held += static_cast<std::size_t>(n);
                moved += static_cast<std::uint64_t>(n);
                bytes += static_cast<std::uint64_t>(n);
                started = true;
                WorkerStats::add(stats_.spliced_bytes, static_cast<std::uint64_t>(n));
                // The deadline is renewed by progress, as the copying relay's is before each
                // read and write, not only by waits: with bytes ready on both sides this loop
                // may never wait, and a stale deadline would cut a body that is moving.
                const auto read_limit = body_read_limit(leg, clock, moved);
                if (read_limit <= std::chrono::milliseconds::zero()) {
                    co_return read_timed_out(ex, true);
                }
                deadline_.arm(read_limit, leg.read_side);
            } else if (n == 0) {
                co_return BodyEnd::read_failed;  // the source closed before the body's end
            } else if (would_block()) {
                source_empty = pipe.held == 0;  // (with bytes held, the pipe may be full)
            } else if (errno != EINTR) {
                co_return read_failed();
            }
        }
        if (pipe.held > 0) {
            const ssize_t n =
                ::splice(pipe.read_end, nullptr, to.native_handle(), nullptr, pipe.held, flags);
            if (n > 0) {
                pipe.held -= static_cast<std::size_t>(n);
                deadline_.arm(leg.write_limit, leg.write_side);
                // Bytes at once on both sides could keep this loop going: let others run.
                co_await boost::asio::post(to.get_executor(), nothrow);
                continue;
            }
            if (n == 0 || (!would_block() && errno != EINTR)) {
                co_return write_failed();
            }
            deadline_.arm(leg.write_limit, leg.write_side);
            if (leg.min_rate > 0) {
                clock.writing(CoarseClock::now());
            }
            auto [ec] = co_await to.async_wait(Socket::wait_write, nothrow);
            if (leg.min_rate > 0) {
                clock.written(CoarseClock::now());
            }
            if (ec) {
                co_return write_failed();
            }
            continue;
        }
        if (source_empty) {
            const auto read_limit = body_read_limit(leg, clock, moved);
            if (read_limit <= std::chrono::milliseconds::zero()) {
                co_return read_timed_out(ex, true);
            }
            deadline_.arm(read_limit, leg.read_side);
            // The splice found the source empty: the poller's next event, with no epoll_ctl
            // (async_wait re-arms the registration each time: 8 per spliced MiB).
            assume_drained(from);
            auto [ec, none] =
                co_await from.async_receive(ReadinessWait(), Socket::message_peek, nothrow);
            if (ec) {
                if (deadline_.expired()) {
                    co_return read_timed_out(ex, read_limit < leg.read_limit);
                }
                co_return BodyEnd::read_failed;
            }
        }
    }
    co_return BodyEnd::done;
}

void BodyRelay::take_stray_bytes(Socket& from, boost::beast::flat_buffer& in) {
    const auto into = in.prepare(read_size_);
    const ssize_t n = ::recv(from.native_handle(), into.data(), into.size(), MSG_DONTWAIT);
    if (n > 0) {
        in.commit(static_cast<std::size_t>(n));
    } else if (n < 0 && would_block()) {
        // Found empty, with no end of stream behind it (recv would have returned 0): what the
        // reactor knows of it from now on, as after a short read (socket_drain.hpp). The pool's
        // watch of the idle connection then peeks nothing, and the next response's first read
        // waits for the poller instead of trying a recv at once: two recvs per spliced
        // response that found nothing.
        assume_drained(from);
    }
}

}  // namespace bg
