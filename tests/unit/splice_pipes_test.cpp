#include <doctest/doctest.h>

#include <vector>

#include "splice_pipes.hpp"

TEST_CASE("the spare pipes never outnumber the bound, a lowered one included") {
    bg::SplicePipes pipes;
    std::vector<bg::SplicePipe> taken(5);
    for (int i = 0; i < 4; ++i) {
        REQUIRE(pipes.take(taken[i], 4, 0));
    }
    CHECK_FALSE(pipes.take(taken[4], 4, 0));  // past the bound: the caller copies
    for (int i = 0; i < 4; ++i) {
        pipes.give(taken[i], 4);
    }
    CHECK(pipes.in_use() == 0);
    CHECK(pipes.spare_count() == 4);
    // A reload lowers the bound to 1: the next take closes the spares past it.
    bg::SplicePipe one;
    REQUIRE(pipes.take(one, 1, 0));
    CHECK(pipes.spare_count() == 0);
    pipes.give(one, 1);
    CHECK(pipes.spare_count() == 1);
    // Given back past the bound (it was lowered while in use): closed, not kept.
    bg::SplicePipe a;
    bg::SplicePipe b;
    REQUIRE(pipes.take(a, 2, 0));
    REQUIRE(pipes.take(b, 2, 0));
    pipes.give(a, 1);
    pipes.give(b, 1);
    CHECK(pipes.spare_count() == 1);
    // A pipe still holding bytes (its body failed) is never reused.
    bg::SplicePipe failed;
    REQUIRE(pipes.take(failed, 1, 0));
    failed.held = 10;
    pipes.give(failed, 1);
    CHECK(pipes.spare_count() == 0);
}
