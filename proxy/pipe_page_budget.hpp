#pragma once
// PipePageBudget: the pipe pages this process's splice pipes may grow into beyond Linux's
// default size. The kernel counts every pipe's pages against its user
// (/proc/sys/fs/pipe-user-pages-soft, 16384 pages by default); a user past that limit gets new
// pipes of two pages, too small to splice through, and cannot grow any. Growing only within half
// of it leaves the rest for default-size pipes. Shared by the workers: taken when a pipe is made,
// not per body.

#include <atomic>
#include <cstddef>

namespace bg {

class PipePageBudget {
  public:
    explicit PipePageBudget(std::size_t pages) : left_(pages) {}
    PipePageBudget(const PipePageBudget&) = delete;
    PipePageBudget& operator=(const PipePageBudget&) = delete;

    // The process's: half of the user's soft limit, or unbounded when it has none (0).
    static PipePageBudget& process();

    // Takes `pages` if that many are left.
    bool take(std::size_t pages);
    void give(std::size_t pages) { left_.fetch_add(pages, std::memory_order_relaxed); }
    std::size_t left() const { return left_.load(std::memory_order_relaxed); }

  private:
    std::atomic<std::size_t> left_;
};

}  // namespace bg
