// parse_proxy_header as read_proxy_header() uses it: on whatever bytes have arrived,
// "incomplete" meaning read more. Checked:
// - every prefix of the input gets the verdict the whole would justify: a header that is
//   complete at L bytes is incomplete (never malformed, never complete) before L, and the same
//   header from L on; a refusal is final; nothing waits past max_proxy_header bytes;
// - the session's arithmetic on arrival in pieces (take = length - have) never underflows;
// - encode_proxy_v2 of the parsed addresses, and of addresses made from the input, parses back
//   to the same addresses (v4-mapped and IPv4 count as one).

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "proxy_protocol.hpp"

namespace {

namespace ip = boost::asio::ip;
using bg::fuzz::require;

bool same_parse(const bg::ProxyHeaderParse& a, const bg::ProxyHeaderParse& b) {
    return a.status == b.status && a.length == b.length && a.header.local == b.header.local &&
           a.header.source == b.header.source && a.header.destination == b.header.destination;
}

// IPv4 and its v4-mapped IPv6 spelling are the same client.
ip::address_v6 canonical(const ip::address& address) {
    return address.is_v4() ? ip::make_address_v6(ip::v4_mapped, address.to_v4()) : address.to_v6();
}

bool same_endpoint(const ip::tcp::endpoint& a, const ip::tcp::endpoint& b) {
    return a.port() == b.port() && canonical(a.address()) == canonical(b.address());
}

void check_round_trip(const ip::tcp::endpoint& source, const ip::tcp::endpoint& destination) {
    const std::string encoded = bg::encode_proxy_v2(source, destination);
    const bg::ProxyHeaderParse back = bg::parse_proxy_header(encoded);
    require(back.status == bg::ProxyHeaderStatus::complete, "an encoded v2 header parses",
            back.error);
    require(back.length == encoded.size(), "an encoded v2 header is parsed whole");
    require(!back.header.local, "an encoded v2 header is a PROXY command");
    require(same_endpoint(back.header.source, source), "v2 round trip keeps the source");
    require(same_endpoint(back.header.destination, destination),
            "v2 round trip keeps the destination");
    require(bg::encode_proxy_v2(back.header.source, back.header.destination) == encoded,
            "encoding what was parsed gives the same bytes");
}

// Peeks what has arrived, consumes what belongs to the header, as read_proxy_header() does,
// with arrivals of the sizes `pieces` cycles through.
void check_session_arithmetic(std::string_view input, std::string_view pieces) {
    std::size_t have = 0;
    std::size_t k = 0;
    while (have < input.size() && have < bg::max_proxy_header) {
        const std::size_t piece = pieces.empty()
                                      ? input.size()
                                      : 1 + static_cast<unsigned char>(pieces[k++ % pieces.size()]);
        const std::size_t seen =
            std::min({piece, input.size() - have, bg::max_proxy_header - have});
        const bg::ProxyHeaderParse parsed = bg::parse_proxy_header(input.substr(0, have + seen));
        if (parsed.status == bg::ProxyHeaderStatus::malformed) {
            return;
        }
        if (parsed.status == bg::ProxyHeaderStatus::complete) {
            require(parsed.length > have && parsed.length <= have + seen,
                    "a header completes within the bytes that arrived last");
            return;
        }
        have += seen;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view input(reinterpret_cast<const char*>(data), size);
    const bg::ProxyHeaderParse whole = bg::parse_proxy_header(input);

    if (whole.status == bg::ProxyHeaderStatus::incomplete) {
        require(input.size() < bg::max_proxy_header, "no header is undecided at max_proxy_header");
    }
    if (whole.status == bg::ProxyHeaderStatus::complete) {
        require(whole.length > 0 && whole.length <= input.size() &&
                    whole.length <= bg::max_proxy_header,
                "a complete header lies within the input");
        if (input.starts_with("PROXY ")) {
            require(whole.length <= 107, "a v1 header is at most 107 bytes");
        }
    }
    if (whole.status == bg::ProxyHeaderStatus::malformed) {
        require(!whole.error.empty(), "a refusal says why");
    }

    // Every prefix, shortest first: the verdict may only move incomplete -> complete (at the
    // header's length) or incomplete -> malformed, and then stays.
    const std::size_t last = std::min(input.size(), bg::max_proxy_header + 1);
    bool refused = false;
    for (std::size_t k = 0; k <= last; ++k) {
        const bg::ProxyHeaderParse part = bg::parse_proxy_header(input.substr(0, k));
        if (refused) {
            require(part.status == bg::ProxyHeaderStatus::malformed, "a refusal is final");
            continue;
        }
        if (whole.status == bg::ProxyHeaderStatus::complete && k >= whole.length) {
            require(same_parse(part, whole), "more bytes after a complete header change nothing");
            continue;
        }
        if (whole.status == bg::ProxyHeaderStatus::complete) {
            require(part.status == bg::ProxyHeaderStatus::incomplete,
                    "a prefix of a valid header is incomplete", part.error);
            continue;
        }
        refused = part.status == bg::ProxyHeaderStatus::malformed;
        require(part.status != bg::ProxyHeaderStatus::complete,
                "a prefix is never complete when the whole is not");
    }

    check_session_arithmetic(input, input.substr(0, std::min<std::size_t>(input.size(), 8)));

    if (whole.status == bg::ProxyHeaderStatus::complete && !whole.header.local) {
        check_round_trip(whole.header.source, whole.header.destination);
    }
    const bg::ProxyHeaderParse local = bg::parse_proxy_header(bg::encode_proxy_v2_local());
    require(local.status == bg::ProxyHeaderStatus::complete && local.header.local,
            "a LOCAL header parses as LOCAL");

    // Addresses from the raw bytes: byte 0 picks each side's family (IPv4, IPv6, v4-mapped).
    if (input.size() >= 37) {
        const auto byte = [&input](std::size_t i) { return static_cast<unsigned char>(input[i]); };
        const auto make = [&](std::size_t at, unsigned kind) -> ip::tcp::endpoint {
            std::array<unsigned char, 16> v6{};
            for (std::size_t i = 0; i < 16; ++i) {
                v6[i] = byte(at + i);
            }
            const auto port = static_cast<std::uint16_t>(byte(at + 16) << 8 | byte(at + 17));
            std::array<unsigned char, 4> v4{v6[0], v6[1], v6[2], v6[3]};
            switch (kind % 3) {
                case 0:
                    return {ip::address_v4(v4), port};
                case 1:
                    return {ip::address_v6(v6), port};
                default:
                    return {ip::make_address_v6(ip::v4_mapped, ip::address_v4(v4)), port};
            }
        };
        check_round_trip(make(1, byte(0)), make(19, byte(0) / 3u));
    }
    return 0;
}
