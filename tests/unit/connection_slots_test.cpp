#include <doctest/doctest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
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
    slots.idle(*a);  // a sent a command: idle again, since now
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

TEST_CASE("a newcomer finding every slot busy waits its turn instead of being turned away") {
    // Found by CI (ASan): 8 admin clients pipelining /metrics kept all 8 slots busy while their
    // answers were rendered, and a readiness probe arriving then was closed unanswered.
    namespace asio = boost::asio;
    asio::io_context io;
    bg::ConnectionSlots slots(2, 0);
    std::vector<std::string> closed;
    auto a = slots.take([&] { closed.push_back("a"); });
    auto b = slots.take([&] { closed.push_back("b"); });
    bg::ConnectionSlots::busy(*a);
    bg::ConnectionSlots::busy(*b);
    std::vector<std::string> got;
    std::vector<bg::ConnectionSlots::Handle> held;
    // (Arguments, not captures: a coroutine lambda's captures die with the lambda.)
    auto wait_turn = [](bg::ConnectionSlots& slots, std::vector<std::string>& closed,
                        std::vector<std::string>& got,
                        std::vector<bg::ConnectionSlots::Handle>& held, std::string name,
                        std::chrono::milliseconds patience) -> asio::awaitable<void> {
        // (Built outside the co_await: GCC 12 miscompiles temporaries there.)
        const std::function<void()> close = [&closed, name] { closed.push_back(name); };
        auto slot = co_await slots.take_in_turn(close, patience);
        got.push_back(name + (slot ? " in" : " away"));
        if (slot) {
            bg::ConnectionSlots::busy(*slot);  // its head is in at once
            held.push_back(slot);
        }
    };
    auto newcomer = [&](const char* name, std::chrono::milliseconds patience) {
        asio::co_spawn(io, wait_turn(slots, closed, got, held, name, patience), asio::detached);
    };
    newcomer("probe", std::chrono::seconds(5));
    newcomer("second", std::chrono::seconds(5));
    newcomer("third", std::chrono::seconds(5));  // as many waiting as there are slots: away
    io.poll();
    CHECK(got == std::vector<std::string>{"third away"});
    asio::steady_timer later(io, std::chrono::milliseconds(20));
    later.async_wait([&](boost::system::error_code) { slots.idle(*b); });  // b writes its answer
    io.run_for(std::chrono::milliseconds(200));
    CHECK(got == std::vector<std::string>{"third away", "probe in"});  // in its turn
    CHECK(closed == std::vector<std::string>{"b"});
    slots.release(a);  // a's connection ends: room for the second, nobody closed
    io.run_for(std::chrono::milliseconds(200));
    CHECK(got == std::vector<std::string>{"third away", "probe in", "second in"});
    CHECK(closed == std::vector<std::string>{"b"});

    SUBCASE("a house that stays busy past the newcomer's patience turns it away") {
        newcomer("late", std::chrono::milliseconds(50));
        io.restart();
        io.run_for(std::chrono::milliseconds(500));
        CHECK(got.back() == "late away");
        CHECK(closed == std::vector<std::string>{"b"});
    }
}
