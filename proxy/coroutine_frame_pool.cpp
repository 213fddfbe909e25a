#include "coroutine_frame_pool.hpp"

#include <array>
#include <boost/asio/detail/memory.hpp>

namespace bg::coroutine_frames {

namespace {

constexpr std::size_t class_size = 64;
constexpr std::size_t classes = 128;                  // frames up to 8 KiB are recycled
constexpr std::size_t budget = std::size_t{1} << 20;  // bytes a thread keeps at most
constexpr std::size_t frame_align = BOOST_ASIO_DEFAULT_ALIGN;

struct FreeFrame {
    FreeFrame* next;
};

// Whether this thread's lists are gone (its exit has begun): frames freed after that go back to
// malloc. Trivially destructible, so it can be read at any point of the thread's exit.
thread_local bool lists_gone = false;

// This thread's free lists. Trivially destructible and constant-initialized, so every access is
// a plain thread-pointer load; with a destructor each one went through the thread_local's
// initialization wrapper (~20 instructions per frame, 16 frames per proxied request).
struct FreeLists {
    std::array<FreeFrame*, classes> heads;
    std::size_t kept;  // bytes in the lists
};
thread_local constinit FreeLists lists{};

void clear_lists() {
    for (FreeFrame*& head : lists.heads) {
        while (head != nullptr) {
            FreeFrame* next = head->next;
            boost::asio::aligned_delete(head);
            head = next;
        }
    }
    lists.kept = 0;
}

// Frees the lists when the thread exits. Made on the thread's first allocation from malloc,
// which comes before anything can be in its lists.
struct ListsAtExit {
    ~ListsAtExit() {
        lists_gone = true;
        clear_lists();
    }
};

void clear_lists_at_exit() {
    thread_local ListsAtExit at_exit;
    (void)at_exit;
}

// The class of a frame of `size` bytes; frames of a class all get blocks of its full size, so
// any block in its list fits any of its frames. Classes from `classes` on are not recycled.
std::size_t class_of(std::size_t size) {
    return size == 0 ? 1 : (size + class_size - 1) / class_size;
}

}  // namespace

void* take(std::size_t size, std::size_t align) {
    const std::size_t c = class_of(size);
    if (c >= classes || lists_gone) {
        return boost::asio::aligned_new(align, size);
    }
    if (FreeFrame* frame = lists.heads[c]; frame != nullptr && align <= frame_align) {
        lists.heads[c] = frame->next;
        lists.kept -= c * class_size;
        return frame;
    }
    clear_lists_at_exit();
    return boost::asio::aligned_new(align, c * class_size);
}

void give(void* frame, std::size_t size) {
    const std::size_t c = class_of(size);
    if (c >= classes || lists_gone || lists.kept + c * class_size > budget) {
        boost::asio::aligned_delete(frame);
        return;
    }
    auto* free_frame = static_cast<FreeFrame*>(frame);
    free_frame->next = lists.heads[c];
    lists.heads[c] = free_frame;
    lists.kept += c * class_size;
}

std::size_t kept() {
    return lists_gone ? 0 : lists.kept;
}

void release() {
    if (!lists_gone) {
        clear_lists();
    }
}

}  // namespace bg::coroutine_frames
