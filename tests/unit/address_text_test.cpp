#include <doctest/doctest.h>

#include <boost/asio/ip/address.hpp>

#include "address_text.hpp"

namespace ip = boost::asio::ip;

TEST_CASE("address_text writes an address as asio's to_string does") {
    for (const char* text : {"0.0.0.0", "1.2.3.4", "127.0.0.1", "10.0.255.9", "255.255.255.255",
                             "192.168.100.200", "::1", "2001:db8::7", "::ffff:10.1.2.3"}) {
        const ip::address address = ip::make_address(text);
        CHECK(bg::address_text(address) == address.to_string());
        CHECK(bg::address_text(address) == text);
    }
}
