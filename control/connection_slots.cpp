#include "connection_slots.hpp"

#include <algorithm>

namespace bg {

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

void ConnectionSlots::release(const Handle& slot) {
    slots_.remove(slot);
}

void ConnectionSlots::idle(Slot& slot) {
    slot.state = Slot::State::idle;
    slot.idle_since = Clock::now();
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
