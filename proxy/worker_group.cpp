#include "worker_group.hpp"

#include <algorithm>
#include <boost/asio/post.hpp>

#include "descriptor_limit.hpp"

namespace bg {

namespace asio = boost::asio;

namespace {

// Each element of `from` into `into`'s by `merge` (into's grows to from's size, new elements
// `absent`).
template <class T, class Merge>
void merge_each(std::vector<T>& into, const std::vector<T>& from, T absent, Merge merge) {
    if (into.size() < from.size()) {
        into.resize(from.size(), absent);
    }
    for (std::size_t i = 0; i < from.size(); ++i) {
        into[i] = merge(into[i], from[i]);
    }
}

// One worker's load into the total: counts add up; the longest wait and run of failures, and
// the most recent answer, are the process's.
void add_load(DataPlaneLoad& total, const DataPlaneLoad& part) {
    const auto sum = [](auto a, auto b) { return a + b; };
    const auto most = [](auto a, auto b) { return std::max(a, b); };
    const auto least = [](auto a, auto b) { return std::min(a, b); };
    merge_each(total.in_flight, part.in_flight, 0u, sum);
    merge_each(total.upgraded, part.upgraded, 0u, sum);
    merge_each(total.requests, part.requests, std::uint64_t{0}, sum);
    merge_each(total.failures, part.failures, std::uint64_t{0}, sum);
    merge_each(total.failure_kinds, part.failure_kinds, {}, [](auto a, const auto& b) {
        for (std::size_t k = 0; k < a.size(); ++k) {
            a[k] += b[k];
        }
        return a;
    });
    merge_each(total.upstream_open, part.upstream_open, 0u, sum);
    merge_each(total.stalled_waits, part.stalled_waits, 0u, sum);
    merge_each(total.stalled_waits_after_cut, part.stalled_waits_after_cut, 0u, sum);
    merge_each(total.oldest_wait_ms, part.oldest_wait_ms, std::uint64_t{0}, most);
    merge_each(total.oldest_wait_after_cut_ms, part.oldest_wait_after_cut_ms, std::uint64_t{0},
               most);
    merge_each(total.answer_begun_ms, part.answer_begun_ms, DataPlaneLoad::never_answered, least);
    merge_each(total.answer_waits, part.answer_waits, AnswerWaits{},
               [](AnswerWaits a, const AnswerWaits& b) {
                   a.add(b);
                   return a;
               });
    total.traffic.add(part.traffic);
}

}  // namespace

WorkerGroup::WorkerGroup(asio::any_io_executor completions, unsigned count,
                         std::shared_ptr<const Config> config, RoutingTablePtr table)
    : completions_(std::move(completions)),
      limits_(config->listeners.size()),
      slot_(std::move(table)) {
    cap_connections(*config);
    for (unsigned i = 0; i < count; ++i) {
        workers_.push_back(std::make_unique<Worker>(i, config, slot_, limits_));
    }
    // Each asks the ones after it first, so no one worker is asked by all.
    for (std::size_t i = 0; i < workers_.size(); ++i) {
        std::vector<Worker*> siblings;
        for (std::size_t k = 1; k < workers_.size(); ++k) {
            siblings.push_back(workers_[(i + k) % workers_.size()].get());
        }
        workers_[i]->set_siblings(std::move(siblings));
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

void WorkerGroup::cap_connections(const Config& config) {
    const DescriptorCeilings ceilings = descriptor_ceilings(descriptor_limit().soft, config);
    limits_.set_descriptor_ceilings(ceilings.clients, ceilings.upstream);
}

void WorkerGroup::publish(RoutingTablePtr table, std::shared_ptr<const Config> config,
                          std::function<void()> on_applied) {
    // Seen by the next request on every worker from here on; the posted apply (pool cleanup,
    // a reload's config) follows on each worker's loop, and the ack waits for all of them.
    slot_.store(table);
    cap_connections(*config);
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
                    add_load(*total, part);
                    if (--*remaining == 0) {
                        (*callback)(std::move(*total));
                    }
                });
            });
    }
}

}  // namespace bg
