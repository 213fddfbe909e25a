#pragma once
// Counters one worker keeps about its traffic. Written only by the worker's thread (relaxed
// atomics so the metrics endpoint may read them from another thread without a lock).

#include <array>
#include <atomic>
#include <cstdint>

namespace bg {

// Which bound of [limits] a peer's message went over (each is counted, and named in the
// access log line of the refused request).
enum class LimitBreach : std::uint8_t {
    request_line,
    request_header,
    header_fields,
    field_size,
    chunk_line,
    trailer,
    request_body,
    body_rate,
    response_header,
    response_fields,
    response_chunk_line,
    response_trailer,
};
inline constexpr std::size_t limit_breach_kinds = 12;
const char* to_string(LimitBreach breach);

struct WorkerStats {
    using Counter = std::atomic<std::uint64_t>;
    Counter connections_accepted{0};
    Counter connections_open{0};
    Counter connections_parked{0};  // idle keep-alive, between requests (parked_client.hpp)
    Counter parks{0};               // times a connection was parked
    Counter requests{0};
    Counter bad_requests{0};  // requests the proxy refused (400, 405, 413, 414, 417, 431, 501, 505)
    Counter client_header_timeouts{0};
    Counter upstream_connect_failures{0};
    Counter upstream_tls_failures{0};  // TLS handshakes with backends that failed (and why: logged)
    Counter upstream_timeouts{0};
    Counter upstream_broken_responses{0};  // reset or cut before/while reading a response
    Counter upstream_idle_closed{0};       // pooled connections the backend closed or wrote on
    Counter retries{0};
    Counter retry_budget_exhausted{0};
    Counter upgrades{0};
    Counter spliced_bytes{0};  // body bytes moved socket to socket in the kernel
    Counter heap_trims{0};     // memory freed past the spare pools given back (HeapTrim)
    Counter upgraded_open{0};
    Counter connections_refused{0};   // past max_connections
    Counter idle_evicted{0};          // idle keep-alive connections closed to make room past it
    Counter opening_evicted{0};       // still in a handshake, PROXY header or head, likewise
    Counter slow_uploads_evicted{0};  // reading a body below min_request_body_rate, likewise
    Counter tries_cut{0};  // tries waiting on a backend taken out of the routing, retried
    Counter tls_handshake_failures{0};  // failed or timed out
    Counter proxy_headers_refused{0};   // missing, malformed or from an untrusted peer
    Counter client_aborts{0};           // clients gone with their request in flight (499)
    Counter client_body_timeouts{0};    // request bodies that stalled or came too slowly
    Counter accept_failures{0};         // accept() out of descriptors or memory: listener paused
    Counter out_of_descriptors{0};      // backend connects the proxy could not open (503)
    std::array<Counter, limit_breach_kinds> limit_breaches{};

    static void add(Counter& counter, std::uint64_t n = 1) {
        counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    void breach(LimitBreach which) { add(limit_breaches[static_cast<std::size_t>(which)]); }
    static void sub(Counter& counter, std::uint64_t n = 1) {
        counter.store(counter.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
    }
};

}  // namespace bg
