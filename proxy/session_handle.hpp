#pragma once
// What a worker knows of one client connection: its sockets, so a graceful shutdown can close
// idle connections and the connection's deadline can close whichever side stalled.

#include <boost/intrusive/list_hook.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>

#include "body_rate_clock.hpp"
#include "io_types.hpp"

namespace bg {

struct OpeningTag;
// In the worker's list of connections still opening (a TLS handshake, a PROXY header or the
// rest of a head to come, a slow upload, an idle wait that cannot park): out of it by itself
// when the handle goes.
using OpeningHook =
    boost::intrusive::list_base_hook<boost::intrusive::tag<OpeningTag>,
                                     boost::intrusive::link_mode<boost::intrusive::auto_unlink>>;

// In its worker's list of connections (a link, no allocation per connection).
struct SessionHandle : boost::intrusive::list_base_hook<>, OpeningHook {
    Socket* client = nullptr;  // the lowest layer, under TLS if any
    std::size_t listener = 0;  // the index of the listener it came in on
    // Closed while opening to make room: its connection slot went to a new connection.
    bool slot_released = false;
    // Cut at the end of the shutdown grace (also marked client_gone: nothing more is tried).
    bool shutdown_cut = false;
    std::chrono::steady_clock::time_point opening_since{};  // while in the worker's opening list
    // While in it for a request body being read: the count of its bytes so far, that count
    // when the body began, and the body's rate clock (the slow-upload eviction judges the rate
    // over the time it counts, not the waits for a slow backend).
    const std::uint64_t* upload_bytes = nullptr;
    std::uint64_t upload_base = 0;
    const BodyRateClock* upload_clock = nullptr;
    Socket* upstream = nullptr;          // while a request holds a backend connection
    std::uint32_t upstream_backend = 0;  // the backend id of `upstream`
    // An idle backend connection kept for this client only (it opened with a PROXY header),
    // counted with the pool's idle ones.
    bool kept = false;
    std::uint32_t kept_backend = 0;
    bool idle = false;  // waiting for the next request on a keep-alive connection
    // While a request waits for `upstream_backend`'s response head: since when (else the
    // epoch). The worker reports each backend's oldest wait, so a stalled one is ejected.
    std::chrono::steady_clock::time_point awaiting_since{};
    // And the request may go to another backend if this try fails (idempotent, no body byte
    // consumed, nothing relayed yet): the worker may cut it when its backend is taken out.
    bool awaiting_retryable = false;
    bool try_cut = false;  // the worker cut that try: its retry goes elsewhere
    // The try waiting is the request's next after one the worker cut: a request that waits on
    // its second backend too may be slow itself, and its waits are no evidence of its
    // backend's stall (an outside probe: one 6 s report on a quiet proxy had blue-1 ejected,
    // then, waiting on blue-2, blue failed over to green as hung, and ran three times); they
    // count only toward a colour's stall, against a higher bar (OutlierDetector).
    bool awaiting_after_cut = false;
    // A request in flight while nothing reads the client: the worker's close sweep looks for
    // the client's FIN or reset (ClientCloseWatch), and marks it gone.
    bool watch_close = false;
    bool client_gone = false;
    // While the connection is a tunnel (after a 101): its backend's colour index, else -1.
    int tunnel_colour = -1;
};

}  // namespace bg
