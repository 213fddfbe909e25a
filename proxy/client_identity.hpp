#pragma once
// Who a client is: the socket's peer, or the one a PROXY header named.

#include <boost/asio/ip/address.hpp>
#include <string>

#include "proxy_header_reader.hpp"

namespace bg {

struct ClientIdentity {
    ClientEndpoints endpoints;         // as a PROXY header to a backend tells them
    boost::asio::ip::address address;  // the original client
    std::string ip;                    // address, as text for headers and the log
    bool trusted = false;              // the HTTP peer is in trusted_proxies
};

}  // namespace bg
