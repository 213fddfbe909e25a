#include "connection_slots.hpp"

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace bg {

namespace asio = boost::asio;

ConnectionSlots::Handle ConnectionSlots::take(std::function<void()> close) {
    if (slots_.size() >= max_connections_) {
        auto longest = slots_.end();
        for (auto it = slots_.begin(); it != slots_.end(); ++it) {
            if ((*it)->state == Slot::State::idle &&
                (longest == slots_.end() || (*it)->idle_since < (*longest)->idle_since)) {
                longest = it;
            }
        }
        if (longest == slots_.end()) {
            return nullptr;
        }
        const Handle evicted = *longest;
        slots_.erase(longest);
        evicted->close();
    }
    auto slot = std::make_shared<Slot>();
    slot->close = std::move(close);
    slots_.push_back(slot);
    return slot;
}

asio::awaitable<ConnectionSlots::Handle> ConnectionSlots::take_in_turn(
    const std::function<void()>& close, Clock::duration patience) {
    Handle slot = take(close);
    if (slot || waiting_.size() >= max_connections_) {
        co_return slot;
    }
    asio::steady_timer timer(co_await asio::this_coro::executor);
    timer.expires_after(patience);
    for (;;) {
        {
            // Out of the queue however the wait ends, the coroutine destroyed included.
            struct Queued {
                std::list<std::function<void()>>& queue;
                std::list<std::function<void()>>::iterator entry;
                ~Queued() { queue.erase(entry); }
            } queued{waiting_, waiting_.insert(waiting_.end(), [&timer] { timer.cancel(); })};
            co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
        }
        // Woken once the connection going idle has begun writing its answer (the wake is
        // posted), so what the socket takes at once is still delivered if it is the one closed.
        slot = take(close);
        if (slot || Clock::now() >= timer.expiry()) {
            co_return slot;
        }
    }
}

void ConnectionSlots::release(const Handle& slot) {
    slots_.remove(slot);
    wake_waiting();
}

void ConnectionSlots::idle(Slot& slot) {
    slot.state = Slot::State::idle;
    slot.idle_since = Clock::now();
    wake_waiting();
}

void ConnectionSlots::wake_waiting() {
    for (auto& wake : waiting_) {
        wake();
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
