#pragma once
// ConnectionSlots: a listener's connections by what each is doing, so that a full house never
// locks out the one who needs in (an operator's rollback, a load balancer's readiness probe). A
// connection over the bound takes the slot of the one that has waited longest for its next
// request (closing it), and the control socket's `watch` streams, which are never idle-closed,
// have a bound of their own (max_watchers, below max_connections). A newcomer finding the house
// full of requests in flight and watchers waits its turn (take_in_turn) for the first slot to
// free or go idle, so a readiness probe is answered however busy its neighbours; only a house
// that stays full for the newcomer's patience, or a queue of newcomers as long as the house,
// turns one away. Used by the control socket and the admin listener. Control thread only.

#include <boost/asio/awaitable.hpp>
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
    // As take(), but when every slot is busy or watching, waits (at most `patience`) for the
    // first to be released or to go idle, in turn with other newcomers. Null when none did,
    // or when as many newcomers wait already as there are slots. (`close` is the caller's, kept
    // by reference while it waits.)
    boost::asio::awaitable<Handle> take_in_turn(const std::function<void()>& close,
                                                Clock::duration patience);
    // The connection ended: its slot is free (a no-op for one that lost its slot).
    void release(const Handle& slot);
    // Waiting for its next request, or for its client to read an answer: its slot may be
    // taken (and a newcomer waiting its turn is told).
    void idle(Slot& slot);
    static void busy(Slot& slot) { slot.state = Slot::State::busy; }
    // False, and the slot stays as it was, past max_watchers.
    bool watch(Slot& slot);
    std::size_t size() const { return slots_.size(); }

  private:
    std::size_t max_connections_;
    std::size_t max_watchers_;
    std::list<Handle> slots_;
    // Newcomers waiting their turn: each entry wakes one (it then tries take() again).
    std::list<std::function<void()>> waiting_;

    void wake_waiting();
};

}  // namespace bg
