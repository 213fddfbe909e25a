#pragma once
// HealthChecker: active probes of every backend of both colours, all the time (the idle colour
// is about to take traffic). Runs on the control thread; never touches the data path.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "config.hpp"

namespace bg {

class HealthChecker {
  public:
    // (backend name, healthy now, why) on every transition.
    using Transition = std::function<void(const std::string&, bool, const std::string&)>;

    HealthChecker(boost::asio::any_io_executor executor, Transition on_transition);
    ~HealthChecker();

    // Starts probing the config's backends; backends kept across a reconfigure keep their
    // state and removed ones stop. New ones start healthy (as in HAProxy), except those in
    // `held`: down until their first check, which one pass brings up (as Envoy's new hosts).
    // After the first configure, a new backend's first check runs at once.
    void configure(const Config& config, const std::set<std::string>& held = {});
    void stop();
    // Current view: backend name -> healthy.
    std::map<std::string, bool> snapshot() const;

    struct Probe;  // one backend's check loop (defined in the .cpp)

  private:
    boost::asio::awaitable<void> run(std::shared_ptr<Probe> probe);  // one backend's checks
    void record(Probe& probe, bool ok, const std::string& why);

    boost::asio::any_io_executor executor_;
    Transition on_transition_;
    std::map<std::string, std::shared_ptr<Probe>> probes_;
    bool configured_ = false;
};

}  // namespace bg
