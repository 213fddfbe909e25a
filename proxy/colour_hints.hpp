#pragma once
// What a request itself says about its colour: a preview header (staging in production) or a
// sticky cookie. Each hint is honoured only when that colour can take the request.

#include <boost/asio/ip/address.hpp>
#include <optional>
#include <string>

#include "config.hpp"
#include "proxied_message.hpp"
#include "routing_table.hpp"

namespace bg {

// The colour named by the preview header, when the client is in an allowed network and the
// colour has a backend that can serve (whatever its weight: testers reach an idle colour).
// `trusted_hops`: the trusted proxies when the peer `client` is one of them. The client judged
// is then the nearest address in X-Forwarded-For that is not a trusted proxy, as nginx's
// real_ip_recursive and Envoy's xff_num_trusted_hops find it (a balancer inside the allowed
// network let every client through); none, and no preview, when an address cannot be read.
std::optional<Colour> preview_colour(const Fields& fields, const boost::asio::ip::address& client,
                                     const NetworkSet* trusted_hops, const PreviewConfig& preview,
                                     const RoutingTable& table);

// The colour in the sticky cookie, when it still takes traffic (not failed, weight above 0, a
// backend able to serve) and the cookie was given in the split going on now: one from an
// earlier split (before a rollback, a promote, a flip) pinned returning clients to the next
// candidate whatever its weight (an outside probe: half of them on a 10% canary). A cookie
// naming no split (an older proxy's) holds as before.
std::optional<Colour> sticky_colour(const Fields& fields, const StickyConfig& sticky,
                                    const RoutingTable& table);

// "NAME=green.7; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax": the colour and the split it
// was given in (RoutingTable::split_since).
std::string sticky_cookie(const StickyConfig& sticky, Colour colour, std::uint64_t split);

}  // namespace bg
