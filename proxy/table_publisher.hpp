#pragma once
// How the control plane hands routing tables to the data plane, and reads its load back.
// Defined on the data-plane side so the data plane never includes control/.

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "answer_waits.hpp"
#include "config.hpp"
#include "routing_table.hpp"
#include "traffic_counters.hpp"
#include "try_outcome.hpp"

namespace bg {

struct DataPlaneLoad {
    std::vector<std::uint32_t> in_flight;  // by backend id, summed over workers
    std::vector<std::uint32_t> upgraded;   // open tunnels by backend id
    std::vector<std::uint64_t> requests;   // cumulative, by backend id
    std::vector<std::uint64_t> failures;   // cumulative, by backend id
    // Cumulative failed tries by backend id, then failure kind (see try_outcome.hpp).
    std::vector<std::array<std::uint64_t, failure_kind_count>> failure_kinds;
    std::vector<std::uint32_t> upstream_open;  // connections open now (idle + in use)
    // The longest a request has been waiting for a response head, by backend id (max over
    // workers), in milliseconds.
    std::vector<std::uint64_t> oldest_wait_ms;
    // The same for tries after one the worker cut (SessionHandle::awaiting_after_cut), apart:
    // a request that waits on its second backend too may be slow itself.
    std::vector<std::uint64_t> oldest_wait_after_cut_ms;
    // How many requests have waited [outlier] stalled_after for a response head, by backend id
    // (summed over workers).
    std::vector<std::uint32_t> stalled_waits;
    // The same for tries after a cut, apart (as oldest_wait_after_cut_ms).
    std::vector<std::uint32_t> stalled_waits_after_cut;
    // How long ago the newest try a backend answered (sent a response head, any status) had
    // begun, by backend id, in milliseconds (min over workers; never_answered when none): what
    // tells a backend that answers what it is sent from one that holds it.
    std::vector<std::uint64_t> answer_begun_ms;
    static constexpr std::uint64_t never_answered = ~std::uint64_t{0};
    // How long answered tries waited for their response head, by backend id (cumulative,
    // summed over workers).
    std::vector<AnswerWaits> answer_waits;
    TrafficCounters traffic;  // summed over workers
};

class TablePublisher {
  public:
    virtual ~TablePublisher() = default;
    // Every worker uses `table` (and `config`) for requests that start after it arrives;
    // `on_applied` runs on the publisher's completion executor once all workers have it.
    virtual void publish(RoutingTablePtr table, std::shared_ptr<const Config> config,
                         std::function<void()> on_applied) = 0;
    virtual void gather_load(std::function<void(DataPlaneLoad)> done) = 0;
    // `alarm` runs on the completion executor when a backend's run of failures reaches
    // [outlier] consecutive_failures, so the load is gathered then, not at the next periodic
    // sample (at a thousand requests a second a quarter second is hundreds of failed
    // requests). Set before the data plane starts.
    virtual void on_failure_run(std::function<void()> alarm) = 0;
};

}  // namespace bg
