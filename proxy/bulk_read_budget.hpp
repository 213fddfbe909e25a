#pragma once
// BulkReadBudget: how many of a worker's bodies are read in bulk-sized pieces at once
// (server.bulk_readers). Each holds up to two bulk_buffer_size buffers for as long as its body
// lasts (its own and, from a TLS client, OpenSSL's record buffer), so clients that send a
// burst of body and then trickle the rest cannot make every connection hold them: past the
// budget a body is read in buffer_size pieces. Worker thread only.

#include <cstddef>

namespace bg {

class BulkReadBudget {
  public:
    // One more body read in bulk, unless `most` are already.
    bool take(std::size_t most) {
        if (in_use_ >= most) {
            return false;
        }
        ++in_use_;
        return true;
    }
    void give() { --in_use_; }

  private:
    std::size_t in_use_ = 0;
};

}  // namespace bg
