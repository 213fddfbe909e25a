#pragma once
// FieldArena: where one exchange's header fields live (FlatFields: their array, names, values,
// target and reason). Each is a pointer bump, and all of them go at once, when the exchange's
// parsers do (reset()): no allocation or free per field.

#include <cstddef>
#include <memory>
#include <vector>

namespace bg {

class FieldArena {
  public:
    FieldArena() = default;
    FieldArena(const FieldArena&) = delete;
    FieldArena& operator=(const FieldArena&) = delete;

    // `bytes`, aligned for any type; freed only by reset(). Inline: a dozen per request, nearly
    // all from the block in hand.
    void* allocate(std::size_t bytes) {
        bytes = (bytes + align - 1) / align * align;
        if (static_cast<std::size_t>(end_ - next_) < bytes) {
            return allocate_in_new_block(bytes);
        }
        void* at = next_;
        next_ += bytes;
        return at;
    }
    // Everything allocated is given back: only when nothing allocated is still in use. The
    // first block stays for the next exchange; larger heads' blocks are freed.
    void reset();
    // As reset(), and the first block goes too: for an exchange that parses nothing more for
    // a long while (a tunnel).
    void release();

    static constexpr std::size_t first_block = 4096;  // kept from one exchange to the next
    // Bytes of the blocks it holds (for HeapTrim's count of what a freed exchange gives back).
    std::size_t capacity() const { return held_; }

  private:
    static constexpr std::size_t align = alignof(std::max_align_t);
    void* allocate_in_new_block(std::size_t bytes);  // `bytes` already rounded up

    std::vector<std::unique_ptr<std::byte[]>> blocks_;
    std::byte* next_ = nullptr;
    std::byte* end_ = nullptr;
    std::size_t last_size_ = 0;
    std::size_t held_ = 0;
};

}  // namespace bg
