#include "address_text.hpp"

#include <array>
#include <charconv>

namespace bg {

std::string address_text(const boost::asio::ip::address& address) {
    if (!address.is_v4()) {
        return address.to_string();
    }
    const auto bytes = address.to_v4().to_bytes();
    std::array<char, 16> text{};  // "255.255.255.255"
    char* at = text.data();
    char* const end = text.data() + text.size();
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        if (i > 0) {
            *at++ = '.';
        }
        at = std::to_chars(at, end, static_cast<unsigned>(bytes[i])).ptr;
    }
    return std::string(text.data(), at);
}

}  // namespace bg
