#include "failed_upstreams.hpp"

#include <algorithm>

#include "routing_table.hpp"
#include "session_handle.hpp"

namespace bg {

namespace {
constexpr FailedUpstreams::Clock::time_point in_routing{};

void start_or_end(FailedUpstreams::Clock::time_point& since, bool out,
                  FailedUpstreams::Clock::time_point now) {
    if (!out) {
        since = in_routing;
    } else if (since == in_routing) {
        since = now;
    }
}
}  // namespace

void FailedUpstreams::follow(const RoutingTable& table, Clock::time_point now, bool cross_colour) {
    const std::uint32_t limit = table.backend_id_limit();
    backend_since_.resize(std::max<std::size_t>(backend_since_.size(), limit), in_routing);
    colour_of_.assign(backend_since_.size(), -1);
    any_ = false;
    for (Colour colour : all_colours) {
        const ColourPool& pool = table.pool(colour);
        const bool other_serves = table.effective_weight_bp(other(colour)) > 0;
        const bool colour_out = (pool.failed || pool.withdrawn) && other_serves;
        const bool retry_room = !pool.eligible.empty() || (cross_colour && other_serves);
        start_or_end(colour_since_[index_of(colour)], colour_out, now);
        any_ = any_ || colour_out;
        for (const Backend& backend : pool.backends) {
            // Maintenance and drain are an operator's: in-flight requests finish there.
            const bool out = !backend.healthy && retry_room;
            start_or_end(backend_since_[backend.id], out, now);
            colour_of_[backend.id] = static_cast<std::int8_t>(index_of(colour));
            any_ = any_ || out;
        }
    }
    for (std::size_t id = 0; id < colour_of_.size(); ++id) {
        if (colour_of_[id] < 0) {
            backend_since_[id] = in_routing;  // gone from the config: its tries finish as they may
        }
    }
    panic_ = table.panic();
}

FailedUpstreams::Clock::time_point FailedUpstreams::colour_since(std::uint32_t backend) const {
    if (backend >= colour_of_.size() || colour_of_[backend] < 0) {
        return in_routing;
    }
    return colour_since_[static_cast<std::size_t>(colour_of_[backend])];
}

bool FailedUpstreams::colour_reverted_under(const SessionHandle& session) const {
    const Clock::time_point since = colour_since(session.upstream_backend);
    return since != in_routing && session.awaiting_since < since;
}

bool FailedUpstreams::colour_out(std::uint32_t backend) const {
    return any() && colour_since(backend) != in_routing;
}

bool FailedUpstreams::should_cut(const SessionHandle& session, Clock::time_point now,
                                 Clock::duration after) const {
    // (Retryable only while waiting, so awaiting_since is set.)
    if (!any() || session.upstream == nullptr || !session.awaiting_retryable ||
        now - session.awaiting_since < after) {
        return false;
    }
    // Begun before its backend or its colour was taken out: the later of the two, if any.
    const std::uint32_t backend = session.upstream_backend;
    const Clock::time_point own = backend < colour_of_.size() && colour_of_[backend] >= 0
                                      ? backend_since_[backend]
                                      : in_routing;
    const Clock::time_point since = std::max(own, colour_since(backend));
    return since != in_routing && session.awaiting_since < since;
}

}  // namespace bg
