#pragma once
// What the access log says about one request, and its JSON line.

#include <cstdint>
#include <string>

namespace bg {

struct AccessRecord {
    std::int64_t start_unix_ms = 0;
    std::string client;  // the original client address
    std::string method;
    std::string path;             // the request target as received
    unsigned status = 0;          // 0: no response was sent
    std::uint64_t bytes_in = 0;   // request body bytes
    std::uint64_t bytes_out = 0;  // response body bytes
    double duration_ms = 0;
    double upstream_ms = 0;
    std::string colour;  // empty: no backend was used
    std::string backend;
    unsigned retries = 0;
    std::string error;          // why the proxy answered itself, if it did
    std::uint64_t version = 0;  // routing state version the request was routed by
};

std::string to_json_line(const AccessRecord& record);

}  // namespace bg
