#include "splice_pipes.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>

#include "coarse_clock.hpp"

namespace bg {

namespace {

std::size_t pages_of(long bytes) {
    static const long page = ::sysconf(_SC_PAGESIZE);
    return static_cast<std::size_t>((bytes + page - 1) / page);
}

}  // namespace

SplicePipes::~SplicePipes() {
    for (SplicePipe& pipe : spare_) {
        close(pipe);
    }
}

void SplicePipes::close(SplicePipe& pipe) {
    ::close(pipe.read_end);
    ::close(pipe.write_end);
    budget_.give(pipe.grown_pages);
    pipe = {};
}

bool SplicePipes::make(SplicePipe& pipe, std::size_t pipe_size) {
    int ends[2];
    if (::pipe2(ends, O_NONBLOCK | O_CLOEXEC) != 0) {
        return false;
    }
    pipe = {ends[0], ends[1], 0, 0};
    const long size = ::fcntl(ends[1], F_GETPIPE_SZ);
    // A user past /proc/sys/fs/pipe-user-pages-soft gets pipes of two pages (8 KiB with 4 KiB
    // pages): moving a body through one takes more syscalls than copying it.
    constexpr long linux_default_size = 65536;
    if (size < linux_default_size && (pipe_size == 0 || static_cast<long>(pipe_size) > size)) {
        close(pipe);
        no_new_pipe_until_ = CoarseClock::now() + small_pipe_pause;
        return false;
    }
    if (pipe_size == 0 || static_cast<long>(pipe_size) == size) {
        return true;
    }
    const long wanted = static_cast<long>(std::min<std::size_t>(pipe_size, 1L << 30));
    // The kernel rounds a pipe's size up to a power of two pages.
    const std::size_t extra = wanted > size ? std::bit_ceil(pages_of(wanted)) - pages_of(size) : 0;
    if (extra > 0 && !budget_.take(extra)) {
        return true;  // keeps the kernel's size: it works, with more splices
    }
    // Refused past /proc/sys/fs/pipe-max-size (unprivileged) or the user's pipe pages: the
    // pipe keeps the kernel's size.
    const long given = ::fcntl(ends[1], F_SETPIPE_SZ, static_cast<int>(wanted));
    const std::size_t grown = given > size ? std::min(extra, pages_of(given) - pages_of(size)) : 0;
    budget_.give(extra - grown);
    pipe.grown_pages = grown;
    return true;
}

void SplicePipes::close_spares_past(std::size_t max_pipes) {
    while (!spare_.empty() && in_use_ + spare_.size() > max_pipes) {
        close(spare_.back());
        spare_.pop_back();
    }
}

bool SplicePipes::take(SplicePipe& pipe, std::size_t max_pipes, std::size_t pipe_size) {
    close_spares_past(max_pipes);
    if (in_use_ >= max_pipes) {
        return false;
    }
    if (!spare_.empty()) {
        pipe = spare_.back();
        spare_.pop_back();
    } else {
        if (no_new_pipe_until_) {
            if (CoarseClock::now() < *no_new_pipe_until_) {
                return false;
            }
            no_new_pipe_until_.reset();
        }
        if (!make(pipe, pipe_size)) {
            return false;
        }
    }
    ++in_use_;
    return true;
}

void SplicePipes::give(SplicePipe& pipe, std::size_t max_pipes) {
    --in_use_;
    if (pipe.held > 0 || in_use_ + spare_.size() >= max_pipes) {
        close(pipe);  // what it holds belongs to a body that failed, or past the bound
        close_spares_past(max_pipes);
        return;
    }
    spare_.push_back(pipe);
    pipe = {};
}

}  // namespace bg
