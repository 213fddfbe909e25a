#pragma once
// Whether a client has bytes waiting on its socket: a shutdown serves such a connection's
// request (answered with Connection: close) instead of closing it under the request, which
// the client would see as a reset with no answer.

namespace bg {

// One non-blocking MSG_PEEK of a byte; false on EOF, error or nothing yet.
bool input_waiting(int descriptor);

}  // namespace bg
