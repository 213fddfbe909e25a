#include "exchange_state.hpp"

#include "config.hpp"
#include "exchange_pool.hpp"
#include "heap_trim.hpp"

namespace bg {

void ExchangeState::clear() {
    buffer.clear();
    upstream_buffer.clear();
    to_client.clear();
    to_backend.clear();
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
    return parser.emplace(&request_fields);
}

ResponseParser& ExchangeState::new_response() {
    response_parser.reset();
    response_fields.reset();
    return response_parser.emplace(&response_fields);
}

void ExchangeState::drop_messages() {
    response_parser.reset();
    parser.reset();
    response_fields.release();
    request_fields.release();
    buffer.consume(buffer.size());
    buffer.shrink_to_fit();
    upstream_buffer.consume(upstream_buffer.size());
    upstream_buffer.shrink_to_fit();
    to_client.release();
    to_backend.release();
}

void ExchangeState::end_request() {
    tried.clear();
    record = AccessRecord{};
    connect_error.clear();
    body_error.clear();
}

std::size_t ExchangeState::footprint() const {
    return sizeof(ExchangeState) + buffer.capacity() + upstream_buffer.capacity() +
           request_body.capacity() + response_body.capacity() + to_client.capacity() +
           to_backend.capacity() + request_fields.capacity() + response_fields.capacity();
}

ExchangePool::ExchangePool(HeapTrim& trim) : trim_(trim) {}
ExchangePool::~ExchangePool() = default;

std::unique_ptr<ExchangeState> ExchangePool::take() {
    if (spare_.empty()) {
        return std::make_unique<ExchangeState>();
    }
    std::unique_ptr<ExchangeState> state = std::move(spare_.back());
    spare_.pop_back();
    return state;
}

void ExchangePool::give(std::unique_ptr<ExchangeState> state, const Limits& limits) {
    if (spare_.size() >= limits.spare_exchanges) {
        // Freed here: past the bound, a burst's buffers do not stay (nor, once trimmed, in
        // malloc's free lists).
        const std::size_t bytes = state->footprint();
        state.reset();
        trim_.freed(bytes, limits.heap_trim_after, limits.heap_trim_delay);
        return;
    }
    state->clear();
    // A buffer a bulk body grew (server.bulk_buffer_size) or a large head is freed, the next
    // request allocating its own: the spare ones keep at most their usual size. (Not counted
    // for heap_trim_after: under steady bulk traffic the next body takes it back from malloc's
    // free lists, where bulk_readers bounds it.)
    const std::size_t usual = 2 * limits.read_chunk();
    for (boost::beast::flat_buffer* buffer : {&state->buffer, &state->upstream_buffer}) {
        if (buffer->capacity() > usual) {
            buffer->shrink_to_fit();
        }
    }
    spare_.push_back(std::move(state));
}

}  // namespace bg
