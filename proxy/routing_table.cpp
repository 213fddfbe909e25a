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

RoutingTablePtr make_initial_table(const Config& config) {
    std::array<ColourPool, 2> pools;
    std::uint32_t next_id = 0;
    for (Colour colour : all_colours) {
        const PoolConfig& source = colour == Colour::blue ? config.blue : config.green;
        ColourPool& pool = pools[index_of(colour)];
        pool.weight_bp = colour == Colour::blue ? config.blue_weight_bp : config.green_weight_bp;
        for (const auto& backend : source.backends) {
            pool.backends.push_back(Backend{next_id++, backend.name, colour, backend.address,
                                            AdminState::ready, true, source.tls_context,
                                            source.send_proxy_protocol});
        }
    }
    auto table = std::make_shared<RoutingTable>(1, std::move(pools));
    // (As the Switchboard's initial state: a split in the config begins at version 1.)
    table->set_split_since(config.blue_weight_bp > 0 && config.green_weight_bp > 0 ? 1 : 0);
    return table;
}

}  // namespace bg
