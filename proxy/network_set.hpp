#pragma once
// NetworkSet: a list of address ranges ("10.0.0.0/8", "::1/128", "192.0.2.7"), parsed once at
// config load and matched per request without allocating.

#include <boost/asio/ip/address.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace bg {

class NetworkSet {
  public:
    // Adds one range; false with a message when it is not an address or address/prefix.
    bool add(std::string_view text, std::string& error);
    bool contains(const boost::asio::ip::address& address) const;
    bool empty() const { return ranges_.empty(); }

  private:
    struct Range {
        bool v6 = false;
        std::array<unsigned char, 16> bytes{};
        unsigned prefix = 0;
    };
    std::vector<Range> ranges_;
};

}  // namespace bg
