#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "connection_slots.hpp"

TEST_CASE("a full house of control connections makes room by closing the one idle longest") {
    // Found by an outside probe: 64 idle or watching connections turned `bgctl rollback` away.
    bg::ConnectionSlots slots(3, 1);
    std::vector<std::string> closed;
    auto a = slots.take([&] { closed.push_back("a"); });
    auto b = slots.take([&] { closed.push_back("b"); });
    auto c = slots.take([&] { closed.push_back("c"); });
    REQUIRE(a);
    REQUIRE(c);
    bg::ConnectionSlots::busy(*a);
    bg::ConnectionSlots::idle(*a);  // a sent a command: idle again, since now
    auto d = slots.take([&] { closed.push_back("d"); });
    REQUIRE(d);
    CHECK(closed == std::vector<std::string>{"b"});  // idle since its start, before a's command
    CHECK(slots.size() == 3);
    slots.release(b);  // b's session ends after the close: no slot of anyone else's goes
    CHECK(slots.size() == 3);

    SUBCASE("watch streams have a bound of their own, and are never closed to make room") {
        CHECK(slots.watch(*c));
        CHECK_FALSE(slots.watch(*d));  // max_watchers = 1
        CHECK(d->state == bg::ConnectionSlots::Slot::State::idle);
        bg::ConnectionSlots::busy(*a);
        bg::ConnectionSlots::busy(*d);
        // Nothing idle: turned away, and nobody closed.
        CHECK_FALSE(slots.take([&] { closed.push_back("e"); }));
        CHECK(closed == std::vector<std::string>{"b"});
        slots.release(a);
        CHECK(slots.take([] {}));
    }
}
