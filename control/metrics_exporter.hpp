#pragma once
// The Prometheus exposition of bgproxy, rendered at scrape time on the control thread from
// what the planes already keep: nothing is counted twice and nothing is added to the data path
// (the workers' counters are relaxed atomics; per-backend counts are gathered by a post).

#include <string>
#include <vector>

#include "access_log.hpp"
#include "switchboard.hpp"
#include "table_publisher.hpp"
#include "worker_stats.hpp"

namespace bg {

struct MetricsSources {
    const Switchboard& switchboard;
    const DataPlaneLoad& load;
    std::vector<const WorkerStats*> workers;
    const AccessLog* access_log = nullptr;  // off: no access log metrics
};

std::string render_metrics(const MetricsSources& sources);

}  // namespace bg
