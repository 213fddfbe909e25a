#include "field_arena.hpp"

#include <algorithm>

namespace bg {

void* FieldArena::allocate_in_new_block(std::size_t bytes) {
    // A new block, twice the last (a large head takes a few), at least this allocation.
    const std::size_t size = std::max(bytes, last_size_ == 0 ? first_block : 2 * last_size_);
    blocks_.push_back(std::make_unique_for_overwrite<std::byte[]>(size));
    next_ = blocks_.back().get();
    end_ = next_ + size;
    last_size_ = size;
    held_ += size;
    void* at = next_;
    next_ += bytes;
    return at;
}

void FieldArena::reset() {
    if (blocks_.empty()) {
        return;
    }
    if (blocks_.size() > 1 || last_size_ != first_block) {
        release();  // a large head's blocks: not kept for every exchange
        return;
    }
    next_ = blocks_.front().get();
}

void FieldArena::release() {
    blocks_.clear();
    next_ = end_ = nullptr;
    last_size_ = 0;
    held_ = 0;
}

}  // namespace bg
