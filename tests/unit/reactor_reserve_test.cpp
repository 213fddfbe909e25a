#include <doctest/doctest.h>
#include <malloc.h>

#include <boost/asio/io_context.hpp>
#include <optional>
#include <vector>

#include "reactor_reserve.hpp"

namespace {

// Bytes malloc handed out while `count` sockets were opened on `io` (their vector reserved
// beforehand, so only what opening them allocates counts).
[[maybe_unused]] std::size_t allocated_opening(boost::asio::io_context& io, std::size_t count) {
    std::vector<std::optional<bg::Socket>> sockets(count);
    const std::size_t before = mallinfo2().uordblks;
    for (auto& socket : sockets) {
        socket.emplace(io.get_executor());
        socket->open(boost::asio::ip::tcp::v4());
    }
    return mallinfo2().uordblks - before;
}

}  // namespace

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
// The sanitizers' allocators are not malloc's: mallinfo2 does not see them.
TEST_CASE("sockets opened within the reserve allocate no reactor record" * doctest::skip()) {}
#else
TEST_CASE("sockets opened within the reserve allocate no reactor record") {
    constexpr std::size_t count = 300;
    boost::asio::io_context unreserved;
    // asio's own: a record per socket (168 bytes) the first time that many are open at once.
    CHECK(allocated_opening(unreserved, count) >= count * 160);

    boost::asio::io_context io;
    bg::ReactorReserve reserve(io);
    reserve.ensure(count);
    CHECK(reserve.reserved() >= count);
    CHECK(reserve.reserved() % bg::ReactorReserve::batch == 0);  // whole batches
    CHECK(allocated_opening(io, count) < count * 64);            // (under a record each, by far)
    const std::size_t reserved = reserve.reserved();
    reserve.ensure(count);  // enough already: nothing more
    CHECK(reserve.reserved() == reserved);
}
#endif
