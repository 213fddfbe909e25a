#pragma once
// BodyRelay: a message body moved from one stream to another one piece at a time (memory
// bounded by a read whatever the body's size; each piece written from the read buffer it
// arrived in, never copied: body_view.hpp), re-framed as chunks when the leg asks, within
// the [limits] on chunked framing and the [timeouts] on pauses and on the minimum rate; and the
// tunnel after a 101. Used by the client session for both directions. Worker thread only.

#include <array>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/stream_traits.hpp>
#include <boost/beast/http/parser.hpp>
#include <chrono>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "body_cork.hpp"
#include "body_view.hpp"
#include "chunk_framing.hpp"
#include "connection_deadline.hpp"
#include "exchange_outcome.hpp"
#include "exchange_state.hpp"
#include "field_arena.hpp"
#include "io_types.hpp"
#include "message_head.hpp"
#include "upstream_stream.hpp"
#include "worker_stats.hpp"

namespace bg {

// One direction of a body relay: where it reads, where it writes, and their time limits.
struct BodyLeg {
    std::chrono::milliseconds read_limit;
    ConnectionDeadline::Target read_side;
    std::chrono::milliseconds write_limit;
    ConnectionDeadline::Target write_side;
    bool chunked;                // frame the pieces as chunks on the way out
    std::uint64_t min_rate = 0;  // bytes/s the body must average once read_limit has passed
};

// Finds the next piece of a message body: in what `buffer` already holds, else after one read
// from `from`. Success means progress (possibly only a chunk header); the parser's BodyView
// (reset by the caller) then says where the piece lies in `buffer`, if one was found. While
// `cork` holds bytes, the source is first read at once (see BodyCork).
template <class AsyncStream, bool isRequest>
Task<boost::system::error_code> read_body_piece(
    AsyncStream& from, boost::beast::flat_buffer& buffer,
    boost::beast::http::parser<isRequest, BodyView, FieldAllocator<char>>& parser,
    std::size_t read_size, ChunkHeaderGuard& chunks, BodyCork& cork) {
    for (;;) {
        if (buffer.size() > 0) {
            boost::system::error_code ec;
            chunks.input_end = static_cast<const char*>(buffer.data().data()) + buffer.size();
            const std::size_t used = parser.put(buffer.data(), ec);
            buffer.consume(used);
            if (ec == boost::beast::http::error::need_buffer) {
                co_return boost::system::error_code{};  // a piece, and more behind it
            }
            if (ec && ec != boost::beast::http::error::need_more) {
                co_return ec;
            }
            if (used > 0 || parser.is_done()) {
                co_return boost::system::error_code{};
            }
            // The parser waits for the end of a chunk-size line or of the trailers.
            if (parser.chunked()) {
                chunks.over = check_pending_chunk_framing(
                    {static_cast<const char*>(buffer.data().data()), buffer.size()},
                    chunks.max_chunk_line, chunks.max_trailer);
                if (chunks.over != ChunkFraming::within_limits) {
                    co_return boost::beast::http::error::buffer_overflow;
                }
            }
        }
        if (parser.is_done()) {
            co_return boost::system::error_code{};
        }
        if (buffer.size() + read_size > buffer.max_size()) {
            co_return boost::beast::http::error::buffer_overflow;  // bounded above: not reached in
                                                                   // practice
        }
        const auto into = buffer.prepare(read_size);
        if (cork.holding()) {
            boost::system::error_code failed;
            if (const std::size_t got = cork.read_at_once(into, failed); got > 0) {
                buffer.commit(got);
                continue;
            }
            if (failed) {
                co_return failed;
            }
        }
        auto [ec, n] = co_await from.async_read_some(into, nothrow);
        if (ec == boost::asio::error::eof) {
            boost::system::error_code end;
            parser.put_eof(end);  // completes a read-until-close body, else partial_message
            co_return end;
        }
        if (ec) {
            co_return ec;
        }
        buffer.commit(n);
    }
}

// What one piece of body puts on the wire: the head if still unsent, the data (framed as a
// chunk when the leg asks), and the last chunk after the end. Not to be moved: the buffers
// point into it.
struct OutgoingPiece {
    OutgoingPiece(const std::string& head, const char* data, std::size_t n, bool chunked,
                  bool ended) {
        if (!head.empty()) {
            buffers[count++] = boost::asio::buffer(head);
        }
        if (n > 0) {
            if (chunked) {
                prefix.emplace(n);
                buffers[count++] = prefix->buffer();
            }
            buffers[count++] = boost::asio::buffer(data, n);
            if (chunked) {
                buffers[count++] = boost::asio::buffer(chunk_end);
            }
        }
        if (ended && chunked) {
            buffers[count++] = boost::asio::buffer(last_chunk);
        }
    }
    OutgoingPiece(const OutgoingPiece&) = delete;
    OutgoingPiece& operator=(const OutgoingPiece&) = delete;

    std::optional<ChunkPrefix> prefix;
    std::array<boost::asio::const_buffer, 5> buffers{};
    std::size_t count = 0;
};

class BodyRelay {
  public:
    BodyRelay(ConnectionDeadline& deadline, WorkerStats& stats, std::size_t read_size)
        : deadline_(deadline), stats_(stats), read_size_(read_size) {}

    // Streams a message body from `from` to `to` one piece at a time (bounded memory whatever
    // its size), each piece written from `in`, where it was read, before the next read. A head
    // still in ex.head leaves with the first piece; chunk framing is added when the leg says so.
    template <class From, class To, bool isRequest>
    Task<BodyEnd> relay(
        ExchangeState& ex, From& from, boost::beast::flat_buffer& in,
        boost::beast::http::parser<isRequest, BodyView, FieldAllocator<char>>& parser, To& to,
        const BodyLeg& leg, std::uint64_t& bytes, bool& started) {
        auto& body = parser.get().body();
        BodyCork cork(BodyCork::plain(from), BodyCork::plain(to));  // pushes at the end
        const auto body_start = std::chrono::steady_clock::now();
        std::uint64_t moved = 0;
        bool ended = false;  // the end of the body has been written
        while (!ended) {
            std::size_t n = 0;
            if (!parser.is_done()) {
                body = {};
                const auto read_limit = body_read_limit(leg, body_start, moved);
                if (read_limit <= std::chrono::milliseconds::zero()) {
                    ex.body_error = "request body slower than min_request_body_rate";
                    stats_.breach(LimitBreach::body_rate);
                    co_return BodyEnd::read_timeout;
                }
                deadline_.arm(read_limit, leg.read_side);
                ChunkHeaderGuard& chunks = isRequest ? ex.request_chunks : ex.response_chunks;
                const boost::system::error_code ec =
                    co_await read_body_piece(from, in, parser, read_size_, chunks, cork);
                if (ec == boost::beast::http::error::body_limit) {
                    co_return BodyEnd::too_large;
                }
                if (ec == boost::beast::http::error::buffer_overflow || is_framing_error(ec)) {
                    note_framing_error(ex, ec, chunks.over, isRequest);
                    co_return BodyEnd::malformed;
                }
                if (ec) {
                    if (deadline_.expired()) {
                        if (read_limit < leg.read_limit) {  // the rate bound was the nearer one
                            ex.body_error = "request body slower than min_request_body_rate";
                            stats_.breach(LimitBreach::body_rate);
                        } else {
                            ex.body_error = "body stalled past its time limit";
                        }
                        co_return BodyEnd::read_timeout;
                    }
                    co_return BodyEnd::read_failed;
                }
                started = true;
                n = body.size;
                bytes += n;
                moved += n;
                if (n == 0 && !parser.is_done()) {
                    continue;  // a chunk header, no data yet
                }
            }
            ended = parser.is_done();
            const OutgoingPiece out(ex.head, body.data, n, leg.chunked, ended);
            if (out.count == 0) {
                continue;
            }
            deadline_.arm(leg.write_limit, leg.write_side);
            const std::span<const boost::asio::const_buffer> pieces(out.buffers.data(), out.count);
            const bool hold = cork.may_hold(n == read_size_, !ended);
            boost::system::error_code ec;
            if (hold) {
                HeldSend held(cork.sink());
                std::tie(ec, std::ignore) =
                    co_await boost::asio::async_write(held, pieces, nothrow);
            } else {
                std::tie(ec, std::ignore) = co_await write_pieces(ex, to, pieces);
            }
            cork.sent(hold);
            if (ec) {
                co_return deadline_.expired() ? BodyEnd::write_timeout : BodyEnd::write_failed;
            }
            ex.head.clear();
        }
        co_return BodyEnd::done;
    }

    // The time the next body read may take: the leg's pause limit, and with a minimum rate
    // no later than read_limit after the start plus one second per min_rate bytes received
    // (mod_reqtimeout's MinRate). Zero or less: the body is already too slow.
    static std::chrono::milliseconds body_read_limit(const BodyLeg& leg,
                                                     std::chrono::steady_clock::time_point start,
                                                     std::uint64_t received) {
        if (leg.min_rate == 0) {
            return leg.read_limit;
        }
        const auto earned = std::chrono::milliseconds(received * 1000 / leg.min_rate);
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            start + leg.read_limit + earned - std::chrono::steady_clock::now());
        return std::min(leg.read_limit, left);
    }

    void note_framing_error(ExchangeState& ex, const boost::system::error_code& ec,
                            ChunkFraming over, bool request) {
        if (over == ChunkFraming::chunk_line_too_long) {
            ex.body_error = "chunk-size line too long";
            stats_.breach(request ? LimitBreach::chunk_line : LimitBreach::response_chunk_line);
        } else if (over == ChunkFraming::trailer_too_long) {
            ex.body_error = "trailer section too large";
            stats_.breach(request ? LimitBreach::trailer : LimitBreach::response_trailer);
        } else {
            ex.body_error = "invalid chunked body: " + ec.message();
        }
    }

    // One write of several pieces: gathered into one sendmsg on a socket; copied into one
    // buffer first on TLS, whose streams write one piece (one record) per call otherwise.
    // Not a coroutine itself: it hands back the write to await (one frame less per piece).
    // `pieces` must outlive the await (the caller's frame holds them).
    template <class To>
    Task<std::tuple<boost::system::error_code, std::size_t>> write_pieces(
        ExchangeState& ex, To& to, std::span<const boost::asio::const_buffer> pieces) {
        bool over_tls = is_tls_stream<To>::value;
        if constexpr (std::is_same_v<To, UpstreamStream>) {
            over_tls = to.tls() != nullptr;
        }
        if (over_tls && pieces.size() > 1) {
            ex.gathered.clear();
            for (const auto& piece : pieces) {
                ex.gathered.append(static_cast<const char*>(piece.data()), piece.size());
            }
            return boost::asio::async_write(to, boost::asio::buffer(ex.gathered), nothrow);
        }
        return boost::asio::async_write(to, pieces, nothrow);
    }

    // After a 101: bytes flow both ways until either side closes, or both go idle.
    template <class Client>
    Task<void> tunnel(ExchangeState& ex, Client& client_, UpstreamStream& upstream,
                      std::chrono::milliseconds idle) {
        using namespace boost::asio::experimental::awaitable_operators;
        WorkerStats::add(stats_.upgrades);
        WorkerStats::add(stats_.upgraded_open);
        // Bytes that arrived behind the headers belong to the tunnel.
        // (No co_await inside && or ||: GCC 12 mishandles temporaries there.)
        bool ok = co_await flush(upstream, ex.buffer, idle);
        if (ok) {
            ok = co_await flush(client_, ex.upstream_buffer, idle);
        }
        if (ok) {
            co_await (pump(client_, upstream, piece(ex.request_body), idle) &&
                      pump(upstream, client_, piece(ex.response_body), idle));
        }
        WorkerStats::sub(stats_.upgraded_open);
        boost::system::error_code ignored;
        upstream.socket().close(ignored);
    }

    template <class To>
    Task<bool> flush(To& to, boost::beast::flat_buffer& pending, std::chrono::milliseconds idle) {
        if (pending.size() == 0) {
            co_return true;
        }
        deadline_.arm(idle, ConnectionDeadline::both);
        auto [ec, n] = co_await boost::asio::async_write(to, pending.data(), nothrow);
        pending.consume(pending.size());
        co_return !ec;
    }

    // Each read or write in either direction pushes the shared idle deadline on.
    template <class From, class To>
    Task<void> pump(From& from, To& to, std::vector<char>& scratch,
                    std::chrono::milliseconds idle) {
        for (;;) {
            deadline_.arm(idle, ConnectionDeadline::both);
            auto [ec, n] = co_await from.async_read_some(boost::asio::buffer(scratch), nothrow);
            if (ec == boost::asio::error::eof) {
                boost::system::error_code ignored;
                boost::beast::get_lowest_layer(to).shutdown(
                    boost::asio::ip::tcp::socket::shutdown_send, ignored);
                co_return;
            }
            if (ec) {
                break;
            }
            deadline_.arm(idle, ConnectionDeadline::both);
            auto [wec, wn] = co_await boost::asio::async_write(
                to, boost::asio::buffer(scratch.data(), n), nothrow);
            if (wec) {
                break;
            }
        }
        // An error on one side ends both directions.
        boost::system::error_code ignored;
        boost::beast::get_lowest_layer(from).close(ignored);
        boost::beast::get_lowest_layer(to).close(ignored);
    }

    // A scratch buffer for a tunnel or a lingering close, taken when first needed (kept with the
    // exchange state).
    std::vector<char>& piece(std::vector<char>& buffer) const {
        if (buffer.empty()) {
            buffer.resize(read_size_);
        }
        return buffer;
    }

  private:
    ConnectionDeadline& deadline_;
    WorkerStats& stats_;
    std::size_t read_size_;
};

}  // namespace bg
