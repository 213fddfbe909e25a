#include "pipe_page_budget.hpp"

#include <fstream>
#include <limits>

namespace bg {

namespace {

std::size_t process_pages() {
    std::size_t soft = 0;
    std::ifstream limit("/proc/sys/fs/pipe-user-pages-soft");
    if (!(limit >> soft)) {
        soft = 16384;  // Linux's default, when the file cannot be read
    }
    return soft == 0 ? std::numeric_limits<std::size_t>::max() : soft / 2;
}

}  // namespace

PipePageBudget& PipePageBudget::process() {
    static PipePageBudget budget(process_pages());
    return budget;
}

bool PipePageBudget::take(std::size_t pages) {
    std::size_t left = left_.load(std::memory_order_relaxed);
    while (left >= pages) {
        if (left_.compare_exchange_weak(left, left - pages, std::memory_order_relaxed)) {
            return true;
        }
    }
    return false;
}

}  // namespace bg
