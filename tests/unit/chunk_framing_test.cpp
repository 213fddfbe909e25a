#include <doctest/doctest.h>

#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <string>

#include "chunk_framing.hpp"

namespace {

namespace http = boost::beast::http;

// Parses `wire` (a whole chunked response) in one put(), as the body relay does, with the guard
// pointing at the bytes.
struct Parsed {
    boost::system::error_code ec;
    std::string body;
    bool keep_alive = false;
    bg::ChunkFraming over = bg::ChunkFraming::within_limits;
};

Parsed parse(std::string wire, std::size_t max_trailer = 1024) {
    http::response_parser<http::string_body> parser;
    bg::ChunkHeaderGuard guard{64, max_trailer};
    parser.on_chunk_header(guard);
    Parsed out;
    const std::size_t head = wire.find("\r\n\r\n") + 4;
    parser.put(boost::asio::buffer(wire.data(), head), out.ec);
    REQUIRE_FALSE(out.ec);
    // Piece by piece, as the body relay puts what its buffer holds.
    for (std::size_t at = head; !out.ec && !parser.is_done() && at < wire.size();) {
        guard.input_begin = wire.data() + at;
        guard.input_end = wire.data() + wire.size();
        at += parser.put(boost::asio::buffer(wire.data() + at, wire.size() - at), out.ec);
    }
    out.body = parser.get().body();
    out.keep_alive = parser.keep_alive();
    out.over = guard.over;
    return out;
}

const std::string chunked_head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

}  // namespace

TEST_CASE("framing fields in a trailer do not fail the message or end the connection") {
    for (const std::string trailer :
         {"Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n", "Connection: close\r\n",
          "X-Checksum: 1\r\ncontent-length: 99\r\nUpgrade: h2c\r\nProxy-Connection: close\r\n"}) {
        CAPTURE(trailer);
        const Parsed p = parse(chunked_head + "5\r\nhello\r\n0\r\n" + trailer + "\r\n");
        CHECK_FALSE(p.ec);
        CHECK(p.body == "hello");
        CHECK(p.keep_alive);
    }
}

TEST_CASE("a trailer over max_trailer or with a broken line still fails") {
    const Parsed big =
        parse(chunked_head + "0\r\nX-Pad: " + std::string(200, 'a') + "\r\n\r\n", 100);
    CHECK(big.ec == http::error::header_limit);
    CHECK(big.over == bg::ChunkFraming::trailer_too_long);
    CHECK(parse(chunked_head + "0\r\nContent-Length 5\r\n\r\n").ec);
    CHECK(parse(chunked_head + "0\r\nX-Ok: 1\r\n\r\n").ec == boost::system::error_code{});
}

TEST_CASE("a chunk-size line or trailer line ended by a bare LF is refused while still pending") {
    using bg::ChunkFraming;
    const auto check = [](std::string_view pending) {
        return bg::check_pending_chunk_framing(pending, 64, 1024);
    };
    CHECK(check("0\n\n") == ChunkFraming::bare_lf);
    CHECK(check("\r\n0\n") == ChunkFraming::bare_lf);  // after the previous chunk's CRLF
    CHECK(check("5;ext=1\n") == ChunkFraming::bare_lf);
    CHECK(check("0\r\nX: y\n") == ChunkFraming::bare_lf);  // in the trailer section
    CHECK(check("\r\n\n") == ChunkFraming::bare_lf);
    // Lines still open, or ended by CRLF, wait as before.
    CHECK(check("0") == ChunkFraming::within_limits);
    CHECK(check("\r\n1f") == ChunkFraming::within_limits);
    CHECK(check("0\r\nX: y\r\n") == ChunkFraming::within_limits);
    CHECK(check("0\r\nX: y\r") == ChunkFraming::within_limits);
    // A bare CR: refused too (an outside probe's trailer `\r\r\n` waited for client_body).
    CHECK(check("0\r\n\r\r\n") == ChunkFraming::bare_lf);
}

TEST_CASE("a chunk-size line whose quoted extension is still open at its CRLF is refused") {
    // Found by an outside probe: `5;a="x` then CRLF: Beast read on for the closing quote, and
    // the request (its backend connection too) waited client_body, 60 s, with no answer; a
    // backend's got a 504 after upstream_response, where both are malformed framing.
    using bg::ChunkFraming;
    const auto check = [](std::string_view pending) {
        return bg::check_pending_chunk_framing(pending, 64, 1024);
    };
    CHECK(check("5;a=\"x\r\nhello\r\n0\r\n\r\n") == ChunkFraming::control_byte);
    CHECK(check("\r\n0;a=\"x\\\"y\r\n") == ChunkFraming::control_byte);  // escaped quote
    CHECK(check("0;a=\"x\r\n") == ChunkFraming::control_byte);
    CHECK(check("0;a=\"x\\\"y\"\r\nX: 1\r\n") == ChunkFraming::within_limits);
    CHECK(check("5;a=\"x") == ChunkFraming::within_limits);  // the line still coming
}

TEST_CASE("a control byte in a chunk extension is refused when the line arrives whole") {
    // Found by an outside probe: with the line in one read, Beast took a bare LF inside a
    // quoted extension, which a front end ending lines at LF reads as the end of the line.
    using namespace std::string_literals;
    for (const std::string& line :
         {"2;a=\"\n0\n\nGET /x HTTP/1.1\n\n\""s, "2;a=\"\x01\""s, "2;a=\"\x7f\""s, "2;a=\"\0\""s}) {
        CAPTURE(line);
        const Parsed p = parse(chunked_head + line + "\r\nhi\r\n0\r\n\r\n");
        CHECK(p.ec == http::error::bad_chunk_extension);
        CHECK(p.over == bg::ChunkFraming::control_byte);
    }
    CHECK(parse(chunked_head + "2;a=\"\r\"\r\nhi\r\n0\r\n\r\n").ec);  // Beast's own refusal
    const Parsed last = parse(chunked_head + "2\r\nhi\r\n0;a=\"\n\"\r\n\r\n");
    CHECK(last.over == bg::ChunkFraming::control_byte);
    // A tab and obs-text are allowed in a quoted extension.
    CHECK_FALSE(parse(chunked_head + "2;a=\"x\ty\x80\"\r\nhi\r\n0\r\n\r\n").ec);
}

TEST_CASE("a trailer line broken by a bare CR or LF is refused when the section arrives whole") {
    for (const std::string trailer : {"X: a\nGET /x HTTP/1.1\r\n", "X: a\rb\r\n"}) {
        CAPTURE(trailer);
        const Parsed p = parse(chunked_head + "2\r\nhi\r\n0\r\n" + trailer + "\r\n");
        CHECK(p.ec);
        // The guard's own verdict, before Beast parses the section (Beast refuses these too:
        // the guard is a second line, whatever Beast comes to accept).
        CHECK(p.over == bg::ChunkFraming::bare_lf);
    }
}
