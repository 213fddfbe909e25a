#pragma once
// ConnectionSlots: a listener's connections by what each is doing, so that a full house never
// locks out the one who needs in (an operator's rollback, a load balancer's readiness probe). A
// connection over the bound takes the slot of the one that has waited longest for its next
// request (closing it), and the control socket's `watch` streams, which are never idle-closed,
// have a bound of their own (max_watchers, below max_connections). Only a house full of
// requests in flight and watchers turns one away. Used by the control socket and the admin
// listener. Control thread only.

#include <chrono>
#include <cstddef>
#include <functional>
#include <list>
#include <memory>

namespace bg {

class ConnectionSlots {
  public:
    using Clock = std::chrono::steady_clock;
    struct Slot {
        enum class State { idle, busy, watching };
        State state = State::idle;
        Clock::time_point idle_since = Clock::now();
        std::function<void()> close;  // ends the connection (its socket)
    };
    using Handle = std::shared_ptr<Slot>;

    ConnectionSlots(std::size_t max_connections, std::size_t max_watchers)
        : max_connections_(max_connections), max_watchers_(max_watchers) {}

    // A slot for a new connection, idle; when all are taken, the connection idle longest is
    // closed and loses its own. Null when every slot is busy or watching.
    Handle take(std::function<void()> close);
    // The connection ended: its slot is free (a no-op for one that lost its slot).
    void release(const Handle& slot);
    static void idle(Slot& slot);
    static void busy(Slot& slot) { slot.state = Slot::State::busy; }
    // False, and the slot stays as it was, past max_watchers.
    bool watch(Slot& slot);
    std::size_t size() const { return slots_.size(); }

  private:
    std::size_t max_connections_;
    std::size_t max_watchers_;
    std::list<Handle> slots_;
};

}  // namespace bg
