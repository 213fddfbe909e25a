#include <doctest/doctest.h>

#include <algorithm>
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
    std::vector<std::string> with_input;  // connections whose request is in their socket
    auto closing = [&](std::string name) {
        return bg::ConnectionSlots::Connection{
            [&closed, name] { closed.push_back(name); },
            [&with_input, name] {
                return std::find(with_input.begin(), with_input.end(), name) != with_input.end();
            }};
    };
    auto a = slots.take(closing("a"));
    auto b = slots.take(closing("b"));
    auto c = slots.take(closing("c"));
    REQUIRE(a);
    REQUIRE(c);
    bg::ConnectionSlots::busy(*a);
    slots.idle(a);  // a sent a command: idle again, since now
    auto d = slots.take(closing("d"));
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
        CHECK_FALSE(slots.take(closing("e")));
        CHECK(closed == std::vector<std::string>{"b"});
        slots.release(a);
        CHECK(slots.take(closing("f")));
    }

    SUBCASE("a connection whose request has come is not idle; one whose answer waits is") {
        // Found by review: a probe's new connection, its head in its socket but not yet read,
        // was closed for the next newcomer when every other slot was busy.
        with_input = {"c", "d"};
        bg::ConnectionSlots::busy(*a);
        CHECK_FALSE(slots.take(closing("e")));  // c and d are about to be busy
        CHECK(closed == std::vector<std::string>{"b"});
        slots.answering(a);  // a's answer waits on its client
        CHECK(slots.take(closing("e")));
        CHECK(closed == std::vector<std::string>{"b", "a"});
    }
}

TEST_CASE("a newcomer finding every slot busy waits its turn instead of being turned away") {
    // Found by CI (ASan): 8 admin clients pipelining /metrics kept all 8 slots busy while their
    // answers were rendered, and a readiness probe arriving then was closed unanswered.
    namespace asio = boost::asio;
    asio::io_context io;
    bg::ConnectionSlots slots(2, 0);
    std::vector<std::string> closed;
    std::vector<std::string> with_input;  // connections whose request is in their socket
    auto closing = [&](std::string name) {
        return bg::ConnectionSlots::Connection{
            [&closed, name] { closed.push_back(name); },
            [&with_input, name] {
                return std::find(with_input.begin(), with_input.end(), name) != with_input.end();
            }};
    };
    auto a = slots.take(closing("a"));
    auto b = slots.take(closing("b"));
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
        const bg::ConnectionSlots::Connection connection{
            [&closed, name] { closed.push_back(name); }, {}};
        auto slot = co_await slots.take_in_turn(connection, patience);
        got.push_back(name + (slot ? " in" : " away"));
        if (slot) {
            held.push_back(slot);  // idle: its head not in yet
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
    later.async_wait([&](boost::system::error_code) { slots.answering(b); });  // b writes
    io.run_for(std::chrono::milliseconds(200));
    // b's slot went to the first in line; the second, not woken, did not take the probe's new
    // slot (idle until its head is in) from it.
    CHECK(got == std::vector<std::string>{"third away", "probe in"});
    CHECK(closed == std::vector<std::string>{"b"});
    // A newcomer arriving now queues behind the second instead of closing the probe.
    newcomer("jumper", std::chrono::milliseconds(100));
    io.restart();
    io.poll();
    slots.release(a);  // a's connection ends: the free place goes to the second
    io.restart();
    io.run_for(std::chrono::milliseconds(400));
    CHECK(got == std::vector<std::string>{"third away", "probe in", "second in", "jumper away"});
    CHECK(closed == std::vector<std::string>{"b"});

    SUBCASE("a house that stays busy past the newcomer's patience turns it away") {
        for (auto& slot : held) {
            bg::ConnectionSlots::busy(*slot);
        }
        newcomer("late", std::chrono::milliseconds(50));
        io.restart();
        io.run_for(std::chrono::milliseconds(300));
        CHECK(got.back() == "late away");
        CHECK(closed == std::vector<std::string>{"b"});
    }
}
