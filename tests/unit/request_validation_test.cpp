#include <doctest/doctest.h>

#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>

#include <random>
#include <string>

#include "request_validation.hpp"

namespace http = boost::beast::http;

namespace {

bg::RawHeaderVerdict verdict(std::string_view bytes) {
    return bg::scan_raw_header(bytes, {64, 256, 100, 16384}).verdict;
}

// Parses a header the way the session does and returns `check`'s answer on it.
std::string parsed_answer(std::string_view header,
                          std::string_view (*check)(const bg::RequestHeader&)) {
    bg::RequestParser parser;
    parser.eager(false);
    parser.body_limit(boost::none);  // as the session's: bodies stream, any length
    boost::system::error_code ec;
    parser.put(boost::asio::buffer(header.data(), header.size()), ec);
    if (ec && ec != http::error::need_buffer) {
        return "parser: " + ec.message();
    }
    return std::string(check(parser.get().base()));
}

std::string problem(std::string_view header) {
    return parsed_answer(header, bg::framing_problem);
}

std::string unimplemented(std::string_view header) {
    return parsed_answer(header, bg::unimplemented_coding);
}

// scan_raw_header's meaning, one byte at a time: at each position the bounds first, then the
// byte. The real one reads a line at a time and must agree with this on every input.
bg::RawHeaderScan byte_by_byte_scan(std::string_view bytes, const bg::HeaderLimits& limits) {
    using bg::RawHeaderVerdict;
    std::size_t line_start = 0;
    std::size_t fields = 0;
    bool in_request_line = true;
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        const char c = bytes[i];
        if (in_request_line && i >= limits.max_start_line + 2) {  // its CRLF not counted
            return {RawHeaderVerdict::request_line_too_long};
        }
        if (i >= limits.max_header) {
            return {RawHeaderVerdict::header_too_long};
        }
        if (!in_request_line && i - line_start >= limits.max_field_size + 2) {
            return {RawHeaderVerdict::field_too_long};
        }
        if (c == '\0') {
            return {RawHeaderVerdict::nul_byte};
        }
        if (c == '\n') {
            if (i == 0 || bytes[i - 1] != '\r') {
                return {RawHeaderVerdict::bare_lf};
            }
            if (i + 1 - line_start == 2 && !in_request_line) {
                return {RawHeaderVerdict::complete, i + 1};
            }
            if (!in_request_line && ++fields > limits.max_fields) {
                return {RawHeaderVerdict::too_many_fields};
            }
            in_request_line = false;
            line_start = i + 1;
            if (i + 1 < bytes.size() && (bytes[i + 1] == ' ' || bytes[i + 1] == '\t')) {
                return {RawHeaderVerdict::obs_fold};
            }
        } else if (c == '\r' && i + 1 < bytes.size() && bytes[i + 1] != '\n') {
            return {RawHeaderVerdict::bare_cr};
        }
    }
    return {RawHeaderVerdict::incomplete};
}

}  // namespace

TEST_CASE("the line-at-a-time scan agrees with a byte-by-byte reading on every input") {
    // Heads built from lines of a few kinds, with stray CR, LF, NUL and folds mixed in, cut at
    // every length, against bounds small enough for each to be reached.
    std::mt19937 random(20261202);
    const std::string pieces[] = {
        "GET / HTTP/1.1",     "\r\n", "Host: a", "X-Long: 0123456789", "\r", "\n",
        std::string(1, '\0'), " ",    "\t",      "\r\n\r\n",           "a"};
    const bg::HeaderLimits bounds[] = {
        {64, 256, 100, 16384}, {20, 40, 3, 12}, {8, 30, 2, 30}, {40, 20, 5, 10}, {16, 64, 4, 16}};
    int checked = 0;
    for (int round = 0; round < 3000; ++round) {
        std::string head;
        const int count = 1 + static_cast<int>(random() % 12);
        for (int i = 0; i < count; ++i) {
            head += pieces[random() % std::size(pieces)];
        }
        for (const auto& limits : bounds) {
            for (std::size_t cut = 0; cut <= head.size(); cut += 1 + random() % 3) {
                const std::string_view bytes(head.data(), cut);
                const auto expected = byte_by_byte_scan(bytes, limits);
                const auto got = bg::scan_raw_header(bytes, limits);
                if (got.verdict != expected.verdict || got.header_end != expected.header_end) {
                    INFO("input: " << std::string(bytes) << " limits " << limits.max_start_line
                                   << "/" << limits.max_header << "/" << limits.max_fields << "/"
                                   << limits.max_field_size);
                    CHECK(static_cast<int>(got.verdict) == static_cast<int>(expected.verdict));
                    CHECK(got.header_end == expected.header_end);
                }
                ++checked;
            }
        }
    }
    CHECK(checked > 50000);
}

TEST_CASE("a complete header is found with its length") {
    auto scan = bg::scan_raw_header("GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY", {64, 256, 100, 16384});
    CHECK(scan.verdict == bg::RawHeaderVerdict::complete);
    CHECK(scan.header_end == 27);
    CHECK(verdict("GET / HTTP/1.1\r\nHost: a\r\n") == bg::RawHeaderVerdict::incomplete);
}

TEST_CASE("bytes Beast would accept but a proxy must refuse") {
    CHECK(verdict("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n") == bg::RawHeaderVerdict::obs_fold);
    CHECK(verdict("GET / HTTP/1.1\r\n\tX: a\r\n\r\n") == bg::RawHeaderVerdict::obs_fold);
    CHECK(verdict(std::string_view("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", 27)) ==
          bg::RawHeaderVerdict::nul_byte);
    CHECK(verdict("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n") == bg::RawHeaderVerdict::bare_cr);
    CHECK(verdict("GET / HTTP/1.1\nX: a\r\n\r\n") == bg::RawHeaderVerdict::bare_lf);
}

TEST_CASE("limits: request line -> 414, whole header -> 431") {
    std::string long_line = "GET /" + std::string(100, 'a') + " HTTP/1.1\r\n\r\n";
    CHECK(verdict(long_line) == bg::RawHeaderVerdict::request_line_too_long);
    CHECK(verdict("GET /" + std::string(100, 'a')) == bg::RawHeaderVerdict::request_line_too_long);
    std::string many = "GET / HTTP/1.1\r\n";
    for (int i = 0; i < 30; ++i) {
        many += "X-A: 123456\r\n";
    }
    CHECK(verdict(many) == bg::RawHeaderVerdict::header_too_long);
}

TEST_CASE("the line bounds are the lines' lengths without their CRLF") {
    // max_request_line 8192: a request line of 8192 bytes passes, one of 8193 does not (one of
    // 8191 got a 414 when the bound counted the CRLF). Likewise a field line and max_field_size.
    const bg::HeaderLimits limits{8192, 65535, 100, 16384};
    const auto line = [](std::size_t length) {
        return "GET /" + std::string(length - 14, 'a') + " HTTP/1.1\r\n";
    };
    CHECK(line(8192).size() == 8194);
    CHECK(bg::scan_raw_header(line(8192) + "Host: a\r\n\r\n", limits).verdict ==
          bg::RawHeaderVerdict::complete);
    CHECK(bg::scan_raw_header(line(8193) + "Host: a\r\n\r\n", limits).verdict ==
          bg::RawHeaderVerdict::request_line_too_long);
    const auto field = [](std::size_t length) {
        return "X: " + std::string(length - 3, 'v') + "\r\n";
    };
    CHECK(bg::scan_raw_header("GET / HTTP/1.1\r\n" + field(16384) + "\r\n", limits).verdict ==
          bg::RawHeaderVerdict::complete);
    CHECK(bg::scan_raw_header("GET / HTTP/1.1\r\n" + field(16385) + "\r\n", limits).verdict ==
          bg::RawHeaderVerdict::field_too_long);
}

TEST_CASE("framing: a coding before the final chunked is not implemented (501)") {
    CHECK(
        unimplemented("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").empty());
    CHECK(
        unimplemented("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n").empty());
    CHECK(unimplemented("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n").empty());
    CHECK_FALSE(
        unimplemented("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip , chunked\r\n\r\n")
            .empty());
}

TEST_CASE("framing: ambiguous bodies are refused") {
    CHECK(problem("GET / HTTP/1.1\r\nHost: a\r\n\r\n").empty());
    CHECK(problem("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").empty());
    CHECK(problem("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").empty());
    CHECK_FALSE(problem("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
                        "Content-Length: 5\r\n\r\n")
                    .empty());
    // Its length known, a coding before chunked is no 400 but a 501 (unimplemented_coding).
    CHECK(
        problem("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").empty());
    CHECK_FALSE(
        problem("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").empty());
    CHECK_FALSE(problem("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n").empty());
    CHECK_FALSE(
        problem("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked, chunked\r\n\r\n")
            .empty());
    CHECK_FALSE(problem("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n")
                    .empty());
    CHECK_FALSE(problem("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n").empty());
    CHECK_FALSE(problem("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n").empty());
    CHECK_FALSE(problem("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").empty());
    // Up to 2^63 - 1, leading zeros aside; past it the body could not be counted to its end.
    CHECK(problem("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\n")
              .empty());
    CHECK(problem("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0009223372036854775807\r\n\r\n")
              .empty());
    CHECK(problem("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n") ==
          "Content-Length too large");
    CHECK(problem("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n") ==
          "Content-Length too large");
}

TEST_CASE("framing: Host rules") {
    CHECK(problem("GET / HTTP/1.1\r\n\r\n") == "missing Host");
    CHECK(problem("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == "more than one Host");
    CHECK(problem("GET / HTTP/1.1\r\nHost: a b\r\n\r\n") == "invalid Host");
    CHECK(problem("GET / HTTP/1.0\r\n\r\n").empty());
    CHECK(problem("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n").empty());
    // The plain fast path and the full grammar agree.
    CHECK(problem("GET / HTTP/1.1\r\nHost: api-2.example.com:8080\r\n\r\n").empty());
    CHECK(problem("GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n").empty());
    CHECK(problem("GET / HTTP/1.1\r\nHost: xn--bcher-kva.example\r\n\r\n").empty());
    CHECK(problem("GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n") == "invalid Host");
    CHECK(problem("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n") == "invalid Host");
    CHECK(problem("GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n") == "invalid Host");
    // No host at all (RFC 9110 4.2.1): empty, or a port alone.
    CHECK(problem("GET / HTTP/1.1\r\nHost:\r\n\r\n") == "invalid Host");
    CHECK(problem("GET / HTTP/1.1\r\nHost: :80\r\n\r\n") == "invalid Host");
    CHECK(problem("GET / HTTP/1.1\r\nHost: []:80\r\n\r\n") == "invalid Host");
}
