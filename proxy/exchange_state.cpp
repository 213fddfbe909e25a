#include "exchange_state.hpp"

#include "exchange_pool.hpp"

namespace bg {

void ExchangeState::clear() {
    buffer.clear();
    upstream_buffer.clear();
    head.clear();
    gathered.clear();
    parser.reset();
    response_parser.reset();
    request_fields.reset();
    response_fields.reset();
}

RequestParser& ExchangeState::new_request() {
    response_parser.reset();
    response_fields.reset();
    parser.reset();
    request_fields.reset();
    return parser.emplace(std::piecewise_construct, std::make_tuple(),
                          std::make_tuple(FieldAllocator<char>(&request_fields)));
}

ResponseParser& ExchangeState::new_response() {
    response_parser.reset();
    response_fields.reset();
    return response_parser.emplace(std::piecewise_construct, std::make_tuple(),
                                   std::make_tuple(FieldAllocator<char>(&response_fields)));
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
