#include "try_outcome.hpp"

namespace bg {

namespace {

constexpr std::array<std::string_view, failure_kind_count> names{"5xx", "reset", "timeout",
                                                                 "connect"};

}  // namespace

std::string_view to_string(TryOutcome outcome) {
    return outcome == TryOutcome::ok ? "ok" : names[failure_index(outcome)];
}

std::optional<TryOutcome> failure_kind_from(std::string_view name) {
    for (std::size_t i = 0; i < names.size(); ++i) {
        if (names[i] == name) {
            return static_cast<TryOutcome>(i + 1);
        }
    }
    return std::nullopt;
}

}  // namespace bg
