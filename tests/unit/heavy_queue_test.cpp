#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

#include "heavy_queue.hpp"

namespace {

namespace asio = boost::asio;

TEST_CASE("heavy steps take turns with the light handlers: one per pass") {
    asio::io_context io{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
    std::string order;
    bg::HeavyQueue& heavy = bg::HeavyQueue::of(io.get_executor());
    // Three heavy steps (capitals), each making a light handler ready (its small letter), and
    // two light handlers ready from the start.
    for (const char c : {'A', 'B', 'C'}) {
        heavy.enqueue([&io, &order, c] {
            order += c;
            asio::post(io, [&order, c] { order += static_cast<char>(c - 'A' + 'a'); });
        });
    }
    for (const char c : {'1', '2'}) {
        asio::post(io, [&order, c] { order += c; });
    }
    io.run();
    // Not "ABC12abc": the light handlers ready before a heavy step run before it.
    CHECK(order == "A12aBbCc");
}

// A clock the steps move: each heavy or light step adds its cost.
bg::HeavyQueue::Clock::time_point fake_now{};
bg::HeavyQueue::Clock::time_point read_fake_clock() {
    return fake_now;
}

// Heavy steps of 1 ms (capitals) beside three chains of light handlers of 200 us each (small
// letters), each posting its next, 20 to a chain: the order they ran in.
std::string run_beside_light_work(unsigned share) {
    using std::chrono::microseconds;
    asio::io_context io{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
    std::string order;
    bg::HeavyQueue& heavy = bg::HeavyQueue::of(io.get_executor());
    heavy.set_clock(&read_fake_clock);
    heavy.set_share(share);
    for (const char c : {'A', 'B', 'C', 'D'}) {
        heavy.enqueue([&order, c] {
            order += c;
            fake_now += microseconds(1000);
        });
    }
    std::function<void(int)> light = [&](int left) {
        order += 'x';
        fake_now += microseconds(200);
        if (left > 1) {
            asio::post(io, [&light, left] { light(left - 1); });
        }
    };
    for (int chain = 0; chain < 3; ++chain) {
        asio::post(io, [&light] { light(20); });
    }
    io.run();
    return order;
}

TEST_CASE("beside light work, heavy steps take at most their share of the time") {
    // (The first step was queued before the light handlers.) At 100% one heavy step a pass,
    // whatever it costs: a pass of three light handlers (600 us) and a step (1 ms), 62% of
    // the time.
    CHECK(run_beside_light_work(100).substr(0, 16) == "AxxxBxxxCxxxDxxx");
    // At 50% a step of 1 ms waits for 1 ms of light work after it: two passes of three.
    CHECK(run_beside_light_work(50).substr(0, 28) == "AxxxxxxBxxxxxxCxxxxxxDxxxxxx");
    // At 25%, 3 ms: five passes.
    CHECK(run_beside_light_work(25).substr(0, 38) == "AxxxxxxxxxxxxxxxBxxxxxxxxxxxxxxxCxxxxx");
}

TEST_CASE("with nothing else to run, heavy steps run back to back whatever their share") {
    asio::io_context io{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
    std::string order;
    bg::HeavyQueue& heavy = bg::HeavyQueue::of(io.get_executor());
    heavy.set_clock(&read_fake_clock);
    heavy.set_share(10);
    for (const char c : {'A', 'B', 'C'}) {
        heavy.enqueue([&order, c] {
            order += c;
            fake_now += std::chrono::milliseconds(1);
        });
    }
    io.run();
    CHECK(order == "ABC");
    CHECK(heavy.passes_deferred() == 0);
}

TEST_CASE("a heavy step deferred by a heavy step runs after the ones queued before it") {
    asio::io_context io{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
    std::string order;
    bg::HeavyQueue& heavy = bg::HeavyQueue::of(io.get_executor());
    heavy.enqueue([&] {
        order += 'A';
        heavy.enqueue([&] { order += 'C'; });
    });
    heavy.enqueue([&] { order += 'B'; });
    io.run();
    CHECK(order == "ABC");
    // The queue runs again after it emptied.
    heavy.enqueue([&] { order += 'D'; });
    io.restart();
    io.run();
    CHECK(order == "ABCD");
}

TEST_CASE("a heavy step that throws does not stall the ones behind it") {
    asio::io_context io{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
    std::string order;
    bg::HeavyQueue& heavy = bg::HeavyQueue::of(io.get_executor());
    heavy.enqueue([] { throw std::runtime_error("a step failed"); });
    heavy.enqueue([&] { order += 'B'; });
    CHECK_THROWS_AS(io.run(), std::runtime_error);
    io.restart();
    io.run();
    CHECK(order == "B");
}

TEST_CASE("heavy steps still queued when their io_context goes are destroyed with it") {
    auto held = std::make_shared<int>(0);
    bool ran = false;
    {
        asio::io_context io{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
        bg::HeavyQueue::of(io.get_executor()).enqueue([held, &ran] { ran = true; });
        CHECK(held.use_count() == 2);
    }
    CHECK(held.use_count() == 1);
    CHECK_FALSE(ran);
}

}  // namespace
