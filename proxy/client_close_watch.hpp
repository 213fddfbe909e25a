#pragma once
// ClientCloseWatch: notices a client that closes its connection while its request is in flight
// (waiting for the backend, or while the response streams), so the backend is released at once
// instead of working for nobody until its timeout: the upstream socket is closed and never
// pooled (nginx's 499). The worker looks for such closes in one poll() over every watched
// connection every timeouts.client_close_check (Worker::sweep_in_flight): a per-request
// peek cost a recv() per request (7% of a request's CPU), the sweep a few syscalls a second.
// Worker thread only.

#include "session_handle.hpp"

namespace bg {

class Worker;

class ClientCloseWatch {
  public:
    ClientCloseWatch(Worker& worker, SessionHandle& handle) : worker_(worker), handle_(handle) {}
    ~ClientCloseWatch() { stop(); }
    ClientCloseWatch(const ClientCloseWatch&) = delete;
    ClientCloseWatch& operator=(const ClientCloseWatch&) = delete;

    // Watches the client while nothing else reads it; on a close (FIN or reset) the sweep
    // closes the handle's upstream socket, whichever it is then.
    void start();
    // Ends the watch before the client is read again. Harmless when not watching.
    void stop() { handle_.watch_close = false; }
    // The client closed while watched.
    bool client_gone() const { return handle_.client_gone; }

  private:
    Worker& worker_;
    SessionHandle& handle_;
};

}  // namespace bg
