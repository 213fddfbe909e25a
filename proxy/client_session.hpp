#pragma once
// One client connection: reads requests, routes each to a backend, streams both messages.

#include <cstddef>
#include <memory>

#include "io_types.hpp"

namespace bg {

class Worker;
struct ParkedClient;

// Serves a connection accepted on the config's listener `listener_index` from `peer` until it
// closes: the PROXY header and TLS handshake first when the listener asks for them. Worker
// thread only.
Task<void> serve_client(Worker& worker, Socket socket, std::size_t listener_index,
                        boost::asio::ip::tcp::endpoint peer);
// A parked connection's next request is arriving on `socket`: serve it as above, from there on.
void resume_parked(Worker& worker, std::unique_ptr<ParkedClient> parked, Socket socket);

}  // namespace bg
