#include "connection_slots.hpp"

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace bg {

namespace asio = boost::asio;

bool ConnectionSlots::closable(const Slot& slot) {
    if (slot.state == Slot::State::answering) {
        return true;
    }
    // A new connection whose head is in its socket, or a pipelined next request, is about to
    // be busy: closing it would lose a request already sent (a probe's, say).
    return slot.state == Slot::State::idle &&
           !(slot.connection.has_input && slot.connection.has_input());
}

ConnectionSlots::Handle ConnectionSlots::add(const Connection& connection) {
    auto slot = std::make_shared<Slot>();
    slot->connection = connection;
    slots_.push_back(slot);
    return slot;
}

ConnectionSlots::Handle ConnectionSlots::take(Connection connection) {
    if (slots_.size() >= max_connections_) {
        auto longest = slots_.end();
        for (auto it = slots_.begin(); it != slots_.end(); ++it) {
            if ((longest == slots_.end() || (*it)->idle_since < (*longest)->idle_since) &&
                closable(**it)) {
                longest = it;
            }
        }
        if (longest == slots_.end()) {
            return nullptr;
        }
        const Handle evicted = *longest;
        slots_.erase(longest);
        evicted->connection.close();
    }
    return add(connection);
}

asio::awaitable<ConnectionSlots::Handle> ConnectionSlots::take_in_turn(const Connection& connection,
                                                                       Clock::duration patience) {
    if (waiting_.empty()) {  // else the first in line comes first
        if (Handle slot = take(connection)) {
            co_return slot;
        }
    }
    if (waiting_.size() >= max_connections_) {
        co_return nullptr;
    }
    asio::steady_timer timer(co_await asio::this_coro::executor);
    timer.expires_after(patience);
    Waiter me;
    me.wake = [&timer] { timer.cancel(); };
    // In line until it leaves, however it leaves (the coroutine destroyed included); an offer
    // it leaves unused goes to the next in line.
    struct InLine {
        ConnectionSlots& slots;
        Waiter& me;
        std::list<Waiter*>::iterator entry;
        ~InLine() {
            slots.waiting_.erase(entry);
            const Handle slot = me.slot.lock();
            if (me.offered && (me.room || slot != nullptr)) {
                slots.offer(slot);
            }
        }
    } in_line{*this, me, waiting_.insert(waiting_.end(), &me)};
    for (;;) {
        co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
        if (me.offered) {
            // Woken by a posted completion, so a connection that went idle has begun writing
            // its answer: what the socket takes at once still reaches its client.
            if (Handle slot = claim(me, connection)) {
                co_return slot;
            }
        }
        if (Clock::now() >= timer.expiry()) {
            co_return nullptr;
        }
    }
}

ConnectionSlots::Handle ConnectionSlots::claim(Waiter& waiter, const Connection& connection) {
    waiter.offered = false;
    const Handle offered = waiter.room ? nullptr : waiter.slot.lock();
    const auto it = offered ? std::find(slots_.begin(), slots_.end(), offered) : slots_.end();
    if (it != slots_.end() && closable(*offered)) {
        slots_.erase(it);
        offered->connection.close();
    } else if (slots_.size() >= max_connections_) {
        return nullptr;  // (an offered slot that ended left a free place: taken as well)
    }
    return add(connection);
}

void ConnectionSlots::offer(const Handle& slot) {
    for (Waiter* waiter : waiting_) {
        if (!waiter->offered) {
            waiter->offered = true;
            waiter->room = slot == nullptr;
            waiter->slot = slot;
            waiter->wake();
            return;
        }
    }
}

void ConnectionSlots::release(const Handle& slot) {
    if (slot != nullptr && slots_.remove(slot) > 0) {
        offer(nullptr);
    }
}

void ConnectionSlots::stop_working(const Handle& slot, Slot::State now) {
    // (A control connection's read, as `status`, never makes it busy: its reply is offered.)
    const bool offered = slot->state == Slot::State::busy || now == Slot::State::answering;
    slot->state = now;
    slot->idle_since = Clock::now();
    if (offered) {
        offer(slot);
    }
}

bool ConnectionSlots::watch(Slot& slot) {
    const auto watching = std::count_if(slots_.begin(), slots_.end(), [](const Handle& s) {
        return s->state == Slot::State::watching;
    });
    if (static_cast<std::size_t>(watching) >= max_watchers_) {
        return false;
    }
    slot.state = Slot::State::watching;
    return true;
}

}  // namespace bg
