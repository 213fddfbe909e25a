#include <doctest/doctest.h>

#include "etcd_client.hpp"

TEST_CASE("etcd's JSON carries bytes as base64, both ways") {
    CHECK(bg::base64_encode("") == "");
    CHECK(bg::base64_encode("/bg/x") == "L2JnL3g=");
    CHECK(bg::base64_encode("hello") == "aGVsbG8=");
    CHECK(bg::base64_decode("aGVsbG8=").value() == "hello");
    CHECK(bg::base64_decode("L2JnL3g=").value() == "/bg/x");
    CHECK(bg::base64_decode("YWI=").value() == "ab");
    const std::string binary("\x00\xff\x10", 3);
    CHECK(bg::base64_decode(bg::base64_encode(binary)).value() == binary);
    CHECK_FALSE(bg::base64_decode("abc").has_value());   // not a multiple of 4
    CHECK_FALSE(bg::base64_decode("a!c=").has_value());  // not base64
}

TEST_CASE("a prefix's range end is the first key after every key with the prefix") {
    CHECK(bg::prefix_end("/bgproxy/fleets/shop/") == "/bgproxy/fleets/shop0");
    CHECK(bg::prefix_end("a\xff") == "b");
    CHECK(bg::prefix_end("\xff") == std::string(1, '\0'));
}
