#pragma once
// ClientCloseWatch: notices a client that closes its connection while its request is in flight
// (waiting for the backend, or while the response streams), so the backend is released at once
// instead of working for nobody until its timeout: the upstream socket is closed and never
// pooled (nginx's 499). Worker thread only.

#include <memory>

#include "io_types.hpp"

namespace bg {

class ClientCloseWatch {
  public:
    explicit ClientCloseWatch(Socket& client);
    ~ClientCloseWatch();
    ClientCloseWatch(const ClientCloseWatch&) = delete;
    ClientCloseWatch& operator=(const ClientCloseWatch&) = delete;

    // Watches the client while nothing else reads it; on a close (FIN or reset) closes
    // `*upstream` (read when the close is seen: the caller may point it at a new connection).
    // Data from the client (a pipelined request) ends the watch: the client is there.
    void start(Socket* const* upstream);
    // Ends the watch before the client is read again. Harmless when not watching.
    void stop();
    // The client closed while watched.
    bool client_gone() const;

  private:
    struct State;
    static void watch(const std::shared_ptr<State>& state);
    Socket& client_;
    std::shared_ptr<State> state_;  // shared with the pending peek, which may outlive a request
};

}  // namespace bg
