#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "coroutine_frame_pool.hpp"

namespace frames = bg::coroutine_frames;

TEST_CASE("a freed coroutine frame is reused by the next frame of its size class") {
    void* first = frames::take(100, alignof(std::max_align_t));
    frames::give(first, 100);
    void* same_class = frames::take(120, alignof(std::max_align_t));  // 65..128 bytes: one class
    CHECK(same_class == first);
    frames::give(same_class, 120);
    void* other_class = frames::take(200, alignof(std::max_align_t));
    CHECK(other_class != first);
    frames::give(other_class, 200);
}

TEST_CASE("a frame taken with a stricter alignment gets it") {
    void* frame = frames::take(100, 256);
    CHECK(reinterpret_cast<std::uintptr_t>(frame) % 256 == 0);
    frames::give(frame, 100);
}

TEST_CASE("a thread keeps at most 1 MiB of freed frames") {
    constexpr std::size_t size = 8000;  // the largest class: 8,000 -> 8,000 bytes a block
    const std::size_t before = frames::kept();
    std::vector<void*> taken;
    for (int i = 0; i < 300; ++i) {  // 2.4 MB
        taken.push_back(frames::take(size, alignof(std::max_align_t)));
    }
    for (void* frame : taken) {
        frames::give(frame, size);
    }
    CHECK(frames::kept() <= std::size_t{1} << 20);
    CHECK(frames::kept() > (std::size_t{1} << 20) - 8000);  // the rest went back to malloc
    void* again = frames::take(size, alignof(std::max_align_t));
    const std::size_t after_take = frames::kept();
    frames::give(again, size);
    CHECK(frames::kept() == after_take + 8000);
    CHECK(before <= frames::kept());
    frames::release();
    CHECK(frames::kept() == 0);
}
