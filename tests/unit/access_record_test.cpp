#include <doctest/doctest.h>

#include <boost/json.hpp>

#include "access_record.hpp"

TEST_CASE("an access line is one valid JSON object, whatever the path holds") {
    bg::AccessRecord r;
    r.start_unix_ms = 1764000000123;
    r.client = "::1";
    r.method = "GET";
    r.path = "/a\"b\\c\n\x01\xff";
    r.status = 502;
    r.bytes_in = 5;
    r.duration_ms = 1.5;
    r.colour = "green";
    r.backend = "green-1";
    r.retries = 2;
    r.error = "backend failed before responding";
    r.version = 7;
    std::string line = bg::to_json_line(r);
    CHECK(line.find('\n') == std::string::npos);
    auto json = boost::json::parse(line).as_object();
    CHECK(json.at("time").as_string() == "2025-11-24T16:00:00.123Z");
    CHECK(json.at("path").as_string() == "/a\"b\\c\n\x01\xc3\xbf");
    CHECK(json.at("status").to_number<int>() == 502);
    CHECK(json.at("retries").to_number<int>() == 2);
    CHECK(json.at("version").to_number<int>() == 7);
    CHECK(json.at("error").as_string() == "backend failed before responding");

    bg::AccessRecord plain;
    CHECK_FALSE(boost::json::parse(bg::to_json_line(plain)).as_object().contains("error"));
}
