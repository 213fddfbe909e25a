#pragma once
// UpstreamConnector: gets a request a connection to a backend of a colour, and keeps it after
// a clean exchange. In order: this client connection's private connection (a backend that
// takes a PROXY header naming the client), an idle one from the worker's pool, else a new one
// (TCP, the PROXY header, TLS resuming the worker's last session with that backend), all
// within upstream_connect. A backend that refuses is marked and another tried, up to
// connect_attempts, in the other colour when this one has none left and retries may cross.
// One per client connection; worker thread only.

#include <cstdint>
#include <optional>

#include "exchange_outcome.hpp"
#include "io_types.hpp"
#include "proxy_header_reader.hpp"
#include "routing_table.hpp"
#include "upstream_lease.hpp"

namespace bg {

class ConnectionDeadline;
class Worker;
struct Config;
struct ExchangeState;
struct SessionHandle;

class UpstreamConnector {
  public:
    UpstreamConnector(Worker& worker, const Config& config, ConnectionDeadline& deadline,
                      SessionHandle& handle);

    // Who the client is, as a PROXY header to a backend tells it.
    void set_client(const ClientEndpoints& client) { client_ = client; }

    // A connection to a backend of `colour` not yet in ex.tried (which it joins), held in
    // `lease`. `verify`: a pooled connection is checked to be open first (for a request
    // that cannot be sent twice). A failed connect's reason is kept in ex.connect_error.
    Task<Connected> connect(const RoutingTable& table, Colour colour, bool verify,
                            ExchangeState& ex, UpstreamLease& lease);
    // A new connection to the leased backend, in place of one found closed.
    Task<Connected> reconnect(ExchangeState& ex, UpstreamLease& lease);
    // After a clean, fully framed exchange: the connection goes back to the worker's pool, or
    // to this client connection's private slot when it opened with a PROXY header.
    void keep(UpstreamLease& lease);
    // A connection to a backend is kept for this client between requests.
    bool holds_private() const { return private_.has_value(); }

  private:
    const Backend* private_backend(const RoutingTable& table, Colour colour) const;
    std::optional<UpstreamStream> idle_connection(const Backend& backend, bool verify);
    // One backend tried: a pooled connection to it held in `lease`, if there is one; else a new
    // one, whose refusal is the backend's outcome.
    bool reuse_idle(const Backend& backend, bool verify, ExchangeState& ex, UpstreamLease& lease);
    Task<Connected> open_recorded(const Backend& backend, ExchangeState& ex, UpstreamLease& lease);
    Task<Connected> open(const Backend& backend, ExchangeState& ex, UpstreamLease& lease);
    Task<bool> handshake(const Backend& backend, UpstreamStream& stream, ExchangeState& ex);

    Worker& worker_;
    const Config& config_;
    ConnectionDeadline& deadline_;
    SessionHandle& handle_;
    ClientEndpoints client_;
    std::optional<PrivateUpstream> private_;  // kept between requests (send_proxy_protocol)
};

}  // namespace bg
