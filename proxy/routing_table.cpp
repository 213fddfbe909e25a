#include "routing_table.hpp"

#include <algorithm>

namespace bg {

const char* to_string(Colour colour) {
    return colour == Colour::blue ? "blue" : "green";
}

std::optional<Colour> colour_from_name(std::string_view name) {
    if (name == "blue") {
        return Colour::blue;
    }
    if (name == "green") {
        return Colour::green;
    }
    return std::nullopt;
}

const char* to_string(AdminState state) {
    switch (state) {
        case AdminState::ready:
            return "ready";
        case AdminState::drain:
            return "drain";
        case AdminState::maint:
            return "maint";
    }
    return "?";
}

RoutingTable::RoutingTable(std::uint64_t version, std::array<ColourPool, 2> pools)
    : version_(version), pools_(std::move(pools)) {
    for (auto& pool : pools_) {
        pool.eligible.clear();
        for (std::uint32_t i = 0; i < pool.backends.size(); ++i) {
            if (pool.backends[i].takes_new_requests()) {
                pool.eligible.push_back(i);
            }
            backend_id_limit_ = std::max(backend_id_limit_, pool.backends[i].id + 1);
        }
    }
    if (pools_[0].eligible.empty() && pools_[1].eligible.empty()) {
        panic_ = true;
        // A drained backend that still passes its checks beats one that fails them: the drain
        // gives way only when nothing ready can serve. Failing backends only when none passes.
        for (bool healthy_only : {true, false}) {
            for (auto& pool : pools_) {
                for (std::uint32_t i = 0; i < pool.backends.size(); ++i) {
                    const Backend& backend = pool.backends[i];
                    if (backend.admin != AdminState::maint && (backend.healthy || !healthy_only)) {
                        pool.eligible.push_back(i);
                    }
                }
            }
            if (!pools_[0].eligible.empty() || !pools_[1].eligible.empty()) {
                break;
            }
        }
    }
    const bool blue_can = !pools_[0].eligible.empty();
    const bool green_can = !pools_[1].eligible.empty();
    effective_bp_ = {pools_[0].weight_bp, pools_[1].weight_bp};
    if (blue_can && !green_can) {
        effective_bp_ = {10000, 0};
    } else if (green_can && !blue_can) {
        effective_bp_ = {0, 10000};
    }
}

}  // namespace bg
