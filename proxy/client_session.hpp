#pragma once
// One client connection: reads requests, routes each to a backend, streams both messages.

#include "io_types.hpp"

namespace bg {

class Worker;

// Serves the connection until it closes. Worker thread only.
Task<void> serve_client(Worker& worker, Socket socket);

}  // namespace bg
