#include "connection_slots.hpp"

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <string>

namespace bg {

namespace asio = boost::asio;

bool ConnectionSlots::request_pending(int fd, std::string_view read, std::string_view end) {
    if (read.find(end) != std::string_view::npos) {
        return true;
    }
    std::array<char, 2048> waiting;
    const ssize_t n = ::recv(fd, waiting.data(), waiting.size(), MSG_PEEK | MSG_DONTWAIT);
    if (n <= 0) {
        return false;
    }
    if (static_cast<std::size_t>(n) == waiting.size()) {
        return true;
    }
    // The end may straddle what was read and what waits.
    std::string joined(read.substr(read.size() - std::min(read.size(), end.size() - 1)));
    joined.append(waiting.data(), static_cast<std::size_t>(n));
    return joined.find(end) != std::string::npos;
}

bool ConnectionSlots::closable(const Slot& slot) {
    if (slot.state == Slot::State::answering) {
        return true;
    }
    // A new connection whose head is in its socket, or a pipelined next request, is about to
    // be busy: closing it would lose a request already sent (a probe's, say).
    return slot.state == Slot::State::idle &&
           !(slot.connection.has_request && slot.connection.has_request());
}

ConnectionSlots::Handle ConnectionSlots::add(const Connection& connection) {
    auto slot = std::make_shared<Slot>();
    slot->connection = connection;
    slots_.push_back(slot);
    return slot;
}

bool ConnectionSlots::make_room() {
    if (slots_.size() + rooms_offered_ < max_connections_) {
        return true;
    }
    auto longest = slots_.end();
    for (auto it = slots_.begin(); it != slots_.end(); ++it) {
        if ((longest == slots_.end() || (*it)->idle_since < (*longest)->idle_since) &&
            !(*it)->offered && closable(**it)) {
            longest = it;
        }
    }
    if (longest == slots_.end()) {
        return false;
    }
    const Handle closed = *longest;
    slots_.erase(longest);
    closed->gone = true;
    closed->connection.close();
    return true;
}

ConnectionSlots::Handle ConnectionSlots::take(Connection connection) {
    return make_room() ? add(connection) : nullptr;
}

asio::awaitable<ConnectionSlots::Handle> ConnectionSlots::take_in_turn(const Connection& connection,
                                                                       Clock::duration patience) {
    // Behind a newcomer still waiting for an offer, in line; else (changes may have come
    // while every waiter held one) whatever is free now and not offered.
    const bool line_moves = std::all_of(waiting_.begin(), waiting_.end(),
                                        [](const Waiter* waiter) { return waiter->offered; });
    if (line_moves && make_room()) {
        co_return add(connection);
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
            if (me.offered) {
                const Handle slot = me.slot.lock();
                const bool room = me.room;
                slots.withdraw(me);
                if (room || slot != nullptr) {
                    slots.offer(slot);
                }
            }
        }
    } in_line{*this, me, waiting_.insert(waiting_.end(), &me)};
    for (;;) {
        co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
        const bool expired = Clock::now() >= timer.expiry();
        if (me.offered || expired) {
            // Woken by a posted completion, so a connection that went idle has begun writing
            // its answer: what the socket takes at once still reaches its client.
            if (Handle slot = claim(me, connection)) {
                co_return slot;
            }
        }
        if (expired) {
            co_return nullptr;
        }
    }
}

void ConnectionSlots::withdraw(Waiter& waiter) {
    if (!waiter.offered) {
        return;
    }
    waiter.offered = false;
    if (waiter.room) {
        --rooms_offered_;
    } else if (const Handle slot = waiter.slot.lock()) {
        slot->offered = false;
    }
}

ConnectionSlots::Handle ConnectionSlots::claim(Waiter& waiter, const Connection& connection) {
    const Handle offered = waiter.offered && !waiter.room ? waiter.slot.lock() : nullptr;
    withdraw(waiter);
    if (offered != nullptr && !offered->gone && closable(*offered)) {
        slots_.remove(offered);
        offered->gone = true;
        offered->connection.close();
    } else if (!make_room()) {
        return nullptr;
    }
    return add(connection);
}

void ConnectionSlots::offer(const Handle& slot) {
    if (slot != nullptr && (slot->gone || slot->offered)) {
        return;  // (a connection closed to make room, winding down; or offered already)
    }
    for (Waiter* waiter : waiting_) {
        if (!waiter->offered) {
            waiter->offered = true;
            waiter->room = slot == nullptr;
            waiter->slot = slot;
            if (slot == nullptr) {
                ++rooms_offered_;
            } else {
                slot->offered = true;
            }
            waiter->wake();
            return;
        }
    }
}

void ConnectionSlots::release(const Handle& slot) {
    if (slot == nullptr || slots_.remove(slot) == 0) {
        return;
    }
    slot->gone = true;
    if (slot->offered) {
        // Its place goes to the waiter it was offered to.
        for (Waiter* waiter : waiting_) {
            if (waiter->offered && !waiter->room && waiter->slot.lock() == slot) {
                waiter->room = true;
                waiter->slot.reset();
                ++rooms_offered_;
                return;
            }
        }
    }
    offer(nullptr);
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
