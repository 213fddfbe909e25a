#pragma once
// TryOutcome: how one try of a request at a backend ended, as passive health checking
// (outlier detection) and canary analysis count it. Every kind but `ok` is a failure kind;
// which kinds count is configured per consumer ([outlier] count_5xx, [canary] errors).

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace bg {

enum class TryOutcome : std::uint8_t {
    ok,
    server_error,  // a 5xx response
    reset,    // closed, reset or cut before the response's end; or an invalid head or body framing
    timeout,  // no response head, or no more of its body, within upstream_response
    connect_failed,  // refused, unreachable or a failed TLS handshake
};

inline constexpr std::size_t failure_kind_count = 4;  // every outcome but ok
using FailureKinds = std::array<bool, failure_kind_count>;

// Index of a failure kind in per-kind arrays (server_error is 0); `ok` has none.
constexpr std::size_t failure_index(TryOutcome outcome) {
    return static_cast<std::size_t>(outcome) - 1;
}

// "5xx", "reset", "timeout", "connect": the names the config and the metrics use.
std::string_view to_string(TryOutcome outcome);
std::optional<TryOutcome> failure_kind_from(std::string_view name);

}  // namespace bg
