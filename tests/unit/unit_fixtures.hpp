#pragma once
// What several unit tests stand on: a temporary directory, and a config of two blue backends
// and one green (blue-1 127.0.0.1:1, blue-2 :2, green-1 :3) that never connects anywhere.

#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>

#include "config.hpp"

namespace bg::test {

struct TempDir {
    std::filesystem::path path;
    TempDir() {
        char name[] = "/tmp/bgproxy-unit-XXXXXX";
        path = ::mkdtemp(name);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
};

inline Config two_blue_one_green() {
    auto result = parse_config(R"(
[[listener]]
address = "127.0.0.1:0"
[pools.blue]
backends = [{ name = "blue-1", address = "127.0.0.1:1" }, { name = "blue-2", address = "127.0.0.1:2" }]
[pools.green]
backends = [{ name = "green-1", address = "127.0.0.1:3" }]
)",
                               "t");
    REQUIRE(result.errors.empty());
    return *result.config;
}

}  // namespace bg::test
