#include <doctest/doctest.h>

#include <boost/crc.hpp>
#include <string>
#include <string_view>

#include "proxy_protocol.hpp"

namespace ip = boost::asio::ip;

namespace {

const std::string v2_signature("\r\n\r\n\0\r\nQUIT\n", 12);

ip::tcp::endpoint endpoint(const char* address, unsigned short port) {
    return {ip::make_address(address), port};
}

// A v2 header from its fixed fields and the bytes after them; `length` is what the length field
// says, which a malformed case may set to disagree with the payload.
std::string v2(unsigned char ver_cmd, unsigned char family, std::size_t length,
               const std::string& payload) {
    std::string out = v2_signature;
    out.push_back(static_cast<char>(ver_cmd));
    out.push_back(static_cast<char>(family));
    out.push_back(static_cast<char>(length >> 8));
    out.push_back(static_cast<char>(length & 0xff));
    return out + payload;
}

std::string v2(unsigned char ver_cmd, unsigned char family, const std::string& payload) {
    return v2(ver_cmd, family, payload.size(), payload);
}

std::string raw(std::initializer_list<int> bytes) {
    std::string out;
    for (const int b : bytes) {
        out.push_back(static_cast<char>(b));
    }
    return out;
}

// 192.0.2.1:56324 -> 198.51.100.7:443, then a TLV (PP2_TYPE_AUTHORITY "a.example").
const std::string v4_block = raw({192, 0, 2, 1, 198, 51, 100, 7, 0xdc, 0x04, 0x01, 0xbb});
const std::string tlv = raw({0x02, 0x00, 0x09}) + "a.example";

// 2001:db8::1:56324 -> 2001:db8::2:443.
const std::string v6_block =
    raw({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,    1,    0x20, 0x01,
         0x0d, 0xb8, 0,    0,    0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0xdc, 0x04, 0x01, 0xbb});

bg::ProxyHeaderStatus status(std::string_view bytes) {
    return bg::parse_proxy_header(bytes).status;
}

bool malformed(std::string_view bytes) {
    const auto parse = bg::parse_proxy_header(bytes);
    return parse.status == bg::ProxyHeaderStatus::malformed && !parse.error.empty();
}

// Whatever part of a valid header has arrived, the answer is "read more", never a verdict.
void check_every_prefix_incomplete(const std::string& header) {
    for (std::size_t n = 0; n < header.size(); ++n) {
        INFO("prefix length " << n);
        CHECK(status(std::string_view(header).substr(0, n)) == bg::ProxyHeaderStatus::incomplete);
    }
    CHECK(status(header) == bg::ProxyHeaderStatus::complete);
}

}  // namespace

TEST_CASE("v1 TCP4 gives both endpoints") {
    const std::string header = "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n";
    const auto parse = bg::parse_proxy_header(header);
    REQUIRE(parse.status == bg::ProxyHeaderStatus::complete);
    CHECK(parse.length == header.size());
    CHECK_FALSE(parse.header.local);
    CHECK(parse.header.source == endpoint("192.0.2.1", 56324));
    CHECK(parse.header.destination == endpoint("198.51.100.7", 443));
    CHECK(parse.error.empty());
}

TEST_CASE("v1 TCP6 gives both endpoints") {
    const std::string header = "PROXY TCP6 2001:db8::1 ::ffff:198.51.100.7 0 65535\r\n";
    const auto parse = bg::parse_proxy_header(header);
    REQUIRE(parse.status == bg::ProxyHeaderStatus::complete);
    CHECK(parse.length == header.size());
    CHECK_FALSE(parse.header.local);
    CHECK(parse.header.source == endpoint("2001:db8::1", 0));
    CHECK(parse.header.destination == endpoint("::ffff:198.51.100.7", 65535));
}

TEST_CASE("v1 UNKNOWN keeps the connection's own addresses and ignores the rest of the line") {
    for (const std::string header :
         {"PROXY UNKNOWN\r\n", "PROXY UNKNOWN ffff:: whatever you like 99999\r\n"}) {
        const auto parse = bg::parse_proxy_header(header);
        REQUIRE(parse.status == bg::ProxyHeaderStatus::complete);
        CHECK(parse.length == header.size());
        CHECK(parse.header.local);
    }
    CHECK(malformed("PROXY UNKNOWNX\r\n"));
}

TEST_CASE("v1 is at most 107 bytes with its CRLF") {
    const std::string longest = "PROXY UNKNOWN " + std::string(107 - 16, 'a') + "\r\n";
    REQUIRE(longest.size() == 107);
    CHECK(status(longest) == bg::ProxyHeaderStatus::complete);
    CHECK(malformed("PROXY UNKNOWN " + std::string(107 - 15, 'a') + "\r\n"));
    // The worst case the spec names fits.
    const std::string tcp6 =
        "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        "65535 65535\r\n";
    CHECK(status(tcp6) == bg::ProxyHeaderStatus::complete);
}

TEST_CASE("every prefix of a valid header is incomplete") {
    check_every_prefix_incomplete("PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n");
    check_every_prefix_incomplete("PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n");
    check_every_prefix_incomplete("PROXY UNKNOWN\r\n");
    check_every_prefix_incomplete(v2(0x21, 0x11, v4_block + tlv));
    check_every_prefix_incomplete(v2(0x21, 0x21, v6_block));
    check_every_prefix_incomplete(v2(0x20, 0x00, ""));
}

TEST_CASE("bytes after the header are left for the request") {
    const std::string request = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    const std::string v1 = "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n";
    auto parse = bg::parse_proxy_header(v1 + request);
    REQUIRE(parse.status == bg::ProxyHeaderStatus::complete);
    CHECK(parse.length == v1.size());

    const std::string v2_header = v2(0x21, 0x11, v4_block + tlv);
    parse = bg::parse_proxy_header(v2_header + request);
    REQUIRE(parse.status == bg::ProxyHeaderStatus::complete);
    CHECK(parse.length == v2_header.size());

    // Even bytes that look like another header.
    parse = bg::parse_proxy_header(v1 + v1);
    REQUIRE(parse.status == bg::ProxyHeaderStatus::complete);
    CHECK(parse.length == v1.size());
}

TEST_CASE("v1 malformed headers") {
    CHECK(malformed("PROXY TCP5 192.0.2.1 198.51.100.7 56324 443\r\n"));
    CHECK(malformed("PROXY tcp4 192.0.2.1 198.51.100.7 56324 443\r\n"));
    CHECK(malformed("proxy TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"));
    CHECK(malformed("PROXY TCP4 192.0.2.256 198.51.100.7 56324 443\r\n"));
    CHECK(malformed("PROXY TCP4 192.0.2 198.51.100.7 56324 443\r\n"));
    CHECK(malformed("PROXY TCP4 2001:db8::1 198.51.100.7 56324 443\r\n"));  // wrong family
    CHECK(malformed("PROXY TCP6 192.0.2.1 2001:db8::2 56324 443\r\n"));     // wrong family
    CHECK(malformed("PROXY TCP6 fe80::1%lo 2001:db8::2 56324 443\r\n"));    // no scopes
    CHECK(malformed("PROXY TCP4 192.0.2.1 198.51.100.7 56324 65536\r\n"));
    CHECK(malformed("PROXY TCP4 192.0.2.1 198.51.100.7 56324 +443\r\n"));
    CHECK(malformed("PROXY TCP4 192.0.2.1 198.51.100.7 56324 -1\r\n"));
    CHECK(malformed("PROXY TCP4 192.0.2.1 198.51.100.7 056324 443\r\n"));
    CHECK(malformed("PROXY TCP4 192.0.2.1 198.51.100.7 00 443\r\n"));
    CHECK(malformed("PROXY TCP4 192.0.2.1  198.51.100.7 56324 443\r\n"));  // double space
    CHECK(malformed("PROXY  TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"));
    CHECK(malformed("PROXY TCP4 192.0.2.1 198.51.100.7 56324 443 \r\n"));  // trailing space
    CHECK(malformed("PROXY TCP4 192.0.2.1 198.51.100.7 56324\r\n"));
    CHECK(malformed("PROXY TCP4 192.0.2.1 198.51.100.7 56324 443 80\r\n"));
    CHECK(malformed("PROXY TCP4\r\n"));
    CHECK(malformed("PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\n"));  // bare LF
    CHECK(malformed("PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\r\n"));
    // No CRLF within 107 bytes: no point waiting for one.
    CHECK(malformed("PROXY TCP4 192.0.2.1 198.51.100.7 56324 443" + std::string(100, ' ')));
    CHECK(status("PROXY TCP4 192.0.2.1 198.51.100.7 56324 443" + std::string(63, ' ')) ==
          bg::ProxyHeaderStatus::incomplete);
    CHECK(malformed("PROXY TCP4 192.0.2.1 198.51.100.7 56324 443" + std::string(64, ' ')));
}

TEST_CASE("v2 LOCAL keeps the connection's own addresses") {
    const std::string header = v2(0x20, 0x00, "");
    auto parse = bg::parse_proxy_header(header);
    REQUIRE(parse.status == bg::ProxyHeaderStatus::complete);
    CHECK(parse.length == 16);
    CHECK(parse.header.local);

    // A LOCAL header's family and addresses are ignored, even UDP, UNIX or a short block.
    for (const unsigned char family : {0x11, 0x21, 0x12, 0x22, 0x31, 0x32}) {
        parse = bg::parse_proxy_header(v2(0x20, family, v4_block));
        REQUIRE(parse.status == bg::ProxyHeaderStatus::complete);
        CHECK(parse.length == 16 + v4_block.size());
        CHECK(parse.header.local);
    }
    // PROXY with UNSPEC: the sender does not know the addresses either.
    parse = bg::parse_proxy_header(v2(0x21, 0x00, ""));
    REQUIRE(parse.status == bg::ProxyHeaderStatus::complete);
    CHECK(parse.header.local);
}

TEST_CASE("v2 TCP over IPv4, with a TLV skipped") {
    const std::string header = v2(0x21, 0x11, v4_block + tlv);
    const auto parse = bg::parse_proxy_header(header);
    REQUIRE(parse.status == bg::ProxyHeaderStatus::complete);
    CHECK(parse.length == header.size());
    CHECK_FALSE(parse.header.local);
    CHECK(parse.header.source == endpoint("192.0.2.1", 56324));
    CHECK(parse.header.destination == endpoint("198.51.100.7", 443));
}

TEST_CASE("v2 TCP over IPv6, with a TLV skipped") {
    const std::string header = v2(0x21, 0x21, v6_block + tlv);
    const auto parse = bg::parse_proxy_header(header);
    REQUIRE(parse.status == bg::ProxyHeaderStatus::complete);
    CHECK(parse.length == header.size());
    CHECK_FALSE(parse.header.local);
    CHECK(parse.header.source == endpoint("2001:db8::1", 56324));
    CHECK(parse.header.destination == endpoint("2001:db8::2", 443));
}

TEST_CASE("v2 malformed headers are refused as soon as the bad byte arrives") {
    // Version 1 in the v2 framing, version 3, an unknown command: judged at byte 13.
    CHECK(malformed(v2_signature + raw({0x11})));
    CHECK(malformed(v2(0x11, 0x11, v4_block)));
    CHECK(malformed(v2(0x31, 0x11, v4_block)));
    CHECK(malformed(v2(0x22, 0x11, v4_block)));
    CHECK(malformed(v2(0x2f, 0x11, v4_block)));
    // An unknown family, whatever the command.
    CHECK(malformed(v2_signature + raw({0x21, 0x13})));
    CHECK(malformed(v2(0x20, 0x41, "")));
    // PROXY over UDP or UNIX datagrams: we only stand in for stream connections.
    CHECK(malformed(v2(0x21, 0x12, v4_block)));
    CHECK(malformed(v2(0x21, 0x22, v6_block)));
    CHECK(malformed(v2_signature + raw({0x21, 0x32})));
    CHECK(malformed(v2(0x21, 0x31, 215, "")));  // a unix block is 216 bytes
    // A length that does not cover the family's addresses, known before they arrive.
    CHECK(malformed(v2(0x21, 0x11, 11, "")));
    CHECK(malformed(v2(0x21, 0x21, 35, "")));
    CHECK(malformed(v2(0x21, 0x21, v4_block)));  // an IPv4 block under the IPv6 family
    // Longer than we are prepared to wait for.
    CHECK(malformed(v2(0x21, 0x11, bg::max_proxy_v2_length + 1, "")));
    CHECK(malformed(v2(0x21, 0x11, 0xffff, "")));
    CHECK(status(v2(0x21, 0x11, bg::max_proxy_v2_length, v4_block)) ==
          bg::ProxyHeaderStatus::incomplete);
    // (Padded with a NOOP TLV, PP2_TYPE_NOOP.)
    const std::string longest =
        v2(0x21, 0x11, v4_block + raw({0x04, 0x0f, 0xf1}) + std::string(4096 - 12 - 3, '\0'));
    REQUIRE(longest.size() == bg::max_proxy_header);
    CHECK(status(longest) == bg::ProxyHeaderStatus::complete);
}

TEST_CASE("encode_proxy_v2 parses back to the same endpoints") {
    const auto round_trip = [](const ip::tcp::endpoint& source,
                               const ip::tcp::endpoint& destination) {
        const std::string encoded = bg::encode_proxy_v2(source, destination);
        const auto parse = bg::parse_proxy_header(encoded);
        REQUIRE(parse.status == bg::ProxyHeaderStatus::complete);
        CHECK(parse.length == encoded.size());
        CHECK_FALSE(parse.header.local);
        return std::pair(encoded, parse.header);
    };

    auto [v4, v4_header] = round_trip(endpoint("192.0.2.1", 56324), endpoint("198.51.100.7", 443));
    CHECK(v4 == v2(0x21, 0x11, v4_block));
    CHECK(v4_header.source == endpoint("192.0.2.1", 56324));
    CHECK(v4_header.destination == endpoint("198.51.100.7", 443));

    auto [v6, v6_header] = round_trip(endpoint("2001:db8::1", 56324), endpoint("2001:db8::2", 443));
    CHECK(v6 == v2(0x21, 0x21, v6_block));
    CHECK(v6_header.source == endpoint("2001:db8::1", 56324));
    CHECK(v6_header.destination == endpoint("2001:db8::2", 443));

    // A dual-stack listener's v4-mapped client goes out as plain IPv4.
    auto [mapped, mapped_header] =
        round_trip(endpoint("::ffff:192.0.2.1", 56324), endpoint("198.51.100.7", 443));
    CHECK(mapped == v4);
    CHECK(mapped_header.source == endpoint("192.0.2.1", 56324));

    // Mixed families with a real IPv6 address: both as IPv6, the IPv4 one mapped.
    auto [mixed, mixed_header] =
        round_trip(endpoint("2001:db8::1", 1), endpoint("198.51.100.7", 443));
    CHECK(mixed.size() == 16 + 36);
    CHECK(mixed_header.source == endpoint("2001:db8::1", 1));
    CHECK(mixed_header.destination == endpoint("::ffff:198.51.100.7", 443));
}

TEST_CASE("anything without a PROXY signature is malformed at once") {
    CHECK(malformed("GET / HTTP/1.1\r\n"));
    CHECK(malformed("G"));
    CHECK(malformed("PROXZ"));
    CHECK(malformed("\r\n\r\n\r"));
    CHECK(malformed(std::string("\r\n\r\n\0\r\nQUIT\r", 12)));
    // Still a possible signature: wait.
    CHECK(status("") == bg::ProxyHeaderStatus::incomplete);
    CHECK(status("PRO") == bg::ProxyHeaderStatus::incomplete);
    CHECK(status("PROXY") == bg::ProxyHeaderStatus::incomplete);
    CHECK(status("\r\n\r\n") == bg::ProxyHeaderStatus::incomplete);
    CHECK(status(std::string("\r\n\r\n\0", 5)) == bg::ProxyHeaderStatus::incomplete);
}

TEST_CASE("encode_proxy_v2_local is the 16-byte LOCAL header") {
    const std::string encoded = bg::encode_proxy_v2_local();
    CHECK(encoded == v2(0x20, 0x00, ""));
    auto parse = bg::parse_proxy_header(encoded);
    REQUIRE(parse.status == bg::ProxyHeaderStatus::complete);
    CHECK(parse.length == 16);
    CHECK(parse.header.local);
}

TEST_CASE("v2 from a unix socket keeps the connection's own addresses") {
    const std::string header = v2(0x21, 0x31, std::string(216, '\0') + tlv);
    const auto parse = bg::parse_proxy_header(header);
    REQUIRE(parse.status == bg::ProxyHeaderStatus::complete);
    CHECK(parse.length == header.size());
    CHECK(parse.header.local);
}

TEST_CASE("v2 TLVs tile the header and a CRC32C matches") {
    CHECK(malformed(v2(0x21, 0x11, v4_block + raw({0x04, 0x00, 0x50}) + "abc")));  // overruns
    CHECK(malformed(v2(0x21, 0x11, v4_block + raw({0x04, 0x00}))));                // truncated
    CHECK(malformed(v2(0x20, 0x00, raw({0x04, 0x00, 0x05}) + "ab")));  // LOCAL's TLVs too
    CHECK(malformed(v2(0x21, 0x11, v4_block + raw({0x03, 0x00, 0x03, 1, 2, 3}))));
    // A CRC32C over the whole header, its own value zeroed (spec 2.2.5).
    std::string header = v2(0x21, 0x11, v4_block + tlv + raw({0x03, 0x00, 0x04, 0, 0, 0, 0}));
    boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;
    crc.process_bytes(header.data(), header.size());
    const std::uint32_t sum = crc.checksum();
    CHECK(malformed(header));  // zeros are not the checksum
    for (int i = 0; i < 4; ++i) {
        header[header.size() - 4 + i] = static_cast<char>(sum >> (24 - 8 * i));
    }
    const auto parse = bg::parse_proxy_header(header);
    REQUIRE(parse.status == bg::ProxyHeaderStatus::complete);
    CHECK(parse.header.source == endpoint("192.0.2.1", 56324));
    header[20] ^= 1;  // one bit of the addresses changed on the way
    CHECK(malformed(header));
}
