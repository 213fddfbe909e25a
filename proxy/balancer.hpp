#pragma once
// Balancer: picks the colour and the backend for one request. One per worker thread; its state
// (random stream, round-robin cursors, in-flight counts) is never shared, so it needs no lock.

#include <cstdint>
#include <optional>
#include <vector>

#include "config.hpp"
#include "routing_table.hpp"

namespace bg {

class Balancer {
  public:
    explicit Balancer(BalancePolicy policy, std::uint64_t seed);

    // The weighted choice between the colours: error diffusion (smooth weighted round robin),
    // so any run of N requests on a worker splits within one request of the weights; workers
    // start at random phases so they do not move in lockstep.
    Colour pick_colour(const RoutingTable& table);
    // A backend of the colour taking new requests, skipping the ids in `exclude` (backends
    // already tried by this request); nullptr when none is left.
    const Backend* pick_backend(const RoutingTable& table, Colour colour,
                                const std::vector<std::uint32_t>& exclude = {});

    // Least-request bookkeeping; called when a request starts and ends on a backend.
    void on_request_start(std::uint32_t backend_id);
    void on_request_end(std::uint32_t backend_id);
    std::uint32_t in_flight(std::uint32_t backend_id) const;

  private:
    std::uint64_t next_random();

    BalancePolicy policy_;
    std::uint64_t rng_state_;
    std::uint32_t colour_credit_ = 0;  // 0..9999: green's accumulated share
    std::array<std::uint32_t, 2> cursor_{};
    std::vector<std::uint32_t> in_flight_;
};

}  // namespace bg
