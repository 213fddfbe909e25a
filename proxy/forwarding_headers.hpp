#pragma once
// The header rules of a hop: what a proxy removes (hop-by-hop fields, RFC 9110 7.6.1) and what
// it adds (X-Forwarded-*), for requests going up and responses coming back.

#include <string_view>

#include "config.hpp"
#include "proxied_message.hpp"

namespace bg {

struct ForwardedFor {
    std::string_view client_ip;  // the immediate peer (or the one a PROXY header named)
    bool tls = false;
    bool upgrade = false;  // keep Upgrade and send "Connection: upgrade"
    bool trusted = false;  // the peer is a trusted proxy: its forwarding fields are kept
    UnderscoreFields underscores = UnderscoreFields::allow;
};

// Removes Connection and the fields it names (never Content-Length or Host, which frame and
// route the message), Keep-Alive, Proxy-Connection, TE, Trailer,
// Transfer-Encoding (the caller re-frames the body) and Upgrade unless upgrading; appends the
// client to X-Forwarded-For and sets X-Forwarded-Proto and X-Forwarded-Host. Fields named
// with an underscore go as `hop.underscores` says; false when it says to reject the request.
bool rewrite_request_fields(Fields& fields, const ForwardedFor& hop);

// The same removals for a response on its way to the client (Upgrade kept on a 101).
void strip_response_hop_fields(Fields& fields, bool upgrade);

}  // namespace bg
