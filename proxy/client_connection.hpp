#pragma once
// ClientConnection: what one client connection's loop (client_session.cpp) and the request
// exchanges on it (request_exchange.hpp) share: the stream, who the client is, the single
// deadline, the body relay, the close watch, the backend connector, and whether the connection
// ends after this request. Owned by the session; each RequestExchange borrows it. Worker
// thread only.

#include <algorithm>
#include <boost/asio/ip/address.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/stream_traits.hpp>
#include <memory>
#include <string>

#include "body_relay.hpp"
#include "chunk_framing.hpp"
#include "client_close_watch.hpp"
#include "client_identity.hpp"
#include "config.hpp"
#include "connection_deadline.hpp"
#include "exchange_outcome.hpp"
#include "parked_client.hpp"
#include "proxy_header_reader.hpp"
#include "session_handle.hpp"
#include "tracked_session.hpp"
#include "upstream_connector.hpp"
#include "worker.hpp"

namespace bg {

template <class Stream>
struct ClientConnection {
    static constexpr bool tls = is_tls_stream<Stream>::value;

    ClientConnection(Worker& w, std::shared_ptr<const Config> c, std::size_t listener_index,
                     Stream s)
        : worker(w),
          config_holder(std::move(c)),
          config(*config_holder),
          listener(listener_index),
          stream(std::move(s)),
          tracked(std::make_unique<TrackedSession>(w, socket(), listener_index)),
          deadline(socket().get_executor(), handle()),
          relay(deadline, w.stats(), read_chunk(), bulk_read_settings(), config.limits.body_burst,
                splice_settings()),
          close_watch(w, handle()),
          upstreams(w, config, deadline, handle()) {}

    // A parked connection whose next request arrives on `s`.
    ClientConnection(Worker& w, ParkedClient&& parked, Stream&& s)
        : worker(w),
          config_holder(std::move(parked.config)),
          config(*config_holder),
          listener(parked.listener),
          stream(std::move(s)),
          tracked(std::move(parked.tracked)),
          client(std::move(parked.client)),
          deadline(socket().get_executor(), handle()),
          relay(deadline, w.stats(), read_chunk(), bulk_read_settings(), config.limits.body_burst,
                splice_settings()),
          close_watch(w, handle()),
          upstreams(w, config, deadline, handle()) {
        handle().client = &socket();
        upstreams.set_client(client.endpoints);
    }

    Socket& socket() { return boost::beast::get_lowest_layer(stream); }
    SessionHandle& handle() { return tracked->handle(); }

    // The size of one read, and of one body piece.
    std::size_t read_chunk() const { return config.limits.read_chunk(); }
    // How much to read into `buffer` next: the room its block still has, so the rest of a head
    // or body piece does not reallocate it; a full read when little room is left. Never past
    // its max_size: a pooled buffer grown under an earlier config (a reload lowered a limit)
    // keeps its capacity, and prepare() beyond max_size throws.
    std::size_t read_room(const boost::beast::flat_buffer& buffer) const {
        const std::size_t room = buffer.capacity() - buffer.size();
        return std::min(room >= 1024 ? room : read_chunk(), buffer.max_size() - buffer.size());
    }
    BulkReadSettings bulk_read_settings() const {
        return {&worker.bulk_reads(), config.limits.bulk_readers, config.limits.bulk_read_chunk()};
    }
    SpliceSettings splice_settings() const {
        return {&worker.splice_pipes(), config.limits.splice_min_body, config.limits.splice_pipes,
                config.limits.splice_pipe_size};
    }
    ChunkHeaderGuard chunk_guard() const {
        return {config.limits.max_chunk_line, config.limits.max_trailer};
    }

    Worker& worker;
    // The config this connection started with: a reload applies to new connections.
    std::shared_ptr<const Config> config_holder;
    const Config& config;
    std::size_t listener;  // index in config.listeners
    Stream stream;
    std::unique_ptr<TrackedSession> tracked;  // after stream: it points at the socket
    ClientIdentity client;
    ConnectionDeadline deadline;
    BodyRelay relay;               // moves bodies and tunnels under `deadline`
    ClientCloseWatch close_watch;  // while a request is in flight and the client is not read
    UpstreamConnector upstreams;
    bool linger = false;  // an error response was sent: drain before closing
    // A response went out cut short: closed with a reset, without TLS close_notify or FIN,
    // which would make a body ended by the close (HTTP/1.0) look complete.
    bool cut = false;
    bool last_request = false;  // max_requests_per_connection reached: close after this one
    // The wait for a connection's first request armed client_header: that clock, from the
    // connect, covers the whole head too (not restarted by its first byte).
    bool header_clock_running = false;
};

}  // namespace bg
