#pragma once
// FieldArena: where one exchange's header fields live. Beast keeps each field of a message in
// a node of its own, and its target and reason in strings of their own: some 17 allocations
// and as many frees per proxied request. From the exchange's arena each is a pointer bump, and
// all of them go at once, when the exchange's parsers do (reset()). FieldAllocator is the
// allocator of the proxy's Beast fields (proxied_message.hpp): with no arena (a default one,
// for fields made outside an exchange) it allocates from the heap.

#include <cstddef>
#include <memory>
#include <type_traits>
#include <vector>

namespace bg {

class FieldArena {
  public:
    FieldArena() = default;
    FieldArena(const FieldArena&) = delete;
    FieldArena& operator=(const FieldArena&) = delete;

    // `bytes`, aligned for any type; freed only by reset().
    void* allocate(std::size_t bytes);
    // Everything allocated is given back: only when nothing allocated is still in use. The
    // first block stays for the next exchange; larger heads' blocks are freed.
    void reset();

    static constexpr std::size_t first_block = 4096;  // kept from one exchange to the next

  private:
    std::vector<std::unique_ptr<std::byte[]>> blocks_;
    std::byte* next_ = nullptr;
    std::byte* end_ = nullptr;
    std::size_t last_size_ = 0;
};

template <class T>
class FieldAllocator {
  public:
    using value_type = T;
    // The arena travels with the fields when they are moved, swapped or assigned.
    using propagate_on_container_copy_assignment = std::true_type;
    using propagate_on_container_move_assignment = std::true_type;
    using propagate_on_container_swap = std::true_type;

    FieldAllocator() noexcept = default;
    explicit FieldAllocator(FieldArena* arena) noexcept : arena_(arena) {}
    template <class U>
    FieldAllocator(const FieldAllocator<U>& other) noexcept : arena_(other.arena()) {}

    T* allocate(std::size_t n) {
        if (arena_ == nullptr) {
            return std::allocator<T>{}.allocate(n);
        }
        return static_cast<T*>(arena_->allocate(n * sizeof(T)));
    }
    void deallocate(T* p, std::size_t n) noexcept {
        if (arena_ == nullptr) {
            std::allocator<T>{}.deallocate(p, n);
        }
    }
    FieldArena* arena() const noexcept { return arena_; }

    template <class U>
    bool operator==(const FieldAllocator<U>& other) const noexcept {
        return arena_ == other.arena();
    }

  private:
    FieldArena* arena_ = nullptr;
};

}  // namespace bg
