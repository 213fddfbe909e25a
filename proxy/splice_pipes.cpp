#include "splice_pipes.hpp"

#include <fcntl.h>
#include <unistd.h>

namespace bg {

namespace {

void close_pipe(SplicePipe& pipe) {
    ::close(pipe.read_end);
    ::close(pipe.write_end);
    pipe = {};
}

}  // namespace

SplicePipes::~SplicePipes() {
    for (SplicePipe& pipe : spare_) {
        close_pipe(pipe);
    }
}

void SplicePipes::close_spares_past(std::size_t max_pipes) {
    while (!spare_.empty() && in_use_ + spare_.size() > max_pipes) {
        close_pipe(spare_.back());
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
        int ends[2];
        if (::pipe2(ends, O_NONBLOCK | O_CLOEXEC) != 0) {
            return false;
        }
        if (pipe_size != 0) {
            // Refused past /proc/sys/fs/pipe-max-size, or past the user's pipe page limits:
            // the pipe keeps the kernel's size (64 KiB), which works, with more splices.
            ::fcntl(ends[1], F_SETPIPE_SZ, static_cast<int>(pipe_size));
        }
        pipe = {ends[0], ends[1], 0};
    }
    ++in_use_;
    return true;
}

void SplicePipes::give(SplicePipe& pipe, std::size_t max_pipes) {
    --in_use_;
    if (pipe.held > 0 || in_use_ + spare_.size() >= max_pipes) {
        close_pipe(pipe);  // what it holds belongs to a body that failed, or past the bound
        close_spares_past(max_pipes);
        return;
    }
    spare_.push_back(pipe);
    pipe = {};
}

}  // namespace bg
