#include <doctest/doctest.h>

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/field.hpp>
#include <string>
#include <vector>

#include "flat_fields.hpp"
#include "proxied_message.hpp"

namespace http = boost::beast::http;

namespace {

std::vector<std::string> lines(const bg::FlatFields& fields) {
    std::vector<std::string> out;
    for (const auto& field : fields) {
        out.push_back(std::string(field.name_string()) + ": " + std::string(field.value()));
    }
    return out;
}

}  // namespace

TEST_CASE("fields keep arrival order, repeated names included, and are found case-blind") {
    bg::FlatFields f;
    f.insert("Set-Cookie", "a=1");
    f.insert(http::field::content_type, "text/plain");
    f.insert("set-cookie", "b=2");
    f.insert("X-Custom", "x");
    CHECK(lines(f) == std::vector<std::string>{"Set-Cookie: a=1", "Content-Type: text/plain",
                                               "set-cookie: b=2", "X-Custom: x"});
    CHECK(f.count(http::field::set_cookie) == 2);
    CHECK(f.count("SET-COOKIE") == 2);
    CHECK(f["x-CUSTOM"] == "x");
    CHECK(f.find("X-Other") == f.end());
    CHECK(f[http::field::content_type] == "text/plain");
    CHECK(f.find("x-custom")->name() == http::field::unknown);
}

TEST_CASE("set replaces every field of the name; erase takes them all or one") {
    bg::FlatFields f;
    f.insert("Via", "1.1 a");
    f.insert("X-A", "1");
    f.insert("via", "1.1 b");
    f.set(http::field::via, "1.1 c");
    CHECK(lines(f) == std::vector<std::string>{"X-A: 1", "Via: 1.1 c"});
    f.insert("x-a", "2");
    CHECK(f.erase("X-A") == 2);
    CHECK(lines(f) == std::vector<std::string>{"Via: 1.1 c"});
    f.insert("X-B", "b");
    f.insert("X-C", "c");
    for (auto it = f.begin(); it != f.end();) {
        it = it->name_string() == "X-B" ? f.erase(it) : it + 1;
    }
    CHECK(lines(f) == std::vector<std::string>{"Via: 1.1 c", "X-C: c"});
    // A value taken from a field that set() replaces stays readable (the arena keeps it).
    f.set("X-C", f["X-C"]);
    CHECK(f["X-C"] == "c");
}

TEST_CASE("many fields outgrow the first array and keep their values") {
    bg::FieldArena arena;
    bg::FlatFields f(&arena);
    for (int i = 0; i < 100; ++i) {
        f.insert("X-N" + std::to_string(i), std::string(static_cast<std::size_t>(i), 'v'));
    }
    REQUIRE(f.size() == 100);
    for (int i = 0; i < 100; ++i) {
        CHECK(f["x-n" + std::to_string(i)].size() == static_cast<std::size_t>(i));
    }
}

TEST_CASE("the framing fields mean what they mean to Beast's basic_fields") {
    http::response<bg::BodyView, bg::FlatFields> r;
    r.version(11);
    CHECK(r.keep_alive());
    r.set(http::field::connection, "Upgrade, close");
    CHECK(!r.keep_alive());
    r.keep_alive(true);
    CHECK(r[http::field::connection] == "Upgrade");
    r.version(10);
    CHECK(!r.keep_alive());
    r.keep_alive(true);
    CHECK(r[http::field::connection] == "Upgrade, keep-alive");
    CHECK(r.keep_alive());

    CHECK(!r.chunked());
    r.set(http::field::transfer_encoding, "gzip");
    r.chunked(true);
    CHECK(r[http::field::transfer_encoding] == "gzip, chunked");
    CHECK(r.chunked());
    r.chunked(true);
    CHECK(r[http::field::transfer_encoding] == "gzip, chunked");
    r.chunked(false);
    CHECK(r[http::field::transfer_encoding] == "gzip");
    r.set(http::field::transfer_encoding, "chunked");
    r.chunked(false);
    CHECK(r.count(http::field::transfer_encoding) == 0);

    r.content_length(1234567890123);
    CHECK(r[http::field::content_length] == "1234567890123");
    r.content_length(boost::none);
    CHECK(r.count(http::field::content_length) == 0);
    r.reason("Fine");
    CHECK(r.reason() == "Fine");
}

TEST_CASE("copies and moves carry the fields, the start line's strings and the arena") {
    bg::RequestHeader a;
    a.method_string("PURGE");
    a.target("/x?y");
    a.insert("Host", "h.example");
    bg::RequestHeader copied = a;
    bg::RequestHeader moved = std::move(a);
    for (const auto* h : {&copied, &moved}) {
        CHECK(h->method_string() == "PURGE");
        CHECK(h->target() == "/x?y");
        CHECK((*h)[http::field::host] == "h.example");
    }
    moved.insert("X-More", "m");  // the moved-to object owns the arena now
    CHECK(moved["X-More"] == "m");
}

TEST_CASE("the parser fills flat fields in the exchange's arena, with Beast's checks") {
    bg::FieldArena arena;
    bg::RequestParser parser(&arena);
    parser.eager(false);
    const std::string head =
        "OPTIONS * HTTP/1.1\r\nHost: a\r\nX-Dup: 1\r\nAccept: */*\r\nx-dup: 2\r\n\r\n";
    boost::system::error_code ec;
    parser.put(boost::asio::buffer(head), ec);
    REQUIRE(!ec);
    const auto& request = parser.get();
    CHECK(request.method() == http::verb::options);
    CHECK(request.target() == "*");
    CHECK(lines(request.base()) ==
          std::vector<std::string>{"Host: a", "X-Dup: 1", "Accept: */*", "x-dup: 2"});

    bg::ResponseParser bad(&arena);
    bad.put(boost::asio::buffer(std::string("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n")), ec);
    CHECK(ec);
}
