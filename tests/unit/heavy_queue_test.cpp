#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
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
