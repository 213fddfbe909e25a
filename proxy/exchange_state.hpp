#pragma once
// ExchangeState: the memory one request in flight needs (read buffers, parsers, tunnel buffers,
// the serialized head, the access record), taken from its worker's pool when a request starts
// arriving and given back when the connection goes idle. An idle keep-alive connection then
// holds none of it (HAProxy and nginx likewise take buffers only while bytes are in flight),
// and a busy worker reuses warm buffers instead of allocating them per request.

#include <array>
#include <boost/beast/core/flat_buffer.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "access_record.hpp"
#include "body_rate_clock.hpp"
#include "chunk_framing.hpp"
#include "proxied_message.hpp"

namespace bg {

// What a message on its way out keeps between its pieces (body_relay.hpp): its serialized head,
// until it leaves with the first piece of body; small pieces held for one write; a TLS write's
// pieces copied together; and its body's minimum-rate clock. A request's and its response's go
// at the same time (a backend may answer before the request body has all gone), each with its
// own.
struct OutgoingMessage {
    std::string head;
    std::string gathered;   // TLS only: pieces of one write copied together
    std::string coalesced;  // small body pieces held for one write
    BodyRateClock body_clock;

    void clear() {
        head.clear();
        gathered.clear();
        coalesced.clear();
    }
    void release() {
        std::string().swap(head);
        std::string().swap(gathered);
        std::string().swap(coalesced);
    }
    std::size_t capacity() const {
        return head.capacity() + gathered.capacity() + coalesced.capacity();
    }
};

struct ExchangeState {
    boost::beast::flat_buffer buffer;           // bytes read from the client, not yet parsed
    boost::beast::flat_buffer upstream_buffer;  // bytes read from the backend, not yet parsed
    std::vector<char> request_body;   // a tunnel's client-to-backend bytes; a lingering close's
    std::vector<char> response_body;  // a tunnel's backend-to-client bytes
    OutgoingMessage to_client;        // the response (or the proxy's own answer)
    OutgoingMessage to_backend;       // the request
    // Each parser's fields live in an arena of its own (declared first: it outlives them).
    // See new_request() and new_response().
    FieldArena request_fields;
    FieldArena response_fields;
    std::optional<RequestParser> parser;
    std::optional<ResponseParser> response_parser;
    std::vector<std::uint32_t> tried;  // backends tried for this request
    AccessRecord record;               // the access log line of the request in progress
    std::string connect_error;         // why connecting to a backend failed, when worth logging
    std::string body_error;            // why a body or response head was refused, for reply and log
    ChunkHeaderGuard request_chunks;   // called by `parser` (which holds a reference)
    ChunkHeaderGuard response_chunks;  // called by `response_parser`

    // What one request leaves behind (tried backends, the record, errors): reset when it
    // ends, so a pipelined request on the same state starts clean.
    void end_request();
    // Ready for another connection's request: no bytes, no parsers; buffers keep capacity.
    void clear();
    // About the memory it holds (buffers, strings, the arenas' blocks), for HeapTrim.
    std::size_t footprint() const;
    // A parser for the next request on the connection (the last exchange's fields go).
    RequestParser& new_request();
    // After a 101 the connection is a tunnel, for as long as tunnel_idle (an hour) while
    // idle: it keeps no parser, field arena, head or read buffer (about 9 KiB).
    void drop_messages();
    // A parser for a response, interim or final, from this try or another: the last
    // response's fields go (a backend sending 1xx heads without end holds one at a time).
    ResponseParser& new_response();
};

}  // namespace bg
