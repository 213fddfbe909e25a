#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include "record_slab.hpp"

namespace {

// Sizes no other test or the proxy uses on this thread: each test case sees its own slab.
struct Record : bg::SlabRecord {
    char bytes[200];
};

}  // namespace

TEST_CASE("records are packed into chunks and every chunk but one goes back when they do") {
    bg::RecordSlab& slab = bg::RecordSlab::local(200);
    const std::size_t chunks_before = slab.chunks();
    std::vector<void*> records;
    std::set<std::uintptr_t> distinct;
    for (int i = 0; i < 1000; ++i) {
        void* r = slab.allocate();
        CHECK(reinterpret_cast<std::uintptr_t>(r) % 16 == 0);
        std::memset(r, 0xab, 200);  // each record's bytes are its own
        distinct.insert(reinterpret_cast<std::uintptr_t>(r));
        records.push_back(r);
    }
    CHECK(distinct.size() == 1000);
    CHECK(slab.live() == 1000);
    // 64 KiB chunks of 208-byte slots: 314 records each, so 4 chunks.
    CHECK(slab.chunks() - chunks_before <= 4);
    for (void* r : records) {
        bg::RecordSlab::deallocate(r);
    }
    CHECK(slab.live() == 0);
    CHECK(slab.chunks() == 1);  // the empty one kept
    // The kept chunk serves again without a new mapping.
    void* again = slab.allocate();
    CHECK(slab.chunks() == 1);
    bg::RecordSlab::deallocate(again);
}

TEST_CASE("records freed out of order are reused before a new chunk is mapped") {
    bg::RecordSlab& slab = bg::RecordSlab::local(48);
    std::vector<void*> records;
    for (int i = 0; i < 3000; ++i) {
        records.push_back(slab.allocate());
    }
    const std::size_t chunks = slab.chunks();
    for (std::size_t i = 0; i < records.size(); i += 2) {
        bg::RecordSlab::deallocate(records[i]);
        records[i] = nullptr;
    }
    for (auto& r : records) {
        if (r == nullptr) {
            r = slab.allocate();
        }
    }
    CHECK(slab.chunks() == chunks);
    for (void* r : records) {
        bg::RecordSlab::deallocate(r);
    }
    CHECK(slab.live() == 0);
    CHECK(slab.chunks() == 1);
}

TEST_CASE("a record may be freed after its thread has stopped") {
    std::vector<Record*> made;
    bg::RecordSlab* theirs = nullptr;
    std::thread worker([&made, &theirs] {
        for (int i = 0; i < 500; ++i) {
            made.push_back(new Record);
        }
        theirs = &bg::RecordSlab::local(sizeof(Record));
    });
    worker.join();
    CHECK(theirs->live() == 500);
    CHECK(theirs->chunks() == 2);
    for (Record* r : made) {
        delete r;
    }
    CHECK(theirs->live() == 0);
    CHECK(theirs->chunks() == 1);
    CHECK(theirs != &bg::RecordSlab::local(sizeof(Record)));
}
