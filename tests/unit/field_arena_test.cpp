#include <doctest/doctest.h>

#include <boost/asio/buffer.hpp>
#include <cstdint>
#include <string>

#include "exchange_state.hpp"
#include "field_arena.hpp"

TEST_CASE("the arena hands out aligned, distinct memory and reuses its first block") {
    bg::FieldArena arena;
    auto* a = static_cast<char*>(arena.allocate(3));
    auto* b = static_cast<char*>(arena.allocate(40));
    CHECK(reinterpret_cast<std::uintptr_t>(a) % alignof(std::max_align_t) == 0);
    CHECK(reinterpret_cast<std::uintptr_t>(b) % alignof(std::max_align_t) == 0);
    CHECK(b >= a + 3);
    arena.reset();
    CHECK(arena.allocate(8) == a);  // the first block again, no allocation
    // A large head takes blocks of its own, freed at the reset.
    for (int i = 0; i < 100; ++i) {
        CHECK(arena.allocate(1000) != nullptr);
    }
    arena.reset();
    CHECK(arena.allocate(8) != nullptr);
}

TEST_CASE("an exchange's parsers keep their fields in its arena, request after request") {
    bg::ExchangeState ex;
    for (int round = 0; round < 3; ++round) {
        bg::RequestParser& parser = ex.new_request();
        parser.eager(false);
        parser.header_limit(65536);
        const std::string head =
            "GET /r" + std::to_string(round) +
            " HTTP/1.1\r\nHost: a.example\r\nX-Long: " + std::string(5000 * round, 'v') +
            "\r\nX-N: " + std::to_string(round) + "\r\n\r\n";
        boost::system::error_code ec;
        parser.put(boost::asio::buffer(head), ec);
        REQUIRE(!ec);
        REQUIRE(parser.is_header_done());
        const bg::Request& request = parser.get();
        CHECK(request.target() == "/r" + std::to_string(round));
        CHECK(request[boost::beast::http::field::host] == "a.example");
        CHECK(request["X-Long"].size() == static_cast<std::size_t>(5000 * round));
        CHECK(request["X-N"] == std::to_string(round));
        // Fields set afterwards (the forwarding ones) come from the arena too.
        bg::ResponseParser& response = ex.new_response();
        response.get().set("X-Forwarded-For", "10.0.0." + std::to_string(round));
        CHECK(response.get()["X-Forwarded-For"] == "10.0.0." + std::to_string(round));
    }
    ex.clear();
    CHECK(!ex.parser);
}

TEST_CASE("fields made outside an exchange use an arena of their own") {
    bg::Fields fields;
    fields.set("X-A", std::string(10000, 'a'));
    fields.erase("X-A");
    fields.set("X-B", "b");
    CHECK(fields["X-B"] == "b");
}
