#include "exchange_state.hpp"

#include "exchange_pool.hpp"

namespace bg {

void ExchangeState::clear() {
    buffer.clear();
    upstream_buffer.clear();
    head.clear();
    gathered.clear();
    parser.reset();  // frees the field nodes of the last message
    response_parser.reset();
}

void ExchangeState::end_request() {
    tried.clear();
    record = AccessRecord{};
    connect_error.clear();
    body_error.clear();
}

ExchangePool::ExchangePool() = default;
ExchangePool::~ExchangePool() = default;

std::unique_ptr<ExchangeState> ExchangePool::take() {
    if (spare_.empty()) {
        return std::make_unique<ExchangeState>();
    }
    std::unique_ptr<ExchangeState> state = std::move(spare_.back());
    spare_.pop_back();
    return state;
}

void ExchangePool::give(std::unique_ptr<ExchangeState> state, std::size_t spare) {
    if (spare_.size() >= spare) {
        return;  // freed here: past the bound, a burst's buffers do not stay
    }
    state->clear();
    spare_.push_back(std::move(state));
}

}  // namespace bg
