#pragma once
// WorkerGroup: the data plane's workers as one TablePublisher.

#include <boost/asio/any_io_executor.hpp>
#include <memory>
#include <string>
#include <vector>

#include "connection_limits.hpp"
#include "table_publisher.hpp"
#include "worker.hpp"

namespace bg {

class WorkerGroup final : public TablePublisher {
  public:
    // Completions (publish acknowledgements, gathered load) run on `completions`.
    WorkerGroup(boost::asio::any_io_executor completions, unsigned count,
                std::shared_ptr<const Config> config, RoutingTablePtr table);
    // Every worker's thread ends before any worker goes: they post to each other.
    ~WorkerGroup() override { join(); }

    // Binds every worker's listeners; false with a message when one cannot be bound.
    bool bind(std::string& error);
    const std::vector<std::uint16_t>& ports() const { return ports_; }
    void set_access_log(AccessLog* log);
    void start();
    // A graceful shutdown starts (the ready delay): responses close their connections.
    void begin_closing();
    // Then the listeners close, idle connections close, in-flight requests finish.
    void begin_shutdown();
    void join();
    std::size_t size() const { return workers_.size(); }
    // Each worker's counters (relaxed atomics: readable from any thread).
    std::vector<const WorkerStats*> stats() const;

    void publish(RoutingTablePtr table, std::shared_ptr<const Config> config,
                 std::function<void()> on_applied) override;
    void gather_load(std::function<void(DataPlaneLoad)> done) override;
    void on_failure_run(std::function<void()> alarm) override;

  private:
    // The descriptor numbers past which the data plane takes on no more, for `config`
    // (connection_limits.hpp).
    void cap_connections(const Config& config);

    boost::asio::any_io_executor completions_;
    ConnectionLimits limits_;  // before workers_: they point at it
    TableSlot slot_;           // likewise
    std::vector<std::unique_ptr<Worker>> workers_;
    std::vector<std::uint16_t> ports_;
};

}  // namespace bg
