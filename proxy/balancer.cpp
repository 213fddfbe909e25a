#include "balancer.hpp"

#include <algorithm>

namespace bg {

Balancer::Balancer(BalancePolicy policy, std::uint64_t seed)
    : policy_(policy), rng_state_(seed ^ 0x9E3779B97F4A7C15ull) {
    colour_credit_ = static_cast<std::uint32_t>(next_random() % 10000);
}

// splitmix64: fast, good enough for traffic splitting, and seedable for tests.
std::uint64_t Balancer::next_random() {
    std::uint64_t z = (rng_state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

Colour Balancer::pick_colour(const RoutingTable& table) {
    const std::uint32_t blue_bp = table.effective_weight_bp(Colour::blue);
    if (blue_bp >= 10000) {
        return Colour::blue;
    }
    if (blue_bp == 0) {
        return Colour::green;
    }
    colour_credit_ += 10000 - blue_bp;
    if (colour_credit_ >= 10000) {
        colour_credit_ -= 10000;
        return Colour::green;
    }
    return Colour::blue;
}

const Backend* Balancer::pick_backend(const RoutingTable& table, Colour colour,
                                      const std::vector<std::uint32_t>& exclude) {
    const ColourPool& pool = table.pool(colour);
    const auto n = static_cast<std::uint32_t>(pool.eligible.size());
    if (n == 0) {
        return nullptr;
    }
    auto excluded = [&exclude](const Backend& b) {
        return std::find(exclude.begin(), exclude.end(), b.id) != exclude.end();
    };
    if (policy_ == BalancePolicy::least_request && n > 1 && exclude.empty()) {
        // Power of two choices: two different random eligible backends, the less loaded wins
        // (with two backends, always both: a stalled one is never drawn against itself).
        const std::uint32_t first = static_cast<std::uint32_t>(next_random() % n);
        const std::uint32_t second =
            (first + 1 + static_cast<std::uint32_t>(next_random() % (n - 1))) % n;
        const Backend& a = pool.backends[pool.eligible[first]];
        const Backend& b = pool.backends[pool.eligible[second]];
        return in_flight(b.id) < in_flight(a.id) ? &b : &a;
    }
    std::uint32_t& cursor = cursor_[index_of(colour)];
    for (std::uint32_t step = 0; step < n; ++step) {
        const Backend& candidate = pool.backends[pool.eligible[cursor++ % n]];
        if (!excluded(candidate)) {
            return &candidate;
        }
    }
    return nullptr;
}

void Balancer::on_request_start(std::uint32_t backend_id) {
    if (backend_id >= in_flight_.size()) {
        in_flight_.resize(backend_id + 1, 0);
    }
    ++in_flight_[backend_id];
}

void Balancer::on_request_end(std::uint32_t backend_id) {
    if (backend_id < in_flight_.size() && in_flight_[backend_id] > 0) {
        --in_flight_[backend_id];
    }
}

std::uint32_t Balancer::in_flight(std::uint32_t backend_id) const {
    return backend_id < in_flight_.size() ? in_flight_[backend_id] : 0;
}

}  // namespace bg
