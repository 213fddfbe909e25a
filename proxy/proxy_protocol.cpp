#include "proxy_protocol.hpp"

#include <algorithm>
#include <array>
#include <boost/asio/ip/address.hpp>
#include <boost/crc.hpp>
#include <optional>
#include <string>
#include <utility>

namespace bg {

namespace ip = boost::asio::ip;

namespace {

constexpr std::string_view v1_signature = "PROXY ";
constexpr std::string_view v2_signature{"\r\n\r\n\0\r\nQUIT\n", 12};
constexpr std::size_t v1_max_length = 107;  // the spec's worst case, "PROXY TCP6 ..." with CRLF
constexpr std::size_t v2_fixed_length = 16;

constexpr unsigned v2_command_local = 0x0;
constexpr unsigned v2_command_proxy = 0x1;

constexpr unsigned char v2_unspec = 0x00;
constexpr unsigned char v2_tcp4 = 0x11;
constexpr unsigned char v2_udp4 = 0x12;
constexpr unsigned char v2_tcp6 = 0x21;
constexpr unsigned char v2_udp6 = 0x22;
constexpr unsigned char v2_unix_stream = 0x31;
constexpr unsigned char v2_unix_dgram = 0x32;

constexpr std::size_t v2_ipv4_block = 4 + 4 + 2 + 2;
constexpr std::size_t v2_ipv6_block = 16 + 16 + 2 + 2;
constexpr std::size_t v2_unix_block = 108 + 108;

constexpr unsigned char v2_tlv_crc32c = 0x03;

// The address block's size for a family, 0 for UNSPEC.
std::size_t address_block(unsigned char family) {
    switch (family) {
        case v2_tcp4:
        case v2_udp4:
            return v2_ipv4_block;
        case v2_tcp6:
        case v2_udp6:
            return v2_ipv6_block;
        case v2_unix_stream:
        case v2_unix_dgram:
            return v2_unix_block;
        default:
            return 0;
    }
}

// The TLVs after the address block (spec 2.2.7) must tile the rest of the header exactly, and
// a CRC32C one must match the header (its own value read as zeros): HAProxy refuses both, and a
// TLV running past the header is a sender's bug or a probe. Empty when they are fine.
std::string tlv_problem(std::string_view header, std::size_t at) {
    while (at < header.size()) {
        if (header.size() - at < 3) {
            return "PROXY v2 header with a truncated TLV";
        }
        const unsigned char type = static_cast<unsigned char>(header[at]);
        const std::size_t length = (std::size_t{static_cast<unsigned char>(header[at + 1])} << 8) |
                                   static_cast<unsigned char>(header[at + 2]);
        if (length > header.size() - at - 3) {
            return "PROXY v2 header with a TLV longer than the header";
        }
        if (type == v2_tlv_crc32c) {
            if (length != 4) {
                return "PROXY v2 header with a CRC32C TLV of " + std::to_string(length) + " bytes";
            }
            boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;
            crc.process_bytes(header.data(), at + 3);
            static constexpr char zeros[4] = {};
            crc.process_bytes(zeros, 4);
            crc.process_bytes(header.data() + at + 7, header.size() - at - 7);
            const std::uint32_t sent =
                (std::uint32_t{static_cast<unsigned char>(header[at + 3])} << 24) |
                (std::uint32_t{static_cast<unsigned char>(header[at + 4])} << 16) |
                (std::uint32_t{static_cast<unsigned char>(header[at + 5])} << 8) |
                static_cast<unsigned char>(header[at + 6]);
            if (crc.checksum() != sent) {
                return "PROXY v2 header whose CRC32C does not match";
            }
        }
        at += 3 + length;
    }
    return {};
}

ProxyHeaderParse malformed(std::string error) {
    ProxyHeaderParse parse;
    parse.status = ProxyHeaderStatus::malformed;
    parse.error = std::move(error);
    return parse;
}

ProxyHeaderParse complete(std::size_t length, ProxyHeader header) {
    ProxyHeaderParse parse;
    parse.status = ProxyHeaderStatus::complete;
    parse.length = length;
    parse.header = header;
    return parse;
}

// True while the bytes seen so far could still be the start of `signature` (or contain it).
bool agrees_with(std::string_view bytes, std::string_view signature) {
    const std::size_t n = std::min(bytes.size(), signature.size());
    return bytes.substr(0, n) == signature.substr(0, n);
}

// Decimal 0..65535; no sign and no leading zeros, so each port has exactly one spelling.
std::optional<std::uint16_t> parse_v1_port(std::string_view text) {
    if (text.empty() || text.size() > 5 || (text.size() > 1 && text.front() == '0')) {
        return std::nullopt;
    }
    unsigned value = 0;
    for (const char c : text) {
        if (c < '0' || c > '9') {
            return std::nullopt;
        }
        value = value * 10 + static_cast<unsigned>(c - '0');
    }
    if (value > 65535) {
        return std::nullopt;
    }
    return static_cast<std::uint16_t>(value);
}

// inet_pton alone would accept an IPv6 scope ("fe80::1%eth0") and look up the interface; a
// header names plain addresses, so the character set is checked first.
std::optional<ip::address> parse_v1_address(std::string_view text, bool v6) {
    const bool plain = !text.empty() && std::all_of(text.begin(), text.end(), [v6](char c) {
        const bool digit = c >= '0' && c <= '9';
        if (!v6) {
            return digit || c == '.';
        }
        return digit || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' || c == '.';
    });
    if (!plain) {
        return std::nullopt;
    }
    boost::system::error_code ec;
    const std::string copy(text);
    ip::address address;
    if (v6) {
        address = ip::make_address_v6(copy, ec);
    } else {
        address = ip::make_address_v4(copy, ec);
    }
    if (ec) {
        return std::nullopt;
    }
    return address;
}

ProxyHeaderParse parse_v1(std::string_view bytes) {
    const std::string_view window = bytes.substr(0, v1_max_length);
    const std::size_t lf = window.find('\n');
    if (lf == std::string_view::npos) {
        if (bytes.size() >= v1_max_length) {
            return malformed("PROXY v1 header without CRLF within 107 bytes");
        }
        return {};
    }
    if (window[lf - 1] != '\r') {
        return malformed("PROXY v1 header ends in a bare LF");
    }
    const std::size_t length = lf + 1;
    // Between "PROXY " and the CR.
    std::string_view line = bytes.substr(v1_signature.size(), lf - 1 - v1_signature.size());

    const std::size_t space = line.find(' ');
    const std::string_view family = line.substr(0, space);
    if (family == "UNKNOWN") {
        // The sender could not tell (or would not say): the rest of the line means nothing.
        ProxyHeader header;
        header.local = true;
        return complete(length, header);
    }
    const bool v6 = family == "TCP6";
    if (!v6 && family != "TCP4") {
        return malformed("PROXY v1 header with an unknown family (not TCP4, TCP6 or UNKNOWN)");
    }
    if (space == std::string_view::npos) {
        return malformed("PROXY v1 header without addresses");
    }
    line.remove_prefix(space + 1);

    // Exactly four fields separated by single spaces: an empty field is a doubled, leading or
    // trailing space.
    std::string_view fields[4];
    for (std::size_t i = 0; i < 4; ++i) {
        const std::size_t next = line.find(' ');
        if (i < 3 && next == std::string_view::npos) {
            return malformed("PROXY v1 header with fewer than four address fields");
        }
        if (i == 3 && next != std::string_view::npos) {
            return malformed("PROXY v1 header with more than four address fields");
        }
        fields[i] = line.substr(0, next);
        if (fields[i].empty()) {
            return malformed("PROXY v1 header with an empty field (a doubled space?)");
        }
        line.remove_prefix(i < 3 ? next + 1 : line.size());
    }

    const auto source = parse_v1_address(fields[0], v6);
    const auto destination = parse_v1_address(fields[1], v6);
    if (!source || !destination) {
        return malformed(v6 ? "PROXY v1 header with an invalid IPv6 address"
                            : "PROXY v1 header with an invalid IPv4 address");
    }
    const auto source_port = parse_v1_port(fields[2]);
    const auto destination_port = parse_v1_port(fields[3]);
    if (!source_port || !destination_port) {
        return malformed("PROXY v1 header with an invalid port");
    }
    ProxyHeader header;
    header.source = ip::tcp::endpoint(*source, *source_port);
    header.destination = ip::tcp::endpoint(*destination, *destination_port);
    return complete(length, header);
}

unsigned char byte_at(std::string_view bytes, std::size_t i) {
    return static_cast<unsigned char>(bytes[i]);
}

std::uint16_t u16_at(std::string_view bytes, std::size_t i) {
    return static_cast<std::uint16_t>((byte_at(bytes, i) << 8) | byte_at(bytes, i + 1));
}

template <std::size_t N>
std::array<unsigned char, N> bytes_at(std::string_view bytes, std::size_t i) {
    std::array<unsigned char, N> out{};
    std::copy_n(bytes.begin() + static_cast<std::ptrdiff_t>(i), N, out.begin());
    return out;
}

// Why a family/protocol byte is refused for `command`; empty when it is taken.
std::string family_problem(unsigned command, unsigned char family) {
    switch (family) {
        case v2_unspec:
        case v2_tcp4:
        case v2_tcp6:
            break;
        case v2_unix_stream:
            // A sender listening on a unix socket (HAProxy's frontend can): the client has no
            // address we could use, so the connection's own stands, as for LOCAL.
            break;
        case v2_udp4:
        case v2_udp6:
        case v2_unix_dgram:
            // A LOCAL header's family is ignored; a PROXY one names a connection we cannot
            // stand in for, since we serve streams only.
            if (command == v2_command_proxy) {
                return "PROXY v2 header for a datagram connection (streams only)";
            }
            break;
        default:
            return "PROXY v2 header with unknown family/protocol " + std::to_string(family);
    }
    return {};
}

// Each field is judged as soon as it arrives, so a bad sender is refused without waiting for
// (or reading) its whole length.
ProxyHeaderParse parse_v2(std::string_view bytes) {
    if (bytes.size() <= 12) {
        return {};
    }
    const unsigned version = byte_at(bytes, 12) >> 4;
    const unsigned command = byte_at(bytes, 12) & 0x0f;
    if (version != 2) {
        return malformed("PROXY v2 header with version " + std::to_string(version));
    }
    if (command != v2_command_local && command != v2_command_proxy) {
        return malformed("PROXY v2 header with unknown command " + std::to_string(command));
    }

    if (bytes.size() <= 13) {
        return {};
    }
    const unsigned char family = byte_at(bytes, 13);
    if (auto problem = family_problem(command, family); !problem.empty()) {
        return malformed(std::move(problem));
    }

    if (bytes.size() < v2_fixed_length) {
        return {};
    }
    const std::size_t length = u16_at(bytes, 14);
    if (length > max_proxy_v2_length) {
        return malformed("PROXY v2 header longer than " + std::to_string(max_proxy_v2_length) +
                         " bytes (" + std::to_string(length) + ")");
    }
    // LOCAL carries no addresses worth reading, whatever its family says (HAProxy's receiver
    // does not check them either); nor does a unix socket's PROXY.
    const bool addresses =
        command == v2_command_proxy && family != v2_unspec && family != v2_unix_stream;
    const std::size_t needed = address_block(family);
    if (command == v2_command_proxy) {
        if (length < needed) {
            return malformed("PROXY v2 header length " + std::to_string(length) +
                             " too short for its addresses (" + std::to_string(needed) + ")");
        }
    }
    if (bytes.size() < v2_fixed_length + length) {
        return {};
    }

    if (length >= needed) {
        if (auto problem =
                tlv_problem(bytes.substr(0, v2_fixed_length + length), v2_fixed_length + needed);
            !problem.empty()) {
            return malformed(std::move(problem));
        }
    }
    ProxyHeader header;
    if (!addresses) {
        header.local = true;
        return complete(v2_fixed_length + length, header);
    }
    // The TLVs (checked above) are otherwise skipped: nothing we do depends on them.
    const std::size_t at = v2_fixed_length;
    if (family == v2_tcp4) {
        header.source =
            ip::tcp::endpoint(ip::address_v4(bytes_at<4>(bytes, at)), u16_at(bytes, at + 8));
        header.destination =
            ip::tcp::endpoint(ip::address_v4(bytes_at<4>(bytes, at + 4)), u16_at(bytes, at + 10));
    } else {
        header.source =
            ip::tcp::endpoint(ip::address_v6(bytes_at<16>(bytes, at)), u16_at(bytes, at + 32));
        header.destination =
            ip::tcp::endpoint(ip::address_v6(bytes_at<16>(bytes, at + 16)), u16_at(bytes, at + 34));
    }
    return complete(v2_fixed_length + length, header);
}

// The IPv4 address behind `address`, native or v4-mapped.
std::optional<ip::address_v4> as_v4(const ip::address& address) {
    if (address.is_v4()) {
        return address.to_v4();
    }
    if (address.to_v6().is_v4_mapped()) {
        return ip::make_address_v4(ip::v4_mapped, address.to_v6());
    }
    return std::nullopt;
}

ip::address_v6 as_v6(const ip::address& address) {
    if (address.is_v6()) {
        return address.to_v6();
    }
    return ip::make_address_v6(ip::v4_mapped, address.to_v4());
}

template <std::size_t N>
void append(std::string& out, const std::array<unsigned char, N>& bytes) {
    out.append(reinterpret_cast<const char*>(bytes.data()), N);
}

void append_u16(std::string& out, std::uint16_t value) {
    out.push_back(static_cast<char>(value >> 8));
    out.push_back(static_cast<char>(value & 0xff));
}

}  // namespace

ProxyHeaderParse parse_proxy_header(std::string_view bytes) {
    if (agrees_with(bytes, v1_signature)) {
        if (bytes.size() < v1_signature.size()) {
            return {};
        }
        return parse_v1(bytes);
    }
    if (agrees_with(bytes, v2_signature)) {
        return parse_v2(bytes);
    }
    return malformed("no PROXY protocol signature");
}

std::string encode_proxy_v2(const ip::tcp::endpoint& source, const ip::tcp::endpoint& destination) {
    std::string out(v2_signature);
    out.push_back(static_cast<char>(0x20 | v2_command_proxy));
    // A dual-stack listener sees IPv4 clients as v4-mapped; a backend expects them as IPv4. A
    // genuine IPv6 address on either side makes both IPv6, with any IPv4 one mapped.
    const auto source_v4 = as_v4(source.address());
    const auto destination_v4 = as_v4(destination.address());
    if (source_v4 && destination_v4) {
        out.push_back(static_cast<char>(v2_tcp4));
        append_u16(out, static_cast<std::uint16_t>(v2_ipv4_block));
        append(out, source_v4->to_bytes());
        append(out, destination_v4->to_bytes());
    } else {
        out.push_back(static_cast<char>(v2_tcp6));
        append_u16(out, static_cast<std::uint16_t>(v2_ipv6_block));
        append(out, as_v6(source.address()).to_bytes());
        append(out, as_v6(destination.address()).to_bytes());
    }
    append_u16(out, source.port());
    append_u16(out, destination.port());
    return out;
}

std::string encode_proxy_v2_local() {
    std::string out(v2_signature);
    out.push_back(static_cast<char>(0x20 | v2_command_local));
    out.push_back(static_cast<char>(v2_unspec));
    append_u16(out, 0);
    return out;
}

}  // namespace bg
