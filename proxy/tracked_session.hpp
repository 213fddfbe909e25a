#pragma once
// TrackedSession: registers a client connection with its worker (graceful shutdown, deadlines,
// the close sweep, the connection limit) and unregisters it whatever way the connection ends,
// whether it is being served or parked between requests. Worker thread only.

#include <cstddef>

#include "io_types.hpp"
#include "record_slab.hpp"
#include "session_handle.hpp"

namespace bg {

class Worker;

// Lives as long as its connection: a slab record (record_slab.hpp).
class TrackedSession : public SlabRecord {
  public:
    TrackedSession(Worker& worker, Socket& client, std::size_t listener);
    ~TrackedSession();
    TrackedSession(const TrackedSession&) = delete;
    TrackedSession& operator=(const TrackedSession&) = delete;
    SessionHandle& handle() { return handle_; }

  private:
    Worker& worker_;
    std::size_t listener_;
    SessionHandle handle_;
};

}  // namespace bg
