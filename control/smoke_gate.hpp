#pragma once
// The pre-promotion gate: the config's smoke checks, run against every backend of a colour
// before a flip, a set that raises its weight, or a ramp gives it traffic.

#include <boost/asio/any_io_executor.hpp>
#include <functional>
#include <string>

#include "config.hpp"
#include "routing_table.hpp"

namespace bg {

// Calls `done` with an empty string when every check passed on every backend of `colour`,
// else with the first failure, naming the check and the backend. Control thread only.
void run_smoke_gate(boost::asio::any_io_executor executor, const Config& config, Colour colour,
                    std::function<void(std::string)> done);

}  // namespace bg
