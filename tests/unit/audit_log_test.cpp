#include <doctest/doctest.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>

#include "audit_log.hpp"
#include "unit_fixtures.hpp"

namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

json::object record(std::string command) {
    return json::object{{"time", "t"}, {"command", std::move(command)}, {"result", "refused"}};
}

bool valid_utf8_ascii(const std::string& s) {
    for (char c : s) {
        if (static_cast<unsigned char>(c) >= 0x80) {
            return false;
        }
    }
    return true;
}

}  // namespace

TEST_CASE("a record's text is bounded, its length said, and what a client sent escaped") {
    auto long_one = bg::bounded_record(record(std::string(5000, 'x')), 100);
    CHECK(long_one.at("command").as_string().size() == 103);  // 100 and "..."
    CHECK(long_one.at("command_length").to_number<int>() == 5000);
    auto bytes = bg::bounded_record(record("flip\xff\xfe\n\"x"), 100);
    const std::string line = json::serialize(bytes);
    CHECK(valid_utf8_ascii(line));
    CHECK(std::string(bytes.at("command").as_string()) == "flip\\xff\\xfe\\x0a\"x");
    auto nested = bg::bounded_record(
        json::object{{"before", json::object{{"note", "caf\xc3"}}}, {"command", "ok"}}, 100);
    CHECK(std::string(nested.at("before").at("note").as_string()) == "caf\\xc3");
    CHECK_FALSE(nested.contains("command_length"));
}

TEST_CASE("the file is rotated by size and keeps the configured number of old files") {
    bg::test::TempDir dir;
    const std::string path = (dir.path / "audit.log").string();
    bg::AuditLog log(path, bg::AuditLimits{2000, 2, 1024, 1000});
    std::string error;
    REQUIRE(log.open(error));
    for (int i = 0; i < 200; ++i) {
        CHECK(log.append(record("set green=" + std::to_string(i % 100))));
    }
    CHECK(fs::exists(path));
    CHECK(fs::exists(path + ".1"));
    CHECK(fs::exists(path + ".2"));
    CHECK_FALSE(fs::exists(path + ".3"));
    for (const std::string& p : {path, path + ".1", path + ".2"}) {
        CHECK(fs::file_size(p) <= 2000);
    }
    // history still sees the newest records, across the rotation.
    auto last = log.last(3);
    REQUIRE(last.size() == 3);
    CHECK(json::parse(last.back()).at("command").as_string() == "set green=99");
}

TEST_CASE("reopen starts a new file at the path after logrotate moved the old one") {
    bg::test::TempDir dir;
    const std::string path = (dir.path / "audit.log").string();
    bg::AuditLog log(path);
    std::string error;
    REQUIRE(log.open(error));
    CHECK(log.append(record("flip")));
    fs::rename(path, path + ".moved");
    CHECK(log.append(record("rollback")));  // still into the moved file
    log.reopen();
    CHECK(log.append(record("promote")));
    std::ifstream moved(path + ".moved");
    std::string text((std::istreambuf_iterator<char>(moved)), {});
    CHECK(text.find("rollback") != std::string::npos);
    std::ifstream fresh(path);
    std::string now((std::istreambuf_iterator<char>(fresh)), {});
    CHECK(now.find("promote") != std::string::npos);
    CHECK(now.find("rollback") == std::string::npos);
}
