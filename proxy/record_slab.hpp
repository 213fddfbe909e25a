#pragma once
// RecordSlab: the small records that live as long as a client connection (TrackedSession,
// ParkedClient), packed into 64 KiB chunks of their own, apart from malloc's heap.
//
// From malloc they land in the holes that a request's buffers and frames leave, so after a
// burst of requests a few hundred bytes of record pin each 4 KiB page the burst freed, and no
// trim can give those pages back: 8,000 idle connections opened 200 at a time held 1.2 MiB
// more than the same records packed here (bench/idle.sh). A chunk goes back to the system
// when its last record is freed, except one empty chunk kept against churn at a boundary.
//
// One slab per thread and record size. A record is freed on the thread that made it while that
// thread runs; once it has stopped, by any one thread (a worker's destructor frees what its
// connections held).

#include <cstddef>
#include <cstdint>

namespace bg {

class RecordSlab {
  public:
    // The calling thread's slab for records of `size` bytes (at most 1 KiB).
    static RecordSlab& local(std::size_t size);
    // Throws std::bad_alloc when the system has no memory for a new chunk.
    void* allocate();
    // `record` came from allocate() of any slab.
    static void deallocate(void* record) noexcept;

    std::size_t chunks() const { return chunks_; }  // mapped, the kept empty one included
    std::size_t live() const { return live_; }      // records allocated and not yet freed

    RecordSlab(const RecordSlab&) = delete;
    RecordSlab& operator=(const RecordSlab&) = delete;

  private:
    struct Chunk;
    explicit RecordSlab(std::size_t size);
    friend struct SlabRegistry;

    Chunk* new_chunk();
    void link(Chunk* chunk);
    void unlink(Chunk* chunk);
    void release(Chunk* chunk);

    std::size_t record_size_;  // as asked
    std::size_t slot_;         // as laid out: aligned, room for the free list's link
    std::uint32_t per_chunk_;
    Chunk* with_room_ = nullptr;  // chunks with a free record, most recently freed into first
    Chunk* empty_ = nullptr;      // the one empty chunk kept (also in with_room_)
    std::size_t chunks_ = 0;
    std::size_t live_ = 0;
};

// A class whose objects are connection records: `new` and `delete` go to the slab.
struct SlabRecord {
    static void* operator new(std::size_t size) { return RecordSlab::local(size).allocate(); }
    static void operator delete(void* record) noexcept { RecordSlab::deallocate(record); }
};

}  // namespace bg
