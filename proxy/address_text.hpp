#pragma once
// An IP address as text, the way asio's to_string() writes it, for the client address every
// connection needs (X-Forwarded-For, the access log): IPv4 written directly, since glibc's
// inet_ntop goes through sprintf (8% of a new connection's instructions); IPv6 by asio.

#include <boost/asio/ip/address.hpp>
#include <string>

namespace bg {

std::string address_text(const boost::asio::ip::address& address);

}  // namespace bg
