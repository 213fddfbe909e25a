#pragma once
// Retries, as Envoy separates them: a worker's RetryBudget (its requests and the retries among
// them) and one request's RetryState (the tries it has left, and whether the next may go).
// Worker thread only.

#include "config.hpp"
#include "worker_stats.hpp"

namespace bg {

// Retries after timeouts may be at most `budget` of the worker's active requests (never fewer
// than `min_budget`): a slow, overloaded backend is not buried under a retry storm.
struct RetryBudget {
    unsigned active_requests = 0;
    unsigned active_retries = 0;
    // How many more retries the budget allows now (may be below zero).
    double room(const RetryConfig& config) const;
};

// Why a try failed, as far as retrying is concerned.
enum class TryFailure {
    reset,    // refused, reset or cut: a fast, definite failure
    timeout,  // the backend did not answer in time
};

class RetryState {
  public:
    // Counts the request in the budget for as long as it lives.
    RetryState(RetryBudget& budget, const RetryConfig& config, WorkerStats& stats);
    ~RetryState();
    RetryState(const RetryState&) = delete;
    RetryState& operator=(const RetryState&) = delete;

    // A failed try may be repeated elsewhere only while that is safe: an idempotent method, no
    // byte of a body consumed (bodies are streamed, not kept), nothing sent to the client,
    // tries left, and for a timeout room in the budget, unless the backend's colour is out of
    // the routing by now (`colour_out`: its requests go elsewhere, as cut ones do). A reset is
    // retried by `attempts` alone: a backend going away resets all its requests at once, and
    // each should be served.
    bool may_retry(bool idempotent, bool body_started, bool response_started, TryFailure failure,
                   bool colour_out);
    // One retry is made (counted, and in the budget until the request ends).
    void retrying();
    // A try may still follow this one (a cut try with none left would be a certain 502).
    bool tries_left() const { return left_ > 0; }

  private:
    RetryBudget& budget_;
    const RetryConfig& config_;
    WorkerStats& stats_;
    unsigned left_;
    bool retrying_ = false;
};

}  // namespace bg
