#include <doctest/doctest.h>

#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>

#include "request_validation.hpp"

namespace http = boost::beast::http;

namespace {

bg::RawHeaderVerdict verdict(std::string_view bytes) {
    return bg::scan_raw_header(bytes, {64, 256, 100, 16384}).verdict;
}

// Parses a header the way the session does and returns framing_problem's answer.
std::string problem(std::string_view header) {
    http::request_parser<http::empty_body> parser;
    parser.eager(false);
    boost::system::error_code ec;
    parser.put(boost::asio::buffer(header.data(), header.size()), ec);
    if (ec && ec != http::error::need_buffer) {
        return "parser: " + ec.message();
    }
    return std::string(bg::framing_problem(parser.get().base()));
}

}  // namespace

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

TEST_CASE("framing: ambiguous bodies are refused") {
    CHECK(problem("GET / HTTP/1.1\r\nHost: a\r\n\r\n").empty());
    CHECK(problem("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").empty());
    CHECK(problem("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").empty());
    CHECK_FALSE(problem("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
                        "Content-Length: 5\r\n\r\n")
                    .empty());
    CHECK_FALSE(
        problem("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").empty());
    CHECK_FALSE(problem("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n")
                    .empty());
    CHECK_FALSE(problem("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n").empty());
    CHECK_FALSE(problem("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n").empty());
    CHECK_FALSE(problem("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").empty());
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
}
