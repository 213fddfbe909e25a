#pragma once
// What fuzz_request and fuzz_response share: how a peer's bytes arrive (Arrivals), and one
// side of the client session's message path as a synchronous copy (MessageReader): a buffer
// bounded as take_exchange() bounds it, read in the pieces Arrivals allows, a Beast parser over
// it, and body_relay.hpp's loop (read_body_piece, then each piece written, re-chunked when the
// leg asks), with the same limits.

#include <algorithm>
#include <boost/asio/buffer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "body_view.hpp"
#include "chunk_framing.hpp"
#include "config.hpp"
#include "field_arena.hpp"
#include "fuzz_check.hpp"
#include "message_head.hpp"

namespace bg::fuzz {

// How a peer's bytes arrive: bits 0-4 of the pattern the largest read in units (0: whatever
// the buffer offers), bits 6-7 the unit (1, 4, 16, 64), bit 5 varying sizes.
class Arrivals {
  public:
    Arrivals(std::string_view bytes, std::uint8_t pattern)
        : bytes_(bytes), pattern_(pattern), state_(pattern) {}

    // One read into `into`; 0 when the peer has closed.
    std::size_t read(boost::asio::mutable_buffer into) {
        const std::size_t n = std::min({next_size(), into.size(), bytes_.size() - at_});
        std::memcpy(into.data(), bytes_.data() + at_, n);
        at_ += n;
        return n;
    }
    std::size_t delivered() const { return at_; }
    std::string_view rest() const { return bytes_.substr(at_); }

  private:
    std::size_t next_size() {
        const std::size_t unit = std::size_t{1} << (2 * (pattern_ >> 6));
        const std::size_t most = (pattern_ & 0x1f) * unit;
        if (most == 0) {
            return bytes_.size();
        }
        if ((pattern_ & 0x20) == 0) {
            return most;
        }
        state_ = state_ * 1103515245u + 12345u;
        return 1 + (state_ >> 16) % most;
    }

    std::string_view bytes_;
    std::size_t at_ = 0;
    std::uint8_t pattern_;
    std::uint32_t state_;
};

template <bool isRequest>
class MessageReader {
  protected:
    using error_code = boost::system::error_code;
    using Parser = bg::FlatParser<isRequest>;

    // `max_head`: max_request_header or max_response_header.
    MessageReader(const bg::Limits& limits, Arrivals& peer, std::size_t max_head)
        : limits_(limits),
          peer_(peer),
          buffer_(std::max(max_head, limits.max_chunk_line + limits.max_trailer) +
                  2 * read_chunk()) {}

    std::size_t read_chunk() const { return std::max<std::size_t>(4096, limits_.buffer_size); }

    std::size_t read_room() const {
        const std::size_t room = buffer_.capacity() - buffer_.size();
        return room >= 1024 ? room : read_chunk();
    }

    // One read from the peer into buffer_ (the session's prepare() throws past max_size).
    bool read_into_buffer(std::size_t size) {
        boost::asio::mutable_buffer into;
        try {
            into = buffer_.prepare(size);
        } catch (const std::length_error&) {
            fail("a read buffer outgrew its bound (flat_buffer::prepare threw)");
        }
        const std::size_t n = peer_.read(into);
        buffer_.commit(n);
        return n > 0;
    }

    // BodyRelay::relay(): appends what goes out (head_ first, then each piece, framed as
    // chunks when `chunked`) to `out` and the body as read to `body`; false when the body was
    // cut short, malformed or over a limit.
    bool relay_body(std::string& out, std::string& body_read, bool chunked) {
        auto& body = parser_->get().body();
        bool ended = false;
        while (!ended) {
            std::size_t n = 0;
            if (!parser_->is_done()) {
                body = {};
                if (read_body_piece()) {
                    return false;
                }
                n = body.size;
                body_read.append(body.data, n);
                if (n == 0 && !parser_->is_done()) {
                    continue;
                }
            }
            ended = parser_->is_done();
            out += head_;
            head_.clear();
            if (n > 0) {
                if (chunked) {
                    const bg::ChunkPrefix prefix(n);
                    out.append(static_cast<const char*>(prefix.buffer().data()),
                               prefix.buffer().size());
                }
                out.append(body.data, n);
                if (chunked) {
                    out.append(bg::chunk_end);
                }
            }
            if (ended && chunked) {
                out.append(bg::last_chunk);
            }
        }
        return true;
    }

    // read_body_piece() of body_relay.hpp.
    error_code read_body_piece() {
        namespace http = boost::beast::http;
        for (;;) {
            if (buffer_.size() > 0) {
                error_code ec;
                chunks_.input_begin = static_cast<char*>(buffer_.data().data());
                chunks_.input_end = chunks_.input_begin + buffer_.size();
                const std::size_t used = parser_->put(buffer_.data(), ec);
                buffer_.consume(used);
                if (ec == http::error::need_buffer) {
                    return {};
                }
                if (ec && ec != http::error::need_more) {
                    return ec;
                }
                if (used > 0 || parser_->is_done()) {
                    return {};
                }
                if (parser_->chunked()) {
                    chunks_.over = bg::check_pending_chunk_framing(
                        {static_cast<const char*>(buffer_.data().data()), buffer_.size()},
                        chunks_.max_chunk_line, chunks_.max_trailer);
                    if (chunks_.over != bg::ChunkFraming::within_limits) {
                        return http::error::buffer_overflow;
                    }
                }
            }
            if (parser_->is_done()) {
                return {};
            }
            if (buffer_.size() + read_chunk() > buffer_.max_size()) {
                return http::error::buffer_overflow;
            }
            if (!read_into_buffer(read_chunk())) {
                error_code end;
                parser_->put_eof(end);
                return end;
            }
        }
    }

    const bg::Limits& limits_;
    Arrivals& peer_;
    boost::beast::flat_buffer buffer_;
    std::string head_;
    bg::FieldArena arena_;  // parser_'s fields, as an exchange's (ExchangeState::new_request())
    std::optional<Parser> parser_;

    // A parser for the next message: the last one's fields go, as in the session.
    Parser& new_parser() {
        parser_.reset();
        arena_.reset();
        return parser_.emplace(&arena_);
    }
    bg::ChunkHeaderGuard chunks_;
};

}  // namespace bg::fuzz
