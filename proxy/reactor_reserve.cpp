#include "reactor_reserve.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <optional>

namespace bg {

// Each record is made by registering one descriptor that epoll refuses (/dev/null: EPERM, which
// asio takes as registered with no events), many times over: no descriptor is taken from the
// ones connections need, however large the batch. Released, the records go to the reactor's
// free list, where the next sockets find them.
void ReactorReserve::ensure(std::size_t open) {
    if (reserved_ >= open) {
        return;
    }
    const int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null < 0) {
        return;  // out of descriptors: try again at the next need
    }
    while (reserved_ < open) {
        std::array<std::optional<boost::asio::posix::stream_descriptor>, batch> held;
        std::size_t made = 0;
        for (auto& descriptor : held) {
            boost::system::error_code ec;
            descriptor.emplace(io_);
            descriptor->assign(null, ec);
            if (ec) {
                break;
            }
            ++made;
        }
        for (std::size_t i = 0; i < made; ++i) {
            held[i]->release();  // the record to the free list; the descriptor is not closed
        }
        reserved_ += made;
        if (made < batch) {
            break;
        }
    }
    ::close(null);
}

}  // namespace bg
