#pragma once
// FailureRun: a backend's current run of failed tries, one per backend for the process and
// shared by every worker. [outlier] consecutive_failures counts failures in a row as the
// backend's request stream has them, as Envoy's consecutive_5xx does: each worker's own run
// (its share of the stream) read as a maximum let a success on one worker leave another's old
// run standing, and a healthy backend was ejected for "79 failures in a row" from an outage
// 40 s before (an outside probe).

#include <atomic>
#include <cstdint>

namespace bg {

class alignas(64) FailureRun {  // its own cache line: workers write it when a run changes
  public:
    // A failed try; true when it is the one that brings the run to `threshold` (the worker
    // raises the alarm then). The crossing is counted, so that the control plane judges it even
    // if a success ends the run before it looks, as Envoy ejects at the crossing itself.
    bool fail(std::uint32_t threshold) {
        if (in_a_row_.fetch_add(1, std::memory_order_relaxed) + 1 != threshold) {
            return false;
        }
        crossings_.fetch_add(1, std::memory_order_relaxed);
        return true;
    }
    // A successful try ends the run. Written only when there is a run to end, so that while a
    // backend answers, its line stays shared in every worker's cache.
    void succeed() {
        if (in_a_row_.load(std::memory_order_relaxed) != 0) {
            in_a_row_.store(0, std::memory_order_relaxed);
        }
    }
    std::uint32_t length() const { return in_a_row_.load(std::memory_order_relaxed); }
    // How many runs have reached the threshold so far.
    std::uint32_t crossings() const { return crossings_.load(std::memory_order_relaxed); }
    // The control plane starts the count afresh when the backend is back in the routing (from
    // an ejection, or from its checks failing) or its colour lost its share: it is judged on
    // what comes next.
    void restart() { in_a_row_.store(0, std::memory_order_relaxed); }

  private:
    std::atomic<std::uint32_t> in_a_row_{0};
    std::atomic<std::uint32_t> crossings_{0};
};

}  // namespace bg
