#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

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

namespace {

long pipe_bytes(const bg::SplicePipe& pipe) {
    return ::fcntl(pipe.write_end, F_GETPIPE_SZ);
}

}  // namespace

TEST_CASE("a pipe grows to the configured size only within the process's pipe page budget") {
    const long page = ::sysconf(_SC_PAGESIZE);
    const long linux_default = 16 * page;
    // Room for one pipe of 64 pages (48 past the default), not for two.
    bg::PipePageBudget budget(60);
    {
        bg::SplicePipes pipes(budget);
        bg::SplicePipe grown;
        bg::SplicePipe kept;
        REQUIRE(pipes.take(grown, 4, static_cast<std::size_t>(64 * page)));
        CHECK(pipe_bytes(grown) == 64 * page);
        CHECK(grown.grown_pages == 48);
        CHECK(budget.left() == 12);
        REQUIRE(pipes.take(kept, 4, static_cast<std::size_t>(64 * page)));
        CHECK(pipe_bytes(kept) == linux_default);  // past the budget: the kernel's size, spliced
        CHECK(kept.grown_pages == 0);
        CHECK(budget.left() == 12);
        pipes.give(grown, 4);
        pipes.give(kept, 4);
        CHECK(budget.left() == 12);  // a spare keeps its pages
    }
    CHECK(budget.left() == 60);  // closed pipes give theirs back
    // A size the kernel rounds up (40 pages: 64) is counted as rounded.
    bg::SplicePipes pipes(budget);
    bg::SplicePipe rounded;
    REQUIRE(pipes.take(rounded, 1, static_cast<std::size_t>(40 * page)));
    CHECK(pipe_bytes(rounded) == 64 * page);
    CHECK(budget.left() == 12);
    pipes.give(rounded, 0);  // past the bound: closed
    CHECK(budget.left() == 60);
}

// A user past its pipe pages (/proc/sys/fs/pipe-user-pages-soft) gets pipes of two pages: none
// is used, and none is tried again for a while. Root is exempt from the limit, so the check
// runs in a child as nobody.
TEST_CASE("a pipe the kernel makes too small to splice through is not used, nor tried again") {
    if (::geteuid() != 0) {
        MESSAGE("skipped: needs root, to run as nobody");
        return;
    }
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        if (::setgid(65534) != 0 || ::setuid(65534) != 0) {
            ::_exit(77);
        }
        std::vector<int> filler;  // pipes of 1 MiB until the user is past its soft limit
        for (int i = 0; i < 1000; ++i) {
            int ends[2];
            if (::pipe2(ends, O_CLOEXEC) != 0) {
                ::_exit(10);
            }
            filler.push_back(ends[0]);
            filler.push_back(ends[1]);
            if (::fcntl(ends[1], F_SETPIPE_SZ, 1 << 20) < 0) {
                break;
            }
        }
        bg::PipePageBudget budget(1 << 20);
        bg::SplicePipes pipes(budget);
        bg::SplicePipe pipe;
        if (pipes.take(pipe, 4, 1 << 20)) {
            ::_exit(11);  // a two-page pipe was used
        }
        if (pipes.in_use() != 0 || budget.left() != (1 << 20)) {
            ::_exit(12);
        }
        for (const int fd : filler) {
            ::close(fd);
        }
        if (pipes.take(pipe, 4, 1 << 20)) {
            ::_exit(13);  // tried again at once (a pipe would be fine now)
        }
        ::_exit(0);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77) {
        MESSAGE("skipped: cannot become nobody");
        return;
    }
    CHECK(WEXITSTATUS(status) == 0);
}
