#include "tracked_session.hpp"

#include "worker.hpp"

namespace bg {

TrackedSession::TrackedSession(Worker& worker, Socket& client, std::size_t listener)
    : worker_(worker), listener_(listener) {
    handle_.client = &client;
    handle_.listener = listener;
    worker_.track(&handle_);
    WorkerStats::add(worker_.stats().connections_open);
}

TrackedSession::~TrackedSession() {
    worker_.untrack(&handle_);
    WorkerStats::sub(worker_.stats().connections_open);
    if (!handle_.slot_released) {
        worker_.connection_closed(listener_);
    }
}

}  // namespace bg
