#include "heap_trim.hpp"

#include <malloc.h>

#include "coroutine_frame_pool.hpp"

namespace bg {

HeapTrim::HeapTrim(const Executor& executor, WorkerStats& stats)
    : stats_(stats), timer_(executor) {}

void HeapTrim::freed(std::size_t bytes, std::size_t after, std::chrono::milliseconds delay) {
    freed_ += bytes;
    if (after == 0 || freed_ < after || armed_) {
        return;
    }
    // One trim per burst: what is freed while the timer runs is returned by the same trim.
    armed_ = true;
    timer_.expires_after(delay);
    timer_.async_wait([this](const boost::system::error_code& ec) {
        if (ec) {
            return;  // the worker is going away
        }
        armed_ = false;
        freed_ = 0;
        coroutine_frames::release();  // what the burst's coroutines left in this thread's lists
        ::malloc_trim(0);
        WorkerStats::add(stats_.heap_trims);
    });
}

}  // namespace bg
