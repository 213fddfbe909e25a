#pragma once
// ConnectionSlots: a listener's connections by what each is doing, so that a full house never
// locks out the one who needs in (an operator's rollback, a load balancer's readiness probe). A
// connection over the bound takes the slot of the one that has waited longest, for its next
// request or for its client to read an answer (closing it); one whose whole request is already
// in its socket is not waiting. The control socket's `watch` streams, which are never idle-closed,
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
#include <string_view>

namespace bg {

class ConnectionSlots {
  public:
    using Clock = std::chrono::steady_clock;
    // What the slots need of a connection.
    struct Connection {
        std::function<void()> close;        // ends it (its socket)
        std::function<bool()> has_request;  // a whole request already sent (optional)
    };
    // Whether a whole request was sent: `end` (a head's blank line, a command's newline) in
    // what was `read` and not yet handled, or in the first bytes waiting in the socket `fd`
    // (2 KiB of them waiting count as one: a large head being read). A part of one is not: a
    // client stalling half-way holds no slot by it (what it sent is read in meanwhile).
    static bool request_pending(int fd, std::string_view read, std::string_view end);
    struct Slot {
        // idle: waiting for its next (or first) request; answering: its answer waits on its
        // client. Either may be taken, idle unless a whole request has come.
        enum class State { idle, answering, busy, watching };
        State state = State::idle;
        Clock::time_point idle_since = Clock::now();
        Connection connection;
        bool gone = false;     // released, or closed to make room: offered no more
        bool offered = false;  // to a waiter, whose it is until it claims it or leaves
    };
    using Handle = std::shared_ptr<Slot>;

    ConnectionSlots(std::size_t max_connections, std::size_t max_watchers)
        : max_connections_(max_connections), max_watchers_(max_watchers) {}

    // A slot for a new connection, idle; when all are taken, the connection waiting longest
    // (and not offered to a waiter) is closed and loses its own. Null when every slot is
    // busy, watching or offered. (It does not look at the line of waiters: take_in_turn does.)
    Handle take(Connection connection);
    // As take(), unless newcomers still without an offer wait already; else, or when no slot
    // can be had, waits in turn (at most `patience`) for a slot to be released or to stop
    // being busy: each such change is offered to the first in line without an offer, who
    // takes it when it wakes. Null when none came, or when as many newcomers wait already as
    // there are slots. (`connection` is the caller's, kept by reference while it waits.)
    boost::asio::awaitable<Handle> take_in_turn(const Connection& connection,
                                                Clock::duration patience);
    // The connection ended: its slot is free (a no-op for one that lost its slot).
    void release(const Handle& slot);
    // Waiting for its next request. One that was busy is offered to the first in line.
    void idle(const Handle& slot) { stop_working(slot, Slot::State::idle); }
    // Its answer waits on its client: offered to the first in line.
    void answering(const Handle& slot) { stop_working(slot, Slot::State::answering); }
    static void busy(Slot& slot) { slot.state = Slot::State::busy; }
    // False, and the slot stays as it was, past max_watchers.
    bool watch(Slot& slot);
    std::size_t size() const { return slots_.size(); }

  private:
    // A newcomer waiting its turn, in its coroutine's frame.
    struct Waiter {
        std::function<void()> wake;  // ends its wait now
        bool offered = false;
        bool room = false;         // offered a free place, not
        std::weak_ptr<Slot> slot;  // this slot, no longer busy
    };

    std::size_t max_connections_;
    std::size_t max_watchers_;
    std::list<Handle> slots_;
    std::list<Waiter*> waiting_;     // in order of arrival
    std::size_t rooms_offered_ = 0;  // free places offered, not yet claimed

    void stop_working(const Handle& slot, Slot::State now);
    // True when there is room, or once the slot that has waited longest and may be closed is;
    // neither a place nor a slot offered to a waiter counts.
    bool make_room();
    // The waiter's offer is no longer outstanding (taken, gone, or passed on).
    void withdraw(Waiter& waiter);
    // May be closed to make room: waiting on its client, or for a request that has not come.
    static bool closable(const Slot& slot);
    Handle add(const Connection& connection);
    // Offers a free place (null) or a slot no longer busy to the first in line without one.
    void offer(const Handle& slot);
    // The offered place or slot (or, when it went before the waiter's turn came, whatever
    // make_room finds), taken for a new slot; null when there is none.
    Handle claim(Waiter& waiter, const Connection& connection);
};

}  // namespace bg
