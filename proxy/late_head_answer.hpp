#pragma once
// What a client whose request head has not all come within timeouts.client_header is told on a
// plain socket: 408 Request Timeout with a close (as HAProxy's `timeout http-request` answers),
// sent once, non-blocking, just before the deadline closes the socket (a few syscalls more per
// expiry, nothing waited for). A client that sent none of a head (an idle keep-alive
// connection, a pre-connect) is closed silently, and a TLS one too: its record layer belongs to
// the session, which the expiry does not wait for.

namespace bg {

// Sends the 408 on `fd` if the socket takes it at once, after reading (and dropping) what the
// client sent since its last read, so that the close that follows is a FIN, not a reset that
// could discard the answer before the client reads it. A HEAD's ends with its head (RFC 9110
// 9.3.2). Whether all of it went.
bool answer_late_head(int fd, bool head_request);

}  // namespace bg
