// parse_config on any text, as `bgproxy --check` and a reload read a file. Checked:
// - a config comes back exactly when there is no error, and every error says something;
// - an accepted config keeps the promises of README and conf/bgproxy.toml: values in their
//   ranges (no NaN slipping past a range check), weights summing to 100%, non-empty pools with
//   unique names, and every string that goes into an HTTP message (health and gate requests,
//   the served-by and preview header names) valid there, so a config cannot inject a line.
//
// Host names are resolved numerically only (see getaddrinfo below): the fuzzer must not send
// DNS queries, and a name's resolution is not what is under test.

#include <dlfcn.h>
#include <netdb.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <string_view>

#include "config.hpp"
#include "fuzz_check.hpp"

// Interposes libc's (and the sanitizer's weak interceptor): numeric hosts and "localhost" (from
// /etc/hosts) only.
extern "C" int getaddrinfo(const char* node, const char* service, const addrinfo* hints,
                           addrinfo** result) {
    using Real = int (*)(const char*, const char*, const addrinfo*, addrinfo**);
    static const auto real = reinterpret_cast<Real>(dlsym(RTLD_NEXT, "getaddrinfo"));
    addrinfo numeric{};
    if (hints != nullptr) {
        numeric = *hints;
    }
    if (node == nullptr || std::strcmp(node, "localhost") != 0) {
        numeric.ai_flags |= AI_NUMERICHOST;
    }
    return real(node, service, &numeric, result);
}

namespace {

using bg::fuzz::require;

bool is_tchar(char c) {
    const auto u = static_cast<unsigned char>(c);
    return (u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') ||
           std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}

// RFC 9110 5.6.2: a method or field name.
bool is_token(std::string_view s) {
    if (s.empty()) {
        return false;
    }
    for (const char c : s) {
        if (c == '\0' || !is_tchar(c)) {
            return false;
        }
    }
    return true;
}

// RFC 9110 5.5: no control characters but HTAB (so no CR, LF or NUL).
bool is_field_value(std::string_view s) {
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if ((u < 0x20 && c != '\t') || u == 0x7f) {
            return false;
        }
    }
    return true;
}

// An origin-form request target: starts with '/', no blank, no control character.
bool is_origin_target(std::string_view s) {
    if (!s.starts_with('/')) {
        return false;
    }
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u == 0x7f) {
            return false;
        }
    }
    return true;
}

bool is_status_code(unsigned code) {
    return code >= 100 && code <= 599;
}

bool in_range(double value, double min, double max) {
    return std::isfinite(value) && value >= min && value <= max;
}

void check_health(const bg::HealthCheckConfig& health) {
    require(is_token(health.method), "a health check method is a token", health.method);
    require(is_origin_target(health.path), "a health check path is an origin-form target",
            health.path);
    require(is_field_value(health.host), "a health check Host is a field value", health.host);
    require(!health.expect.empty(), "a health check expects some status");
    for (const unsigned code : health.expect) {
        require(is_status_code(code), "a health check expects status codes 100..599");
    }
    require(health.interval.count() >= 10 && health.fast_interval.count() >= 10 &&
                health.timeout.count() >= 10,
            "health intervals and timeout are at least 10ms");
    require(health.jitter.count() >= 0, "health jitter is not negative");
    require(health.rise >= 1 && health.fall >= 1, "rise and fall are at least 1");
}

void check_accepted(const bg::Config& c) {
    require(!c.listeners.empty(), "an accepted config has a listener");
    for (const bg::ListenerConfig& listener : c.listeners) {
        require(!listener.proxy_protocol || !listener.proxy_protocol_from.empty(),
                "proxy_protocol comes with proxy_protocol_from");
        require(!listener.address.ip.empty(), "a listener address is resolved");
    }
    require(!c.blue.backends.empty() && !c.green.backends.empty(), "both pools have backends");
    std::set<std::string> names;
    for (const bg::PoolConfig* pool : {&c.blue, &c.green}) {
        for (const bg::BackendConfig& backend : pool->backends) {
            require(!backend.name.empty(), "a backend has a name");
            require(names.insert(backend.name).second, "backend names are unique", backend.name);
            require(!backend.address.ip.empty(), "a backend address is resolved");
        }
        check_health(pool->health);
    }
    require(c.blue_weight_bp <= 10000 && c.green_weight_bp <= 10000 &&
                c.blue_weight_bp + c.green_weight_bp == 10000,
            "weights sum to 100%");
    require(c.limits.max_request_line <= c.limits.max_request_header,
            "max_request_line <= max_request_header");
    require(c.limits.buffer_size >= 1024, "buffer_size is at least 1024");
    require(c.limits.handshake_share >= 1 && c.limits.handshake_share <= 100,
            "server.handshake_share is in 1..100");
    require(in_range(c.outlier.error_rate, 0, 1), "outlier.error_rate is in 0..1");
    require(in_range(c.outlier.panic_threshold, 0, 1), "outlier.panic_threshold is in 0..1");
    require(in_range(c.retries.budget, 0, 1), "retries.budget is in 0..1");
    require(in_range(c.rollout.min_healthy, 0, 10000), "rollout.min_healthy is in 0..10000");
    for (const bg::SmokeCheck& check : c.gate) {
        require(!check.name.empty(), "a gate check has a name");
        require(is_token(check.method), "a gate method is a token", check.method);
        require(is_origin_target(check.path), "a gate path is an origin-form target", check.path);
        for (const auto& [name, value] : check.headers) {
            require(is_token(name), "a gate header name is a token", name);
            require(is_field_value(value), "a gate header value is a field value", value);
        }
        require(!check.expect.empty(), "a gate check expects some status");
        for (const unsigned code : check.expect) {
            require(is_status_code(code), "a gate check expects status codes 100..599");
        }
    }
    require(c.served_by_header.empty() || is_token(c.served_by_header),
            "server.served_by_header is a header name", c.served_by_header);
    require(c.via.empty() || (is_token(c.via) && c.via.size() <= bg::Config::max_via_name),
            "server.via is a token of at most 64 characters", c.via);
    require(c.preview.header.empty() || is_token(c.preview.header),
            "preview.header is a header name", c.preview.header);
    require(c.sticky.cookie.empty() || is_token(c.sticky.cookie), "sticky.cookie is a token");
    require(c.sticky.max_age.count() >= 0, "sticky.max_age is not negative");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    const bg::ConfigResult result = bg::parse_config(text, "fuzz.toml");
    require(result.config.has_value() == result.errors.empty(),
            "a config comes back exactly when there is no error");
    for (const bg::ConfigError& error : result.errors) {
        require(!error.message.empty(), "every error says something");
        require(error.file == "fuzz.toml", "every error names the file", error.to_string());
    }
    if (result.config) {
        check_accepted(*result.config);
    }
    return 0;
}
