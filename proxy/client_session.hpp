#pragma once
// One client connection: reads requests, routes each to a backend, streams both messages.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

namespace bg {

class Worker;

// Serves the connection until it closes. Worker thread only.
boost::asio::awaitable<void> serve_client(Worker& worker, boost::asio::ip::tcp::socket socket);

}  // namespace bg
