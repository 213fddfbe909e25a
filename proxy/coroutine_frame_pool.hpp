#pragma once
// Coroutine frames recycled per thread, by size class.
//
// Asio allocates each coroutine's frame through its per-thread recycling cache: a few slots,
// first fit, and only for frames up to 1020 bytes. A request runs a dozen coroutines, several
// of them larger than that, and a new connection runs all of them afresh: perf's malloc probe
// found 72% of a Connection: close request's 19 mallocs were frames. Here frames get free lists
// per 64-byte size class (up to 8 KiB) per thread, within a byte budget, so a thread reuses
// what it freed whatever the sizes.
//
// This header replaces Asio's allocation of frames (an explicit specialization of
// thread_info_base's allocate and deallocate for awaitable_frame_tag), so every translation
// unit must see it before it uses Asio's coroutines: CMake force-includes it through the
// bg_asio target.

#include <boost/asio/detail/thread_info_base.hpp>
#include <cstddef>

namespace bg::coroutine_frames {

void* take(std::size_t size, std::size_t align);
void give(void* frame, std::size_t size);
// Bytes this thread keeps in its lists (at most 1 MiB).
std::size_t kept();
// Gives this thread's lists back to malloc: after a burst, whose frames they would keep
// (HeapTrim, before its malloc_trim).
void release();

}  // namespace bg::coroutine_frames

namespace boost::asio::detail {

template <>
inline void* thread_info_base::allocate<thread_info_base::awaitable_frame_tag>(awaitable_frame_tag,
                                                                               thread_info_base*,
                                                                               std::size_t size,
                                                                               std::size_t align) {
    return bg::coroutine_frames::take(size, align);
}

template <>
inline void thread_info_base::deallocate<thread_info_base::awaitable_frame_tag>(awaitable_frame_tag,
                                                                                thread_info_base*,
                                                                                void* frame,
                                                                                std::size_t size) {
    bg::coroutine_frames::give(frame, size);
}

}  // namespace boost::asio::detail
