#include "network_set.hpp"

#include <charconv>

namespace bg {

namespace {

// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) match IPv4 ranges.
boost::asio::ip::address canonical(const boost::asio::ip::address& address) {
    if (address.is_v6() && address.to_v6().is_v4_mapped()) {
        return boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, address.to_v6());
    }
    return address;
}

}  // namespace

bool NetworkSet::add(std::string_view text, std::string& error) {
    auto slash = text.find('/');
    std::string host(text.substr(0, slash));
    boost::system::error_code ec;
    auto address = boost::asio::ip::make_address(host, ec);
    if (ec) {
        error = "'" + std::string(text) + "' is not an address or ADDRESS/PREFIX";
        return false;
    }
    address = canonical(address);
    Range range;
    range.v6 = address.is_v6();
    const unsigned max = range.v6 ? 128 : 32;
    range.prefix = max;
    if (slash != std::string_view::npos) {
        auto p = text.substr(slash + 1);
        auto [end, pec] = std::from_chars(p.data(), p.data() + p.size(), range.prefix);
        if (pec != std::errc{} || end != p.data() + p.size() || range.prefix > max || p.empty()) {
            error = "'" + std::string(text) + "': the prefix must be 0 to " + std::to_string(max);
            return false;
        }
    }
    if (range.v6) {
        auto b = address.to_v6().to_bytes();
        std::copy(b.begin(), b.end(), range.bytes.begin());
    } else {
        auto b = address.to_v4().to_bytes();
        std::copy(b.begin(), b.end(), range.bytes.begin());
    }
    ranges_.push_back(range);
    return true;
}

bool NetworkSet::contains(const boost::asio::ip::address& raw) const {
    const auto address = canonical(raw);
    std::array<unsigned char, 16> bytes{};
    if (address.is_v6()) {
        auto b = address.to_v6().to_bytes();
        std::copy(b.begin(), b.end(), bytes.begin());
    } else {
        auto b = address.to_v4().to_bytes();
        std::copy(b.begin(), b.end(), bytes.begin());
    }
    for (const Range& range : ranges_) {
        if (range.v6 != address.is_v6()) {
            continue;
        }
        unsigned bits = range.prefix;
        bool match = true;
        for (std::size_t i = 0; bits > 0 && match; ++i, bits = bits > 8 ? bits - 8 : 0) {
            const unsigned char mask =
                bits >= 8 ? 0xFF : static_cast<unsigned char>(0xFF << (8 - bits));
            match = (bytes[i] & mask) == (range.bytes[i] & mask);
        }
        if (match) {
            return true;
        }
    }
    return false;
}

}  // namespace bg
