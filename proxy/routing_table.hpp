#pragma once
// RoutingTable: the immutable snapshot of where traffic goes, shared by the control plane
// (its only writer) and the data plane (every request reads one snapshot).

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config.hpp"
#include "failure_run.hpp"

namespace bg {

enum class Colour : std::uint8_t { blue = 0, green = 1 };
inline constexpr std::array<Colour, 2> all_colours{Colour::blue, Colour::green};
const char* to_string(Colour colour);
std::optional<Colour> colour_from_name(std::string_view name);  // "blue", "green"
inline Colour other(Colour colour) {
    return colour == Colour::blue ? Colour::green : Colour::blue;
}
inline std::size_t index_of(Colour colour) {
    return static_cast<std::size_t>(colour);
}

// HAProxy's server admin states: drain takes no new requests but finishes in-flight ones.
enum class AdminState : std::uint8_t { ready, drain, maint };
const char* to_string(AdminState state);

struct Backend {
    // Stable across table versions for the life of the process: indexes per-worker state
    // (upstream connection pools, in-flight counters) without a lookup.
    std::uint32_t id = 0;
    std::string name;
    Colour colour = Colour::blue;
    HostPort address;
    AdminState admin = AdminState::ready;
    bool healthy = true;
    // How to connect, from the backend's pool: TLS (when set) and a PROXY header.
    std::shared_ptr<const BackendTlsContext> tls{};
    bool send_proxy_protocol = false;
    // The same object in every table for the life of the process (see failure_run.hpp); none
    // in a table built before the control plane's first (no run is counted there).
    std::shared_ptr<FailureRun> failure_run{};

    bool takes_new_requests() const { return admin == AdminState::ready && healthy; }
};

struct ColourPool {
    std::uint32_t weight_bp = 0;  // 0..10000
    bool failed = false;          // marked by the rollout guard until an operator clears it
    bool withdrawn = false;       // taken out by an operator's rollback
    bool stable = false;          // the last known good colour (the other is the candidate)
    std::vector<Backend> backends;
    // Indexes into backends of those taking new requests, computed once per table.
    std::vector<std::uint32_t> eligible;
};

class RoutingTable {
  public:
    RoutingTable(std::uint64_t version, std::array<ColourPool, 2> pools);

    std::uint64_t version() const { return version_; }
    const ColourPool& pool(Colour colour) const { return pools_[index_of(colour)]; }
    // One more than the highest backend id: the size of per-worker per-backend arrays.
    std::uint32_t backend_id_limit() const { return backend_id_limit_; }

    // The weights the data plane acts on: a colour that cannot serve gets no share while the
    // other can (a weighted split never sends to an empty colour).
    std::uint32_t effective_weight_bp(Colour colour) const {
        return effective_bp_[index_of(colour)];
    }
    // No backend of either colour can serve: rather than refuse everything, requests go to
    // every backend that is not in maintenance, healthy or not (Envoy's panic routing).
    bool panic() const { return panic_; }
    // How long tunnels of a colour this table takes the whole share from stay open.
    Duration tunnel_drain() const { return tunnel_drain_; }
    void set_tunnel_drain(Duration drain) { tunnel_drain_ = drain; }
    // The routing state's version the current split of traffic began at (RoutingState's
    // split_since): what a sticky cookie names.
    std::uint64_t split_since() const { return split_since_; }
    void set_split_since(std::uint64_t version) { split_since_ = version; }

  private:
    std::uint64_t version_;
    std::array<ColourPool, 2> pools_;
    std::array<std::uint32_t, 2> effective_bp_{};
    std::uint32_t backend_id_limit_ = 0;
    bool panic_ = false;
    Duration tunnel_drain_{std::chrono::seconds(30)};
    std::uint64_t split_since_ = 0;
};

using RoutingTablePtr = std::shared_ptr<const RoutingTable>;

}  // namespace bg
