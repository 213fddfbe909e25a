#pragma once
// BodyRelay: a message body moved from one stream to another one piece at a time (memory
// bounded by a read whatever the body's size; each piece written from the read buffer it
// arrived in, never copied: body_view.hpp), re-framed as chunks when the leg asks, within
// the [limits] on chunked framing and the [timeouts] on pauses and on the minimum rate; and the
// tunnel after a 101. Used by the client session for both directions. Worker thread only.
//
// A large body of known length between two plain sockets is spliced instead (body_splice.cpp):
// its bytes go socket to pipe to socket inside the kernel and are never copied through the
// proxy, under the same time limits and minimum rate.

#include <sys/socket.h>

#include <array>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/stream_traits.hpp>
#include <boost/beast/http/parser.hpp>
#include <cerrno>
#include <chrono>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "body_cork.hpp"
#include "body_view.hpp"
#include "bulk_read_budget.hpp"
#include "chunk_framing.hpp"
#include "coarse_clock.hpp"
#include "connection_deadline.hpp"
#include "exchange_outcome.hpp"
#include "exchange_state.hpp"
#include "field_arena.hpp"
#include "io_types.hpp"
#include "message_head.hpp"
#include "socket_drain.hpp"
#include "splice_pipes.hpp"
#include "tls_stream.hpp"
#include "upstream_stream.hpp"
#include "worker_stats.hpp"
#include "write_at_once.hpp"

namespace bg {

// One direction of a body relay: where it reads, where it writes, and their time limits.
struct BodyLeg {
    std::chrono::milliseconds read_limit;
    ConnectionDeadline::Target read_side;
    std::chrono::milliseconds write_limit;
    ConnectionDeadline::Target write_side;
    bool chunked;                // frame the pieces as chunks on the way out
    std::uint64_t min_rate = 0;  // bytes/s the body must average once read_limit has passed
    // The sink is closed once the body ends: its last piece waits in the kernel for the FIN
    // (under TLS the close_notify) and leaves with it in one segment (see send_piece).
    bool sink_closes = false;
};

// When bodies are read in bulk-sized pieces: the worker's budget, at most `most` at once, each
// read growing to `read_size` bytes.
struct BulkReadSettings {
    BulkReadBudget* budget = nullptr;
    std::size_t most = 0;
    std::size_t read_size = 0;
};

// When bodies are spliced: the worker's pipes, at most `max_pipes` of them in use, each of
// `pipe_size` bytes, for what is left of a body of at least `min_body` bytes (0: never).
struct SpliceSettings {
    SplicePipes* pipes = nullptr;
    std::uint64_t min_body = 0;
    std::size_t max_pipes = 0;
    std::size_t pipe_size = 0;
};

// The TLS session under a client or backend stream, if it has one.
inline TlsStream* tls_of(TlsStream& stream) {
    return &stream;
}
inline TlsStream* tls_of(UpstreamStream& stream) {
    return stream.tls();
}
inline TlsStream* tls_of(Socket&) {
    return nullptr;
}

// How a read at once (read_at_once) ended.
enum class AtOnce {
    read,        // bytes, or an error (an end of stream included)
    wait_input,  // a TLS session's try found the socket empty: wait for the poller's next event
    read_async,  // nothing yet, or left to the asynchronous read (an end, a closed socket)
};

// What `from` has at hand, read into `into` without waiting: asio posts a read's completion even
// when its first try found bytes, a pass of the worker's event loop per piece. On `read_async`
// the caller's asynchronous read waits for the poller with no try of its own when the plain
// socket was found empty (marked drained here: socket_drain.hpp), or finds the end or the closed
// socket this left to it. On `wait_input` the TLS session's try marked the socket drained; its
// own read would try again first (OpenSSL may hold part of a record), so the caller waits for
// input (ReadinessWait) and reads at once again.
template <class AsyncStream>
AtOnce read_at_once(AsyncStream& from, BodyCork& cork, boost::asio::mutable_buffer into,
                    boost::system::error_code& ec, std::size_t& n) {
    if (cork.reads_at_once()) {
        bool empty = false;
        n = cork.read_at_once(into, ec, empty);
        if (n > 0 || ec) {
            return AtOnce::read;
        }
        if (empty) {
            assume_drained(cork.source());
        } else {
            forget_drained(cork.source());  // its end (0): the read's to find
        }
        return AtOnce::read_async;
    }
    // A read that continues a message tries at once (socket_drain.hpp).
    forget_drained(boost::beast::get_lowest_layer(from));
    TlsStream* tls = tls_of(from);
    // (A socket a deadline closed: OpenSSL's BIO would read a descriptor number that may be
    // another connection's by now. The asynchronous read reports it.)
    if (tls == nullptr || tls->closed()) {
        return AtOnce::read_async;
    }
    const TlsStream::Attempt attempt = tls->try_read(into);
    if (attempt.wait == TlsStream::Wait::read) {
        return AtOnce::wait_input;
    }
    if (attempt.wait == TlsStream::Wait::write) {
        return AtOnce::read_async;  // (renegotiation is off: not expected)
    }
    ec = attempt.ec;
    n = attempt.bytes;
    return AtOnce::read;
}

// Finds the next piece of a message body: in what `buffer` already holds, else after one read
// from `from`. Success means progress (possibly only a chunk header); the parser's BodyView
// (reset by the caller) then says where the piece lies in `buffer`, if one was found. The source
// is first read at once (read_at_once). `buffered_only`: no read; would_block when the
// next piece is not all in `buffer`. `run` (BodyRelay's bytes read since the worker's loop last
// had a turn) counts what is read at once (read_at_once), and is reset when the read waits.
// `filled`: a read took all `read_size` bytes it asked for (the source had more at hand).
template <class AsyncStream, bool isRequest>
Task<boost::system::error_code> read_body_piece(AsyncStream& from,
                                                boost::beast::flat_buffer& buffer,
                                                FlatParser<isRequest>& parser,
                                                std::size_t read_size, ChunkHeaderGuard& chunks,
                                                BodyCork& cork, bool buffered_only,
                                                std::size_t& run, bool& filled) {
    for (;;) {
        if (buffer.size() > 0) {
            boost::system::error_code ec;
            chunks.input_begin = static_cast<char*>(buffer.data().data());
            chunks.input_end = chunks.input_begin + buffer.size();
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
        if (buffered_only) {
            co_return boost::asio::error::would_block;
        }
        if (buffer.size() + read_size > buffer.max_size()) {
            co_return boost::beast::http::error::buffer_overflow;  // bounded above: not reached in
                                                                   // practice
        }
        const auto into = buffer.prepare(read_size);
        boost::system::error_code ec;
        std::size_t n = 0;
        const AtOnce at_once = read_at_once(from, cork, into, ec, n);
        if (at_once == AtOnce::read) {
            // A read counts as a full one at least: one of many tiny TLS records decrypts each.
            run += std::max(n, read_size);
        } else if (at_once == AtOnce::wait_input) {
            run = 0;  // the wait's completion is posted: a turn of the loop for the others
            Socket& socket = boost::beast::get_lowest_layer(from);
            assume_drained(socket);
            auto [waited, none] = co_await socket.async_receive(
                ReadinessWait(), boost::asio::socket_base::message_peek, nothrow);
            if (waited) {
                co_return waited;  // a deadline's close, as the read would report it
            }
            continue;
        } else {
            run = 0;  // the read's completion is posted: a turn of the loop for the others
            std::tie(ec, n) = co_await from.async_read_some(draining(into), nothrow);
        }
        if (ec == boost::asio::error::eof) {
            boost::system::error_code end;
            parser.put_eof(end);  // completes a read-until-close body, else partial_message
            co_return end;
        }
        if (ec) {
            co_return ec;
        }
        filled = n == into.size();
        buffer.commit(n);
    }
}

// What one piece of body puts on the wire: the head if still unsent, the small pieces gathered
// before it (already framed), the data (framed as a chunk when the leg asks), and the last
// chunk after the end. Not to be moved: the buffers point into it.
struct OutgoingPiece {
    OutgoingPiece(const std::string& head, const std::string& gathered, const char* data,
                  std::size_t n, bool chunked, bool ended) {
        if (!head.empty()) {
            buffers[count++] = boost::asio::buffer(head);
        }
        if (!gathered.empty()) {
            buffers[count++] = boost::asio::buffer(gathered);
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
    std::array<boost::asio::const_buffer, 6> buffers{};
    std::size_t count = 0;
};

// What a tunnel first reads with, each way: WebSocket messages are mostly small, and a tunnel
// idles for up to tunnel_idle (an hour). A read that fills it grows it to buffer_size.
inline constexpr std::size_t tunnel_first_read = 2048;

class BodyRelay {
  public:
    // `read_size`: a body's reads (server.buffer_size), until they grow (`bulk`). `burst`: bytes
    // read in a row, when neither side makes the relay wait, before the worker's other
    // connections get a turn (server.body_burst).
    BodyRelay(ConnectionDeadline& deadline, WorkerStats& stats, std::size_t read_size,
              BulkReadSettings bulk, std::size_t burst, SpliceSettings splice)
        : deadline_(deadline),
          stats_(stats),
          read_size_(read_size),
          bulk_(bulk),
          burst_(burst),
          splice_(splice) {}

    // Streams a message body from `from` to `to` one piece at a time (bounded memory whatever
    // its size), each piece written from `in`, where it was read, before the next read. A head
    // still in out.head leaves with the first piece; chunk framing is added when the leg says so.
    template <class From, class To, bool isRequest>
    Task<BodyEnd> relay(ExchangeState& ex, OutgoingMessage& out, From& from,
                        boost::beast::flat_buffer& in, FlatParser<isRequest>& parser, To& to,
                        const BodyLeg& leg, std::uint64_t& bytes, bool& started) {
        auto& body = parser.get().body();
        BodyCork cork(BodyCork::plain(from), BodyCork::plain(to));  // pushes at the end
        BodyRateClock& clock = out.body_clock;
        clock.begin(CoarseClock::now());
        std::uint64_t moved = 0;
        bool ended = false;     // the end of the body has been written
        out.coalesced.clear();  // what an earlier relay gathered and never sent (it failed)
        run_ = 0;
        reading_ = read_size_;
        // When the body ends, its place in the worker's budget goes back, and a TLS client's
        // record buffer is allocated at one record's size again (one holding part of a record
        // then keeps its size until emptied: OpenSSL frees it only then).
        struct BulkEnd {
            BodyRelay& relay;
            TlsStream* client;
            ~BulkEnd() { relay.end_bulk(client); }
        } bulk_end{*this, std::is_same_v<From, TlsStream> ? tls_of(from) : nullptr};
        bool filled = false;  // the last read took all it asked for
        while (!ended) {
            if (filled) {
                read_more_at_once(from);
                filled = false;
            }
            if (const auto length = splice_length(out, from, in, parser, to, leg)) {
                SplicePipeLease pipe(*splice_.pipes, splice_.max_pipes, splice_.pipe_size);
                if (pipe) {
                    end_bulk(nullptr);  // the rest goes through the pipe, not these reads
                    cork.push();  // the splice may wait on the source first: nothing waits held
                    const BodyEnd end =
                        co_await splice(ex, out, *BodyCork::plain(from), *BodyCork::plain(to),
                                        *pipe, *length, leg, moved, bytes, started);
                    if (end == BodyEnd::done) {
                        account_spliced(parser, *length);
                        if constexpr (!isRequest) {
                            take_stray_bytes(*BodyCork::plain(from), in);
                        }
                    }
                    co_return end;
                }
            }
            std::size_t n = 0;
            if (!parser.is_done()) {
                body = {};
                const auto read_limit = body_read_limit(leg, clock, moved);
                if (read_limit <= std::chrono::milliseconds::zero()) {
                    co_return read_timed_out(ex, true);
                }
                deadline_.arm(read_limit, leg.read_side);
                ChunkHeaderGuard& chunks = isRequest ? ex.request_chunks : ex.response_chunks;
                const boost::system::error_code ec = co_await read_body_piece(
                    from, in, parser, reading_, chunks, cork, !out.coalesced.empty(), run_, filled);
                if (ec == boost::asio::error::would_block) {
                    // Nothing more at hand: what was gathered goes before a read waits.
                    const BodyEnd sent = co_await send_piece(out, to, cork, nullptr, 0, leg, false);
                    if (sent != BodyEnd::done) {
                        co_return sent;
                    }
                    continue;
                }
                if (ec == boost::beast::http::error::body_limit) {
                    co_return BodyEnd::too_large;
                }
                if (ec == boost::beast::http::error::buffer_overflow || is_framing_error(ec)) {
                    note_framing_error(ex, ec, chunks.over, isRequest);
                    co_return BodyEnd::malformed;
                }
                if (ec) {
                    if (deadline_.expired()) {
                        // The rate bound was the nearer one, or the pause limit.
                        co_return read_timed_out(ex, read_limit < leg.read_limit);
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
            if (gather_small_piece(out, body.data, n, in.size(), ended, leg.chunked)) {
                continue;  // more of the body is at hand: it goes in one write with this
            }
            const BodyEnd sent = co_await send_piece(out, to, cork, body.data, n, leg, ended);
            if (sent != BodyEnd::done) {
                co_return sent;
            }
        }
        co_return BodyEnd::done;
    }

    // The source had more at hand than the last read took: the next reads take twice as much,
    // up to the bulk read size, and a TLS client's record buffer grows with them, so that a
    // body flowing in bulk costs fewer, fuller reads and writes (one recv and one send per 64
    // KiB, where each 16 KiB record took its own). The body keeps the size until it ends,
    // within the worker's budget: shrinking it when the body waited for its source and brought
    // less than read_size_ cost 0.87x the uploads/s over TLS (a body in bulk does so too), and
    // on every short read 0.7x. A body that never fills its reads keeps read_size_. (A
    // backend connection keeps the record buffer it was made with: UpstreamStream.)
    template <class From>
    void read_more_at_once(From& from) {
        if (reading_ >= bulk_.read_size) {
            return;
        }
        if (reading_ == read_size_ && !bulk_.budget->take(bulk_.most)) {
            return;  // as many bodies as the budget allows are read in bulk already
        }
        reading_ = std::min(2 * reading_, bulk_.read_size);
        if constexpr (std::is_same_v<From, TlsStream>) {
            from.read_in_bulk(reading_);
        }
    }

    // Reads back to read_size_: the worker's budget has the place back, and a TLS client's
    // record buffer is allocated at one record's size again.
    void end_bulk(TlsStream* client) {
        if (reading_ <= read_size_) {
            return;
        }
        reading_ = read_size_;
        bulk_.budget->give();
        if (client != nullptr) {
            client->read_in_bulk(0);
        }
    }

    // A small piece with more of the body already at hand is copied behind the pieces before
    // it, to leave in one write with them: a body of tiny chunks (a hostile client's or
    // backend's) cost a send and a TCP segment per chunk, 100,000 sends for 600 KB of 1-byte
    // chunks. Bounded by a read's size; larger pieces are written from where they were read.
    bool gather_small_piece(OutgoingMessage& out, const char* data, std::size_t n,
                            std::size_t at_hand, bool ended, bool chunked) const {
        constexpr std::size_t small_piece = 2048;
        constexpr std::size_t framing = 24;  // a chunk's size line and its CRLF, at most
        if (ended || n == 0 || n > small_piece || at_hand == 0 ||
            out.coalesced.size() + n + framing > read_size_) {
            return false;
        }
        if (chunked) {
            const ChunkPrefix prefix(n);
            const auto line = prefix.buffer();
            out.coalesced.append(static_cast<const char*>(line.data()), line.size());
        }
        out.coalesced.append(data, n);
        if (chunked) {
            out.coalesced.append(chunk_end);
        }
        return true;
    }

    // Writes the head if still unsent, what was gathered (gather_small_piece), the piece of `n`
    // bytes at `data` (framed as a chunk when the leg asks), and the last chunk if the body
    // `ended`; in one write. The head stays in message.head until it is written: the caller
    // tells by it whether anything of the message went out.
    template <class To>
    Task<BodyEnd> send_piece(OutgoingMessage& message, To& to, BodyCork& cork, const char* data,
                             std::size_t n, const BodyLeg& leg, bool ended) {
        const OutgoingPiece out(message.head, message.coalesced, data, n, leg.chunked, ended);
        if (out.count == 0) {
            co_return BodyEnd::done;
        }
        deadline_.arm(leg.write_limit, leg.write_side);
        if (leg.min_rate > 0) {
            message.body_clock.writing(CoarseClock::now());
        }
        std::span<const boost::asio::const_buffer> pieces(out.buffers.data(), out.count);
        // The last piece before a close goes with MSG_MORE and is not pushed: the close's FIN
        // joins it (tcp_send_fin), one segment for the client to take instead of two. Under
        // TLS the close_notify pushes it out (TlsStream::hold_until_close).
        Socket* socket = BodyCork::plain(to);
        const bool with_fin = ended && leg.sink_closes && socket != nullptr;
        if constexpr (is_tls_stream<To>::value) {
            if (ended && leg.sink_closes) {
                to.hold_until_close();
            }
        }
        const bool hold =
            with_fin || (message.coalesced.empty() && cork.may_hold(n == reading_, !ended));
        boost::system::error_code ec;
        // In place first: on a plain socket one sendmsg; over TLS record by record, small
        // pieces packed into one (TlsStream::gather).
        const std::size_t sent = socket != nullptr
                                     ? write_at_once(*socket, pieces, ec, hold ? MSG_MORE : 0)
                                     : write_at_once(to, pieces, ec);
        decltype(out.buffers) rest;
        pieces = unwritten(pieces, sent, rest);
        if (ec || pieces.empty()) {
            // All of it went at once (or the connection is gone): no wait. With more of the
            // body to come, whose reads may not wait either (bytes already at hand, BodyCork's
            // read at once), the worker's other connections get a turn once burst_ bytes were
            // read this way: else a fast backend's body to a fast client held the worker for
            // all of it (a review). Counted as read, not as written: a body of tiny chunks
            // with long extensions writes a few bytes per 16 KiB read. Not after every piece: a
            // turn is a pass of the event loop, and the bodies relayed in turn go out in
            // smaller segments; one per 16 KiB piece cost 1 MiB responses over TLS 1.31x
            // HAProxy's CPU, against 0.84x with 256 KiB.
            if (!ec && !ended && run_ >= burst_) {
                run_ = 0;
                co_await boost::asio::post(to.get_executor(), nothrow);
            }
        } else if (hold) {
            run_ = 0;  // (an asynchronous write's completion is posted)
            HeldSend held(cork.sink());
            std::tie(ec, std::ignore) = co_await boost::asio::async_write(held, pieces, nothrow);
        } else {
            run_ = 0;
            std::tie(ec, std::ignore) = co_await write_pieces(message, to, pieces);
        }
        cork.sent(hold && !with_fin);
        if (leg.min_rate > 0) {
            message.body_clock.written(CoarseClock::now());
        }
        if (ec) {
            co_return deadline_.expired() ? BodyEnd::write_timeout : BodyEnd::write_failed;
        }
        message.head.clear();
        message.coalesced.clear();
        co_return BodyEnd::done;
    }

    // The time the next body read may take: the leg's pause limit, and with a minimum rate
    // no later than read_limit after the start plus one second per min_rate bytes received
    // (mod_reqtimeout's MinRate), the start moved on by the waits to write (BodyRateClock).
    // Zero or less: the body is already too slow.
    static std::chrono::milliseconds body_read_limit(const BodyLeg& leg, const BodyRateClock& clock,
                                                     std::uint64_t received) {
        if (leg.min_rate == 0) {
            return leg.read_limit;
        }
        const auto earned = std::chrono::milliseconds(received * 1000 / leg.min_rate);
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            clock.start() + leg.read_limit + earned - CoarseClock::now());
        return std::min(leg.read_limit, left);
    }

    BodyEnd read_timed_out(ExchangeState& ex, bool under_min_rate) {
        if (under_min_rate) {
            ex.body_error = "request body slower than min_request_body_rate";
            stats_.breach(LimitBreach::body_rate);
        } else {
            ex.body_error = "body stalled past its time limit";
        }
        return BodyEnd::read_timeout;
    }

    // How much of the body to splice: what is left of it, when it is that large, has a known
    // length, goes out as it came (no chunk framing), nothing of it or of the head waits in the
    // proxy's buffers, and both sides are plain sockets.
    template <class From, class To, class Parser>
    std::optional<std::uint64_t> splice_length(const OutgoingMessage& out, From& from,
                                               const boost::beast::flat_buffer& in,
                                               const Parser& parser, To& to,
                                               const BodyLeg& leg) const {
        if (splice_.min_body == 0 || leg.chunked || in.size() > 0 || !out.head.empty() ||
            !out.coalesced.empty() || parser.is_done() || parser.chunked() ||
            BodyCork::plain(from) == nullptr || BodyCork::plain(to) == nullptr) {
            return std::nullopt;
        }
        const auto left = parser.content_length_remaining();
        if (!left || *left < splice_.min_body) {
            return std::nullopt;
        }
        return *left;
    }

    // The rest of a body, `length` bytes, moved from `from` to `to` through `pipe` inside the
    // kernel (body_splice.cpp). `moved`, `bytes` and `started` count as in relay(), and the
    // rate's time on out.body_clock.
    Task<BodyEnd> splice(ExchangeState& ex, OutgoingMessage& out, Socket& from, Socket& to,
                         SplicePipe& pipe, std::uint64_t length, const BodyLeg& leg,
                         std::uint64_t& moved, std::uint64_t& bytes, bool& started);

    // Bytes a backend sent past a spliced response's end are read into `in`, where they keep
    // the connection from being pooled, as a copied body's last read would have taken them
    // there: left in the socket, they would be read as the response to the next request sent
    // on it (a response desync).
    void take_stray_bytes(Socket& from, boost::beast::flat_buffer& in);

    // A spliced body's bytes never went through the parser: it is told they passed (`length`
    // zero bytes, which BodyView only points at), and so knows the message ended.
    template <class Parser>
    static void account_spliced(Parser& parser, std::uint64_t length) {
        static const std::array<char, 65536> zeros{};
        auto& body = parser.get().body();
        while (length > 0) {
            body = {};
            boost::system::error_code ec;
            const std::size_t n = parser.put(
                boost::asio::buffer(zeros.data(), std::min<std::uint64_t>(length, zeros.size())),
                ec);
            if (ec || n == 0) {
                break;
            }
            length -= n;
        }
        body = {};
    }

    void note_framing_error(ExchangeState& ex, const boost::system::error_code& ec,
                            ChunkFraming over, bool request) {
        if (over == ChunkFraming::chunk_line_too_long) {
            ex.body_error = "chunk-size line too long";
            stats_.breach(request ? LimitBreach::chunk_line : LimitBreach::response_chunk_line);
        } else if (over == ChunkFraming::bare_lf) {
            ex.body_error = "invalid chunked body: a bare CR or LF";
        } else if (over == ChunkFraming::control_byte) {
            ex.body_error = "invalid chunked body: a control byte or line end in a chunk extension";
        } else if (over == ChunkFraming::trailer_too_long) {
            ex.body_error = "trailer section too large";
            stats_.breach(request ? LimitBreach::trailer : LimitBreach::response_trailer);
        } else {
            ex.body_error = "invalid chunked body: " + ec.message();
        }
    }

    // Over TLS, several pieces copied into one buffer: each asynchronous write_some of a
    // TlsStream takes one record, so the pieces' write takes as few loop turns as records.
    // The buffer lives until the next call.
    std::span<const boost::asio::const_buffer> one_piece_for_tls(
        OutgoingMessage& out, std::span<const boost::asio::const_buffer> pieces) {
        if (pieces.size() <= 1) {
            return pieces;
        }
        out.gathered.clear();
        for (const auto& piece : pieces) {
            out.gathered.append(static_cast<const char*>(piece.data()), piece.size());
        }
        gathered_ = boost::asio::buffer(out.gathered);
        return {&gathered_, 1};
    }

    // One write of several pieces: gathered into one sendmsg on a socket, into one buffer on
    // TLS. Not a coroutine itself: it hands back the write (deferred) to await in the caller's
    // frame. `pieces` must outlive the await (the caller's frame holds them).
    template <class To>
    auto write_pieces(OutgoingMessage& out, To& to,
                      std::span<const boost::asio::const_buffer> pieces) {
        if (tls_of(to) != nullptr) {
            pieces = one_piece_for_tls(out, pieces);
        }
        return boost::asio::async_write(to, pieces, nothrow);
    }

    // After a 101: bytes flow both ways until either side closes, or both go idle for `idle`;
    // once one side has ended its half, for `half_closed`.
    template <class Client>
    Task<void> tunnel(ExchangeState& ex, Client& client_, UpstreamStream& upstream,
                      std::chrono::milliseconds idle, std::chrono::milliseconds half_closed) {
        using namespace boost::asio::experimental::awaitable_operators;
        WorkerStats::add(stats_.upgrades);
        WorkerStats::add(stats_.upgraded_open);
        // Bytes that arrived behind the headers belong to the tunnel.
        // (No co_await inside && or ||: GCC 12 mishandles temporaries there.)
        bool ok = co_await flush(upstream, ex.buffer, idle, ex.record.bytes_in);
        if (ok) {
            ok = co_await flush(client_, ex.upstream_buffer, idle, ex.record.bytes_out);
        }
        if (ok) {
            // An idle tunnel (a chat's WebSocket) lives for tunnel_idle: it keeps nothing the
            // heads needed, and reads with a small buffer that grows once a read fills it.
            ex.drop_messages();
            TunnelLimit limit{idle, half_closed};
            co_await (pump(client_, upstream, ex.request_body, limit, ex.record.bytes_in) &&
                      pump(upstream, client_, ex.response_body, limit, ex.record.bytes_out));
        }
        WorkerStats::sub(stats_.upgraded_open);
        boost::system::error_code ignored;
        upstream.socket().close(ignored);
    }

    template <class To>
    Task<bool> flush(To& to, boost::beast::flat_buffer& pending, std::chrono::milliseconds idle,
                     std::uint64_t& bytes) {
        if (pending.size() == 0) {
            co_return true;
        }
        deadline_.arm(idle, ConnectionDeadline::both);
        auto [ec, n] = co_await boost::asio::async_write(to, pending.data(), nothrow);
        pending.consume(pending.size());
        bytes += n;
        co_return !ec;
    }

    // How long a tunnel may idle: shared by its two directions, shorter once one has ended.
    struct TunnelLimit {
        std::chrono::milliseconds idle;
        std::chrono::milliseconds half_closed;
    };

    // Each read or write in either direction pushes the shared idle deadline on. `bytes` counts
    // what went through, for the access log.
    template <class From, class To>
    Task<void> pump(From& from, To& to, std::vector<char>& scratch, TunnelLimit& limit,
                    std::uint64_t& bytes) {
        const bool plain = tls_of(from) == nullptr;
        // A small buffer to begin with, that grows once a read fills it. On a plain socket none
        // while idle: it is read without waiting, and when nothing is there its buffer goes
        // back and it waits for bytes with none, taking one of the size the last bytes needed
        // when they come. (Under TLS, bytes may wait decrypted above the socket: that read
        // keeps its buffer.)
        const std::size_t first = std::min<std::size_t>(read_size_, tunnel_first_read);
        std::size_t wanted = first;
        std::vector<char>().swap(scratch);  // the memory a scratch buffer had before goes back
        for (;;) {
            deadline_.arm(limit.idle, ConnectionDeadline::both);
            boost::system::error_code ec;
            std::size_t n = 0;
            if (scratch.empty()) {
                scratch.resize(wanted);
            }
            if (plain) {
                auto& socket = boost::beast::get_lowest_layer(from);
                const ssize_t got =
                    ::recv(socket.native_handle(), scratch.data(), scratch.size(), MSG_DONTWAIT);
                if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                    std::vector<char>().swap(scratch);
                    // The recv found it empty: the poller's next event, with no epoll_ctl
                    // (socket_drain.hpp).
                    assume_drained(socket);
                    auto [wec, none] = co_await socket.async_receive(
                        ReadinessWait(), boost::asio::socket_base::message_peek, nothrow);
                    if (wec) {
                        break;
                    }
                    continue;
                }
                if (got < 0 && errno == EINTR) {
                    continue;
                }
                ec = got < 0    ? boost::system::error_code(errno, boost::system::system_category())
                     : got == 0 ? boost::system::error_code(boost::asio::error::eof)
                                : boost::system::error_code();
                n = got > 0 ? static_cast<std::size_t>(got) : 0;
            } else {
                forget_drained(boost::beast::get_lowest_layer(from));  // socket_drain.hpp
                std::tie(ec, n) =
                    co_await from.async_read_some(boost::asio::buffer(scratch), nothrow);
            }
            if (ec == boost::asio::error::eof) {
                // The end passed on as it came: under TLS a close_notify before the FIN, so the
                // other side can tell an end from a cut (RFC 8446 6.1); a TLS client's end
                // without one (read as an end, tls_context.cpp) goes on as a FIN alone.
                bool said_so = true;
                if constexpr (is_tls_stream<From>::value) {
                    said_so = from.ended_by_close_notify();
                }
                if constexpr (is_tls_stream<To>::value) {
                    if (said_so) {
                        to.send_close_notify();
                    }
                } else if constexpr (std::is_same_v<To, UpstreamStream>) {
                    if (TlsStream* tls = to.tls(); tls != nullptr && said_so) {
                        tls->send_close_notify();
                    }
                }
                boost::system::error_code ignored;
                boost::beast::get_lowest_layer(to).shutdown(
                    boost::asio::ip::tcp::socket::shutdown_send, ignored);
                // The other direction, waiting now, may idle only half_closed from here.
                limit.idle = std::min(limit.idle, limit.half_closed);
                deadline_.arm(limit.idle, ConnectionDeadline::both);
                co_return;
            }
            if (ec) {
                break;
            }
            deadline_.arm(limit.idle, ConnectionDeadline::both);
            auto [wec, wn] = co_await boost::asio::async_write(
                to, boost::asio::buffer(scratch.data(), n), nothrow);
            bytes += wn;
            if (wec) {
                break;
            }
            if (n == scratch.size()) {
                wanted = read_size_;  // bytes in bulk: full-size reads from now on
                scratch.resize(wanted);
            } else if (n <= first) {
                wanted = first;  // small messages again
            }
        }
        // An error on one side ends both directions.
        boost::system::error_code ignored;
        boost::beast::get_lowest_layer(from).close(ignored);
        boost::beast::get_lowest_layer(to).close(ignored);
    }

    // A scratch buffer for a lingering close, taken when first needed (kept with the exchange
    // state).
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
    BulkReadSettings bulk_;
    std::size_t reading_ = read_size_;  // this relay's read size, grown by read_more_at_once
    std::size_t burst_;
    SpliceSettings splice_;
    boost::asio::const_buffer gathered_;  // one_piece_for_tls's buffer, until awaited
    // Bytes of a body read at once since the relay last gave the worker's loop a turn (a post,
    // or a read or write that went to asio, whose completion is posted).
    std::size_t run_ = 0;
};

}  // namespace bg
