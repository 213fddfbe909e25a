#include "retry_state.hpp"

#include <algorithm>

namespace bg {

double RetryBudget::room(const RetryConfig& config) const {
    const double budget = std::max<double>(config.min_budget, config.budget * active_requests);
    return budget - static_cast<double>(active_retries);
}

RetryState::RetryState(RetryBudget& budget, const RetryConfig& config, WorkerStats& stats)
    : budget_(budget), config_(config), stats_(stats), left_(config.attempts) {
    ++budget_.active_requests;
}

RetryState::~RetryState() {
    --budget_.active_requests;
    if (retrying_) {
        --budget_.active_retries;
    }
}

bool RetryState::may_retry(bool idempotent, bool body_started, bool response_started,
                           TryFailure failure, bool colour_out) {
    if (left_ == 0 || !idempotent || body_started || response_started) {
        return false;
    }
    if (failure != TryFailure::timeout || colour_out) {
        return true;
    }
    if (budget_.room(config_) <= 0) {
        WorkerStats::add(stats_.retry_budget_exhausted);
        return false;
    }
    return true;
}

void RetryState::retrying() {
    --left_;
    WorkerStats::add(stats_.retries);
    if (!retrying_) {
        retrying_ = true;
        ++budget_.active_retries;
    }
}

}  // namespace bg
