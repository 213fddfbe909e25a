#pragma once
// SplicePipes: a worker's pipes for moving a body from one plain socket to another inside the
// kernel (splice(2): socket to pipe, pipe to socket), so its bytes are never copied into the
// proxy and out again (HAProxy's pipe pool, tune.maxpipes). A relay takes a pipe for one body
// and gives it back empty; a pipe left holding bytes (the body failed) is closed, never reused.
// Past the config's limit in use, take() finds none and the relay copies as before. A new pipe
// grows to the configured size while the process's PipePageBudget allows. Worker thread only.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "pipe_page_budget.hpp"

namespace bg {

struct SplicePipe {
    int read_end = -1;
    int write_end = -1;
    std::size_t held = 0;         // bytes in the pipe, not yet spliced out
    std::size_t grown_pages = 0;  // taken from the budget past the kernel's default size
};

class SplicePipes {
  public:
    explicit SplicePipes(PipePageBudget& budget = PipePageBudget::process()) : budget_(budget) {}
    ~SplicePipes();
    SplicePipes(const SplicePipes&) = delete;
    SplicePipes& operator=(const SplicePipes&) = delete;

    // A pipe for one body, or false when `max_pipes` are in use or none can be made (out of
    // descriptors, or the user is past its pipe pages and the kernel makes them too small to
    // splice through; then no new pipe is tried for `small_pipe_pause`): the caller copies. A new
    // pipe is given `pipe_size` (0: the kernel's); past the budget, a larger size is not given and
    // the pipe keeps the kernel's.
    bool take(SplicePipe& pipe, std::size_t max_pipes, std::size_t pipe_size);
    // Kept for the next body while fewer than `max_pipes` are open, else closed: a reload that
    // lowers server.splice_pipes closes the spares past it.
    void give(SplicePipe& pipe, std::size_t max_pipes);
    std::size_t spare_count() const { return spare_.size(); }
    std::size_t in_use() const { return in_use_; }

  private:
    static constexpr std::chrono::seconds small_pipe_pause{1};

    bool make(SplicePipe& pipe, std::size_t pipe_size);
    void close(SplicePipe& pipe);
    void close_spares_past(std::size_t max_pipes);
    PipePageBudget& budget_;
    // Until then a new pipe would come out too small: each copied piece of a body asks again,
    // and would make and close one each time.
    std::optional<std::chrono::steady_clock::time_point> no_new_pipe_until_;
    std::size_t in_use_ = 0;
    std::vector<SplicePipe> spare_;
};

// One body's pipe, given back when the relay ends however it ends.
class SplicePipeLease {
  public:
    SplicePipeLease(SplicePipes& pipes, std::size_t max_pipes, std::size_t pipe_size)
        : pipes_(pipes), max_pipes_(max_pipes), held_(pipes.take(pipe_, max_pipes, pipe_size)) {}
    ~SplicePipeLease() {
        if (held_) {
            pipes_.give(pipe_, max_pipes_);
        }
    }
    SplicePipeLease(const SplicePipeLease&) = delete;
    SplicePipeLease& operator=(const SplicePipeLease&) = delete;
    explicit operator bool() const { return held_; }
    SplicePipe& operator*() { return pipe_; }

  private:
    SplicePipes& pipes_;
    std::size_t max_pipes_;
    SplicePipe pipe_;
    bool held_;
};

}  // namespace bg
