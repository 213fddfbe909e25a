#include "record_slab.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cassert>
#include <forward_list>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/lsan_interface.h>
// What a record points to (a TLS state, a config) is reachable: LeakSanitizer scans chunks.
#define BG_SLAB_ROOT(chunk) __lsan_register_root_region(chunk, chunk_bytes)
#define BG_SLAB_UNROOT(chunk) __lsan_unregister_root_region(chunk, chunk_bytes)
// A freed record is poisoned past its free-list link, so a use after free is still caught.
#define BG_SLAB_POISON(record, size) \
    ASAN_POISON_MEMORY_REGION(static_cast<char*>(record) + sizeof(void*), (size) - sizeof(void*))
#define BG_SLAB_UNPOISON(record, size) ASAN_UNPOISON_MEMORY_REGION(record, size)
#else
#define BG_SLAB_ROOT(chunk)
#define BG_SLAB_UNROOT(chunk)
#define BG_SLAB_POISON(record, size)
#define BG_SLAB_UNPOISON(record, size)
#endif

namespace bg {

namespace {
constexpr std::size_t chunk_bytes = 64 * 1024;  // aligned to its size: a record finds its chunk
constexpr std::size_t record_align = 16;
constexpr std::size_t max_record = 1024;

constexpr std::size_t align_up(std::size_t n, std::size_t to) {
    return (n + to - 1) / to * to;
}

// A chunk_bytes mapping aligned to chunk_bytes: twice that mapped, the ends given back.
void* map_aligned_chunk() {
    void* area = ::mmap(nullptr, 2 * chunk_bytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) {
        throw std::bad_alloc();
    }
    const auto start = reinterpret_cast<std::uintptr_t>(area);
    const std::uintptr_t aligned = align_up(start, chunk_bytes);
    if (aligned > start) {
        ::munmap(area, aligned - start);
    }
    ::munmap(reinterpret_cast<void*>(aligned + chunk_bytes), start + chunk_bytes - aligned);
    return reinterpret_cast<void*>(aligned);
}
}  // namespace

struct RecordSlab::Chunk {
    RecordSlab* slab;
    Chunk* prev;  // in the slab's with_room_ list, while listed
    Chunk* next;
    void* free_list;       // records freed in this chunk, each holding the next one's address
    std::uint32_t live;    // records in use
    std::uint32_t carved;  // records handed out from the start of the space so far: the pages
                           // past them are not touched yet
    bool listed;

    static constexpr std::size_t header_bytes() { return align_up(sizeof(Chunk), record_align); }
    char* records() { return reinterpret_cast<char*>(this) + header_bytes(); }
    bool full() const { return free_list == nullptr && carved == slab->per_chunk_; }
};

// Every slab ever made, never destroyed: a record may outlive its thread (see the header).
struct SlabRegistry {
    static RecordSlab& make(std::size_t size) {
        static std::mutex lock;
        static std::forward_list<std::unique_ptr<RecordSlab>> slabs;
        const std::scoped_lock held(lock);
        slabs.push_front(std::unique_ptr<RecordSlab>(new RecordSlab(size)));
        return *slabs.front();
    }
};

RecordSlab& RecordSlab::local(std::size_t size) {
    thread_local std::vector<RecordSlab*> mine;  // one per record size: two or three
    for (RecordSlab* slab : mine) {
        if (slab->record_size_ == size) {
            return *slab;
        }
    }
    mine.push_back(&SlabRegistry::make(size));
    return *mine.back();
}

RecordSlab::RecordSlab(std::size_t size)
    : record_size_(size),
      slot_(align_up(std::max(size, sizeof(void*)), record_align)),
      per_chunk_(static_cast<std::uint32_t>((chunk_bytes - Chunk::header_bytes()) / slot_)) {
    assert(size <= max_record);
}

void* RecordSlab::allocate() {
    Chunk* chunk = with_room_ != nullptr ? with_room_ : new_chunk();
    void* record = nullptr;
    if (chunk->free_list != nullptr) {
        record = chunk->free_list;
        chunk->free_list = *static_cast<void**>(record);
    } else {
        record = chunk->records() + std::size_t{chunk->carved} * slot_;
        ++chunk->carved;
    }
    if (chunk->live++ == 0 && chunk == empty_) {
        empty_ = nullptr;
    }
    ++live_;
    if (chunk->full()) {
        unlink(chunk);
    }
    BG_SLAB_UNPOISON(record, slot_);
    return record;
}

void RecordSlab::deallocate(void* record) noexcept {
    auto* chunk = reinterpret_cast<Chunk*>(reinterpret_cast<std::uintptr_t>(record) &
                                           ~(std::uintptr_t{chunk_bytes} - 1));
    RecordSlab& slab = *chunk->slab;
    *static_cast<void**>(record) = chunk->free_list;
    chunk->free_list = record;
    BG_SLAB_POISON(record, slab.slot_);
    --slab.live_;
    if (!chunk->listed) {
        slab.link(chunk);
    }
    if (--chunk->live > 0) {
        return;
    }
    if (slab.empty_ == nullptr) {
        slab.empty_ = chunk;  // kept: the next record would map a chunk again
        return;
    }
    slab.release(chunk);
}

RecordSlab::Chunk* RecordSlab::new_chunk() {
    auto* chunk = static_cast<Chunk*>(map_aligned_chunk());
    *chunk = Chunk{.slab = this,
                   .prev = nullptr,
                   .next = nullptr,
                   .free_list = nullptr,
                   .live = 0,
                   .carved = 0,
                   .listed = false};
    BG_SLAB_ROOT(chunk);
    ++chunks_;
    link(chunk);
    return chunk;
}

// Records are taken from the front chunk. A chunk that has just had room again (it was full)
// goes to the front: records gather in full chunks and the others drain.
void RecordSlab::link(Chunk* chunk) {
    chunk->prev = nullptr;
    chunk->next = with_room_;
    if (with_room_ != nullptr) {
        with_room_->prev = chunk;
    }
    with_room_ = chunk;
    chunk->listed = true;
}

void RecordSlab::unlink(Chunk* chunk) {
    if (chunk->prev != nullptr) {
        chunk->prev->next = chunk->next;
    } else {
        with_room_ = chunk->next;
    }
    if (chunk->next != nullptr) {
        chunk->next->prev = chunk->prev;
    }
    chunk->listed = false;
}

void RecordSlab::release(Chunk* chunk) {
    unlink(chunk);
    --chunks_;
    BG_SLAB_UNROOT(chunk);
    ::munmap(chunk, chunk_bytes);
}

}  // namespace bg
