#include "worker_group.hpp"

#include <algorithm>
#include <boost/asio/post.hpp>

namespace bg {

namespace asio = boost::asio;

WorkerGroup::WorkerGroup(asio::any_io_executor completions, unsigned count,
                         std::shared_ptr<const Config> config, RoutingTablePtr table)
    : completions_(std::move(completions)),
      limits_(config->listeners.size()),
      slot_(std::move(table)) {
    for (unsigned i = 0; i < count; ++i) {
        workers_.push_back(std::make_unique<Worker>(i, config, slot_, limits_));
    }
}

bool WorkerGroup::bind(std::string& error) {
    for (auto& worker : workers_) {
        if (!worker->bind(ports_, error)) {
            return false;
        }
    }
    return true;
}

std::vector<const WorkerStats*> WorkerGroup::stats() const {
    std::vector<const WorkerStats*> out;
    for (const auto& worker : workers_) {
        out.push_back(&worker->stats());
    }
    return out;
}

void WorkerGroup::set_access_log(AccessLog* log) {
    for (auto& worker : workers_) {
        worker->set_access_log(log);
    }
}

void WorkerGroup::on_failure_run(std::function<void()> alarm) {
    for (auto& worker : workers_) {
        worker->on_failure_run(
            [completions = completions_, alarm] { asio::post(completions, alarm); });
    }
}

void WorkerGroup::start() {
    for (auto& worker : workers_) {
        worker->start();
    }
}

void WorkerGroup::begin_closing() {
    for (auto& worker : workers_) {
        worker->begin_closing();
    }
}

void WorkerGroup::begin_shutdown() {
    for (auto& worker : workers_) {
        worker->begin_shutdown();
    }
}

void WorkerGroup::join() {
    for (auto& worker : workers_) {
        worker->join();
    }
}

void WorkerGroup::publish(RoutingTablePtr table, std::shared_ptr<const Config> config,
                          std::function<void()> on_applied) {
    // Seen by the next request on every worker from here on; the posted apply (pool cleanup,
    // a reload's config) follows on each worker's loop, and the ack waits for all of them.
    slot_.store(table);
    // The countdown lives on the completion executor only: each worker posts its ack there.
    auto remaining = std::make_shared<std::size_t>(workers_.size());
    auto done = std::make_shared<std::function<void()>>(std::move(on_applied));
    for (auto& worker : workers_) {
        worker->apply(table, config, [completions = completions_, remaining, done] {
            asio::post(completions, [remaining, done] {
                if (--*remaining == 0) {
                    (*done)();
                }
            });
        });
    }
}

void WorkerGroup::gather_load(std::function<void(DataPlaneLoad)> done) {
    auto total = std::make_shared<DataPlaneLoad>();
    auto remaining = std::make_shared<std::size_t>(workers_.size());
    auto callback = std::make_shared<std::function<void(DataPlaneLoad)>>(std::move(done));
    for (auto& worker : workers_) {
        worker->report_load(
            [completions = completions_, total, remaining, callback](DataPlaneLoad part) {
                asio::post(completions, [total, remaining, callback, part = std::move(part)] {
                    auto add = [](auto& into, const auto& from) {
                        if (into.size() < from.size()) {
                            into.resize(from.size(), 0);
                        }
                        for (std::size_t i = 0; i < from.size(); ++i) {
                            into[i] += from[i];
                        }
                    };
                    add(total->in_flight, part.in_flight);
                    add(total->upgraded, part.upgraded);
                    add(total->requests, part.requests);
                    add(total->failures, part.failures);
                    if (total->failure_kinds.size() < part.failure_kinds.size()) {
                        total->failure_kinds.resize(part.failure_kinds.size());
                    }
                    for (std::size_t i = 0; i < part.failure_kinds.size(); ++i) {
                        for (std::size_t k = 0; k < failure_kind_count; ++k) {
                            total->failure_kinds[i][k] += part.failure_kinds[i][k];
                        }
                    }
                    add(total->upstream_open, part.upstream_open);
                    total->traffic.add(part.traffic);
                    if (total->consecutive_failures.size() < part.consecutive_failures.size()) {
                        total->consecutive_failures.resize(part.consecutive_failures.size(), 0);
                    }
                    if (total->oldest_wait_ms.size() < part.oldest_wait_ms.size()) {
                        total->oldest_wait_ms.resize(part.oldest_wait_ms.size(), 0);
                    }
                    for (std::size_t i = 0; i < part.oldest_wait_ms.size(); ++i) {
                        total->oldest_wait_ms[i] =
                            std::max(total->oldest_wait_ms[i], part.oldest_wait_ms[i]);
                    }
                    for (std::size_t i = 0; i < part.consecutive_failures.size(); ++i) {
                        total->consecutive_failures[i] =
                            std::max(total->consecutive_failures[i], part.consecutive_failures[i]);
                    }
                    if (--*remaining == 0) {
                        (*callback)(std::move(*total));
                    }
                });
            });
    }
}

}  // namespace bg
