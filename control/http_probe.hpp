#pragma once
// One HTTP request to one backend from the control thread, for health checks and smoke checks.

#include <boost/asio/awaitable.hpp>
#include <string>
#include <utility>
#include <vector>

#include "config.hpp"

namespace bg {

struct ProbeRequest {
    std::string method = "GET";
    std::string path = "/";
    std::string host;  // empty: the backend's address
    std::vector<std::pair<std::string, std::string>> headers;
    Duration timeout{std::chrono::seconds(1)};
    bool tcp_only = false;   // a connect is the whole check
    bool want_body = false;  // read the body (up to 1 MiB) too
};

struct ProbeResult {
    bool answered = false;  // a response header came back (or, tcp_only, the connect worked)
    unsigned status = 0;
    std::string body;
    std::string error;  // what went wrong when !answered
};

boost::asio::awaitable<ProbeResult> http_probe(const HostPort& backend,
                                               const ProbeRequest& request);

}  // namespace bg
