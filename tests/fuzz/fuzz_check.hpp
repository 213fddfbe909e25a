#pragma once
// A broken property in a harness: say which, then abort, so libFuzzer keeps the input as a crash
// (an ordinary assert would vanish in a release build).

#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace bg::fuzz {

[[noreturn]] inline void fail(std::string_view what, std::string_view detail = {}) {
    std::fprintf(stderr, "\n*** fuzz property violated: %.*s\n", static_cast<int>(what.size()),
                 what.data());
    if (!detail.empty()) {
        std::fprintf(stderr, "%.*s\n", static_cast<int>(detail.size()), detail.data());
    }
    std::abort();
}

inline void require(bool holds, std::string_view what, std::string_view detail = {}) {
    if (!holds) {
        fail(what, detail);
    }
}

}  // namespace bg::fuzz
