#pragma once
// The proxy's configuration: what it is, how it is read from TOML, how quick-start flags override
// it.

#include <algorithm>
#include <array>
#include <chrono>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>
#include "network_set.hpp"
#include "role.hpp"
#include "try_outcome.hpp"

namespace bg {

using Duration = std::chrono::milliseconds;

// An address as written in the config ("127.0.0.1:8080", "[::1]:9000", "localhost:80"),
// resolved once at load time so no lookup ever happens on the data path.
struct HostPort {
    std::string text;  // as written, for messages and status
    std::string ip;    // numeric, resolved
    std::uint16_t port = 0;

    // ip and port as one number: a pooled connection is reused only by requests whose
    // backend still has the address it was made to (a reload may move a backend).
    std::uint64_t key() const;
};

struct BackendConfig {
    std::string name;
    HostPort address;
};

// Active health checks, per pool ([health] gives the defaults, [pools.X.health] overrides).
struct HealthCheckConfig {
    bool enabled = true;
    bool tcp_only = false;  // a plain TCP connect instead of an HTTP request
    std::string method = "GET";
    std::string path = "/healthz";
    std::string host;  // Host header; empty: the backend's address
    std::vector<unsigned> expect{200};
    Duration interval{std::chrono::seconds(2)};
    Duration fast_interval{std::chrono::milliseconds(500)};  // while a backend changes state
    Duration timeout{std::chrono::seconds(1)};
    Duration jitter{std::chrono::milliseconds(100)};  // up to this much added to each interval
    unsigned rise = 2;
    unsigned fall = 3;
};

struct CertificateFiles {
    std::string cert;  // PEM: the certificate, then its chain
    std::string key;   // PEM private key
    bool operator==(const CertificateFiles&) const = default;
};

// TLS 1.2 ciphers, Mozilla's "intermediate" list, AES-128 first.
inline constexpr const char* intermediate_tls12_ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
// TLS 1.3 suites, in Mozilla's order: AES-128 first (its SHA-256 key schedule and transcript
// cost less per handshake than AES-256's SHA-384, its 10 rounds less per record than 14; both
// are strong).
inline constexpr const char* intermediate_tls13_suites =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

// TLS from the proxy to one pool's backends ([pools.X.tls]).
struct BackendTlsSettings {
    bool verify = true;   // false: any certificate is accepted (a test bench, never production)
    std::string ca_file;  // PEM CAs the backends' certificates must chain to; empty: the system's
    std::string
        server_name;  // SNI and the name the certificate must carry; empty: each backend's host
    std::optional<CertificateFiles> client_certificate;  // for backends that ask for one (mTLS)
    std::string min_version = "1.2";                     // "1.2" or "1.3"
    // Offered in this order: a backend that takes the client's order (OpenSSL's and nginx's
    // default) picks the first it shares. TLS 1.2: empty is OpenSSL's default list
    // (older backends' ciphers included). TLS 1.3: the same three suites OpenSSL offers, AES-128
    // first (OpenSSL's order puts AES-256 first).
    std::string ciphers;
    std::string ciphersuites = intermediate_tls13_suites;
    bool operator==(const BackendTlsSettings&) const = default;
};

class BackendTlsContext;

struct PoolConfig {
    std::vector<BackendConfig> backends;
    HealthCheckConfig health;
    std::optional<BackendTlsSettings> tls;
    // Built from `tls` when the config is loaded (the files are read then).
    std::shared_ptr<const BackendTlsContext> tls_context;
    // Each new backend connection opens with a PROXY v2 header naming the client; such a
    // connection then serves that client connection only (it is never pooled for others).
    bool send_proxy_protocol = false;
};

// Passive failure detection from live traffic (Envoy's outlier detection).
struct OutlierConfig {
    unsigned consecutive_failures = 5;  // 0: off
    double error_rate = 0.5;            // over `window`, with at least min_requests; 0: off
    Duration window{std::chrono::seconds(10)};
    unsigned min_requests = 20;
    bool count_5xx = true;  // 5xx responses count as failures (else only connect/reset/timeout)
    Duration base_ejection{std::chrono::seconds(10)};  // times the number of ejections so far
    Duration max_ejection{std::chrono::minutes(5)};
    double panic_threshold = 0.5;  // never eject below this fraction of a pool; route to all
    // A backend is ejected as holding requests without answering (its health checks may still
    // pass) when two of its requests have waited this long for a response head, or one has
    // waited stalled_alone_after, and it answered none begun after its oldest, while a peer of
    // its colour answered one begun since. 0: off.
    Duration stalled_after{std::chrono::seconds(1)};
    // One slow request alone is an endpoint's slowness as often as a hang.
    Duration stalled_alone_after{std::chrono::seconds(5)};
    // And a stalled request has waited longer than any answer (of either colour) within this
    // time took (rounded up to a power-of-two bucket from 64 ms, at most stalled_alone_after):
    // a service that answers in 3 s at times is not hung at 1 s; and for the first
    // stalled_alone_after of answers, that long. 0: off (stalled_after and the peers' waits
    // alone).
    Duration slow_answer_memory{std::chrono::minutes(10)};
    // The candidate taking traffic fails when none of its backends has answered for this long
    // while one of its requests has waited that long: a release that hangs everywhere has no
    // answering peer for stalled_after to compare with, and its requests count in no error
    // rate until they time out. 0: off.
    Duration colour_stalled_after{std::chrono::seconds(5)};
};

// Canary analysis (control/canary_analysis.hpp): while a colour is a candidate, it is judged
// against the stable colour over the same sliding windows, and reverted when it is
// significantly worse.
struct CanaryConfig {
    bool enabled = true;
    Duration interval{std::chrono::milliseconds(250)};  // how often the counters are sampled
    // Each window is judged on its own; any one failing fails the candidate. Short ones catch a
    // burst fast, long ones a small but steady difference at low traffic.
    std::vector<Duration> windows{std::chrono::seconds(1), std::chrono::seconds(10),
                                  std::chrono::seconds(60)};
    // Which failed tries count as errors: 5xx, reset, timeout, connect.
    FailureKinds errors{true, true, true, true};
    unsigned min_requests = 50;  // the candidate's tries in a window before errors are judged
    double error_margin = 0.02;  // candidate error rate at least stable's + this...
    double error_ratio = 2.0;    // ...and at least this times stable's...
    double confidence = 4.0;     // ...and the difference significant: z of a two-proportion test
    double latency_quantile = 0.99;
    double latency_ratio = 3.0;  // candidate's quantile at least this times stable's...
    Duration latency_margin{std::chrono::milliseconds(25)};  // ...and this much slower
    unsigned latency_min_requests = 1000;  // each colour's requests in a window, for latency
    // With no stable traffic to compare (after a flip), the stable colour's last figures from
    // a window with enough requests stand in, for this long.
    Duration baseline_memory{std::chrono::minutes(10)};
    // With no figures of stable in a window, live or remembered (a restart, a flip before
    // stable had a window's worth), the candidate's errors are judged as if stable had this
    // error rate (or its last known one, if higher). 1: not judged then.
    double assumed_error_rate = 0.01;
};

struct RetryConfig {
    unsigned attempts = 2;    // retries per request (after the first try)
    double budget = 0.2;      // retries after timeouts: at most this fraction of active requests...
    unsigned min_budget = 3;  // ...but always at least this many
    bool cross_colour = true;  // a retry may go to the other colour when this one cannot serve
};

// Staging in production: testers reach a colour by a request header, from allowed networks.
struct PreviewConfig {
    std::string header = "X-BG-Color";  // empty: off
    NetworkSet allowed;                 // empty: the header is ignored from everywhere
};

// Keeps a client on the colour it was first given while a split is in progress.
struct StickyConfig {
    std::string cookie;  // empty: off
    Duration max_age{std::chrono::hours(1)};
};

// A pre-promotion smoke check, run against every backend of a colour before it gains traffic.
struct SmokeCheck {
    std::string name;
    std::string method = "GET";
    std::string path = "/";
    std::vector<std::pair<std::string, std::string>> headers;
    std::vector<unsigned> expect{200};
    std::string body_contains;  // empty: not checked
    Duration timeout{std::chrono::seconds(2)};
    bool operator==(const SmokeCheck&) const = default;
};

enum class StableFailurePolicy { failover, hold };

struct RolloutConfig {
    // A colour is failed when its healthy backends fall below this: a count (>= 1) or, when
    // below 1, a fraction of the pool.
    double min_healthy = 1;
    StableFailurePolicy stable_failure = StableFailurePolicy::failover;
    // After a failover, once the stable colour has been healthy for failback_hold, traffic
    // returns to the weights it had ("auto"), or waits for an operator ("manual").
    bool failback_auto = true;
    Duration failback_hold{std::chrono::seconds(30)};
    // When a switch takes a colour's whole share away, its tunnels (WebSockets) are closed
    // after this, so their clients reconnect onto the colour now serving: tunnel_drain after
    // a planned change, tunnel_drain_revert after a rollback, revert or failover.
    Duration tunnel_drain{std::chrono::seconds(30)};
    Duration tunnel_drain_revert{std::chrono::seconds(1)};
};

enum class BalancePolicy { round_robin, least_request };

// TLS on a listener. The first certificate is the default; the others are chosen by SNI
// against the DNS names in their subjectAltName (or CN).
struct TlsSettings {
    std::vector<CertificateFiles> certificates;
    std::string min_version = "1.2";  // "1.2" or "1.3"; older versions are never offered
    std::string ciphers = intermediate_tls12_ciphers;
    std::string ciphersuites = intermediate_tls13_suites;
    // The listener's order decides (HAProxy's default), except that a client that puts
    // ChaCha20 first (one without AES instructions) gets it; false: the client's order.
    bool prefer_server_ciphers = true;
    // Resumption. Tickets (TLS 1.2 and 1.3) carry the session to the client, sealed with this
    // listener's keys (new ones at every reload); the cache keeps sessions here, looked up by
    // id (TLS 1.2, and TLS 1.3 when tickets are off). Both off: every handshake is full.
    bool session_tickets = true;
    // Sessions this listener keeps (OpenSSL keeps them in the context a connection starts
    // with, whichever certificate SNI then picks); 0: no cache.
    std::size_t session_cache = 20480;
    Duration session_lifetime{std::chrono::minutes(5)};
};

class TlsServerContext;

struct ListenerConfig {
    HostPort address;
    std::optional<TlsSettings> tls;
    // Built from `tls` when the config is loaded (and so again on every reload): the files are
    // read then, and a connection keeps the context it started with.
    std::shared_ptr<const TlsServerContext> tls_context;
    bool proxy_protocol = false;        // each connection opens with a PROXY v1/v2 header
    NetworkSet proxy_protocol_from;     // peers allowed to send one (required with proxy_protocol)
    std::uint32_t max_connections = 0;  // 0: only [limits] max_connections applies
    // The request's ACK rides on the response instead of going alone (HAProxy's
    // tcp-smart-accept): the listener is set TCP_QUICKACK off, which accepted sockets inherit.
    bool smart_accept = true;
    // A new connection is taken only once its first bytes have come (TCP_DEFER_ACCEPT,
    // HAProxy's defer-accept, nginx's deferred), or after the kernel's first SYN-ACK
    // retransmission (about 1 s) for one that stays silent: an HTTP client speaks first.
    bool defer_accept = true;
    // SO_SNDBUF of accepted connections in bytes (HAProxy's tune.sndbuf.client, nginx's
    // sndbuf); 0: the kernel's autotuning.
    std::uint32_t send_buffer = 0;
};

struct Timeouts {
    Duration client_header{std::chrono::seconds(10)};
    Duration client_keepalive{std::chrono::seconds(60)};
    // A busy plain connection (its requests come within this of each other) keeps its session
    // this long when idle before it is parked; others are parked at once (0: all at once).
    Duration client_park_after{std::chrono::milliseconds(250)};
    Duration client_body{std::chrono::seconds(60)};
    Duration client_write{std::chrono::seconds(60)};
    Duration upstream_connect{std::chrono::seconds(2)};
    Duration upstream_response{std::chrono::seconds(30)};
    // One try's share of upstream_response (Envoy's per_try_timeout): a try that gets no
    // response head in time is abandoned and, when the request may be retried, retried on
    // another backend within what is left of upstream_response. 0: a try may use all of it.
    Duration upstream_try{std::chrono::seconds(10)};
    Duration tunnel_idle{std::chrono::hours(1)};
    // Once either side of a tunnel has ended its half (a FIN), the other's idle limit (as
    // HAProxy's timeout client-fin and server-fin).
    Duration tunnel_half_closed{std::chrono::seconds(30)};
    Duration client_linger{std::chrono::seconds(2)};
    Duration shutdown_grace{std::chrono::seconds(30)};
    Duration shutdown_ready_delay{std::chrono::seconds(2)};
    Duration tls_handshake{std::chrono::seconds(10)};
    // accept() failing for want of descriptors or memory pauses that listener this long.
    Duration accept_pause{std::chrono::milliseconds(100)};
    // How often a worker looks for clients gone with their request in flight.
    Duration client_close_check{std::chrono::milliseconds(100)};
};

// What becomes of a request field whose name has an underscore (Envoy's
// headers_with_underscores_action): CGI-style backends read X_Forwarded_For as
// X-Forwarded-For, past the proxy's rewrite of it.
enum class UnderscoreFields { allow, drop, reject };

struct Limits {
    std::size_t max_request_line = 8192;
    UnderscoreFields headers_with_underscores = UnderscoreFields::drop;  // as nginx
    std::size_t max_request_header = 32768;
    std::uint64_t max_request_body = 0;       // 0: no limit
    std::size_t max_response_header = 65535;  // Beast stores a field in at most 64 KiB
    std::size_t max_header_fields = 100;      // in a request or response head
    std::size_t max_field_size = 16384;       // one field line, name and value
    std::size_t max_chunk_line = 4096;        // a chunk-size line with its extensions
    std::size_t max_trailer = 16384;          // a chunked body's trailer section
    std::size_t max_interim_responses = 16;   // 1xx relayed per request; the rest dropped
    // A request body must arrive at this average rate (bytes/s) once client_body has passed
    // since its start (Apache's mod_reqtimeout MinRate). 0: no minimum.
    std::uint64_t min_request_body_rate = 1024;
    std::size_t buffer_size = 16384;
    // A body whose reads find more at hand than they ask for is read in larger pieces, up to
    // this (at or below buffer_size: never larger).
    std::size_t bulk_buffer_size = 65536;
    std::size_t bulk_readers = 256;  // per worker, bodies read so at once
    // The size of one read, and of one body piece (buffer_size, at least 4 KiB).
    std::size_t read_chunk() const { return std::max<std::size_t>(4096, buffer_size); }
    // What a body's reads grow to while it flows in bulk.
    std::size_t bulk_read_chunk() const { return std::max(read_chunk(), bulk_buffer_size); }
    // Bytes of a body read in a row (each read counting as a full buffer_size at least), while
    // neither side makes the relay wait, before the worker's other connections get a turn (each
    // turn is a pass of its event loop).
    std::size_t body_burst = 262144;
    // The most of a worker's time, in percent, TLS handshakes' key exchanges take while
    // requests on open connections wait (HeavyQueue). 100: one handshake per loop pass.
    unsigned handshake_share = 100;
    // What is left of a body of known length, at least this large, between two plain sockets
    // is spliced (moved in the kernel, never copied through the proxy). 0: never.
    std::uint64_t splice_min_body = 65536;
    std::size_t splice_pipes = 256;  // per worker, in use at once; past it bodies are copied
    // Bytes a pipe holds (F_SETPIPE_SZ), while the process's PipePageBudget allows; 1 MiB is
    // the most an unprivileged process may ask (/proc/sys/fs/pipe-max-size).
    std::size_t splice_pipe_size = 1048576;
    // Per worker, the buffers of this many finished requests are kept warm for the next ones
    // (each about 2 x buffer_size); past it they are freed.
    std::size_t spare_exchanges = 64;
    // Once this many bytes were freed past the spare pools (a burst's buffers), the worker gives
    // the free memory back to the system heap_trim_delay later (malloc keeps it otherwise).
    // 0: never.
    std::size_t heap_trim_after = 1 << 20;
    std::chrono::milliseconds heap_trim_delay{1000};
    std::uint32_t max_connections = 16384;  // client connections over all listeners
    // At a connection limit, a connection still in its TLS handshake or PROXY header makes room
    // only once it has been opening this long: a client a few milliseconds into its handshake
    // is not closed for a newer one.
    std::chrono::milliseconds evict_opening_after{1000};
    std::uint32_t max_requests_per_connection = 0;  // 0: no limit
};

struct UpstreamSettings {
    // Least-request by default: a backend that stalls piles up requests in flight and stops
    // being picked at once (Envoy's default; Linkerd's EWMA and HAProxy's leastconn likewise).
    BalancePolicy balance = BalancePolicy::least_request;
    std::size_t max_idle_per_backend = 64;
    Duration idle_timeout{std::chrono::seconds(4)};
    // A pooled connection idle longer than this is checked to be open, and to hold no stray
    // bytes, before reuse. 0 (the default): at every reuse.
    Duration recheck_after{0};
    // An idle pooled connection is watched for reading from this long after it was parked.
    Duration watch_after{std::chrono::milliseconds(20)};
    unsigned connect_attempts = 3;
};

// Who may do what on the control socket, by the peer's uid and groups (SO_PEERCRED).
struct RoleMembers {
    std::vector<std::uint32_t> uids;
    std::vector<std::string> groups;
    bool operator==(const RoleMembers&) const = default;
};

const char* to_string(Role role);

struct ControlConfig {
    std::string socket = "/run/bgproxy/control.sock";
    std::uint32_t socket_mode = 0660;
    std::string socket_group;  // empty: the process's group
    std::string state_file = "/var/lib/bgproxy/state.json";
    std::string audit_log = "/var/log/bgproxy/audit.log";
    std::size_t max_line = 65536;
    std::size_t max_connections = 64;  // control connections at once (see ConnectionSlots)
    std::size_t max_watchers = 16;     // of which `watch` streams; below max_connections
    Duration idle_timeout{std::chrono::seconds(60)};  // no command line for this long: closed
    std::uint64_t audit_log_max_size = 10 << 20;      // then rotated: audit.log.1, .2, ...
    unsigned audit_log_keep = 5;                      // rotated files kept
    std::size_t audit_command_max = 1024;             // longer command text is recorded truncated
    // An audit record not written by then (a stalled disk) is answered "not written yet".
    Duration audit_log_wait{std::chrono::milliseconds(100)};
    // Refusals at the door (unparsable, or beyond the caller's role) of callers below the
    // operate role, audited per second at most; the rest are counted in the log.
    std::uint32_t audit_refusals_per_second = 20;
    // How long the control plane waits on a file (a state save, a reload's read, the writers
    // at exit) before it gives up on it: a stalled disk or mount must not hold it.
    Duration disk_timeout{std::chrono::seconds(5)};
    RoleMembers admin;  // the uid bgproxy runs as is always admin
    RoleMembers operate;
    RoleMembers read;
    Role default_role = Role::read;  // for a peer named in no list
    bool operator==(const ControlConfig&) const = default;
};

// Fleet mode (control/fleet_store.hpp): instances sharing one routing state in etcd. Off while
// `name` is empty.
struct FleetConfig {
    std::vector<HostPort> endpoints;  // etcd client URLs' host:port, tried in turn
    bool etcd_tls = false;            // https:// endpoints
    std::string name;                 // the fleet: instances with the same name share a state
    std::string instance;             // this instance's name; empty: host name and listen address
    std::string prefix = "/bgproxy/fleets";              // etcd keys live under PREFIX/NAME/
    Duration request_timeout{std::chrono::seconds(2)};   // one etcd request, connect included
    Duration lease_ttl{std::chrono::seconds(5)};         // a dead instance leaves after this
    Duration apply_timeout{std::chrono::seconds(10)};    // a change's fleet ack waits this long
    Duration retry_min{std::chrono::milliseconds(100)};  // reconnect backoff, doubling to max
    Duration retry_max{std::chrono::seconds(2)};
    std::optional<BackendTlsSettings> tls;  // [fleet.tls]: CA, client certificate for etcd
    std::shared_ptr<const BackendTlsContext> tls_context;
    bool enabled() const { return !name.empty(); }
};

struct AccessLogConfig {
    std::string target = "off";  // "off", "stdout" or a file path
    std::size_t queue = 8192;    // lines waiting per worker before new ones are dropped
    bool operator==(const AccessLogConfig&) const = default;
};

struct Config {
    std::string source;    // the file it came from, "" for flags only
    unsigned workers = 0;  // 0: one per CPU in the affinity mask
    std::vector<ListenerConfig> listeners;
    Timeouts timeouts;
    Limits limits;
    UpstreamSettings upstream;
    // Weights in basis points (0..10000), blue + green == 10000.
    std::uint32_t blue_weight_bp = 10000;
    std::uint32_t green_weight_bp = 0;
    PoolConfig blue;
    PoolConfig green;
    OutlierConfig outlier;
    CanaryConfig canary;
    RetryConfig retries;
    RolloutConfig rollout;
    PreviewConfig preview;
    StickyConfig sticky;
    std::vector<SmokeCheck> gate;
    AccessLogConfig access_log;
    std::string served_by_header;  // empty: off; else "NAME: colour/backend" on responses
    // The name this hop adds to Via on each request (RFC 9110 7.6.3); empty: none. A token of at
    // most max_via_name characters.
    std::string via = "bgproxy";
    static constexpr std::size_t max_via_name = 64;
    // Protocols a client may switch to through the proxy (Upgrade); others are stripped.
    std::vector<std::string> upgrade_protocols{"websocket"};
    bool metrics = true;  // count per-request traffic metrics (false: for measuring their cost)
    // A client's FIN with its request in flight: taken as leaving (nginx, Envoy), or as a
    // half-close whose response is still sent (HAProxy without abortonclose).
    bool abort_on_client_fin = true;
    // Peers whose X-Forwarded-For / Forwarded / X-Forwarded-Proto are kept (and appended to);
    // from anyone else they are replaced.
    NetworkSet trusted_proxies;
    std::string admin_listen = "127.0.0.1:9901";  // empty: no admin listener
    std::size_t admin_max_connections = 64;       // past it the longest idle one is closed
    ControlConfig control;
    FleetConfig fleet;
};

// One problem found in a config, located like a compiler error.
struct ConfigError {
    std::string file;
    std::uint32_t line = 0;
    std::uint32_t column = 0;
    std::string message;
    std::string to_string() const;  // "FILE:LINE:COLUMN: message"
};

struct ConfigResult {
    std::optional<Config> config;  // set only when errors is empty
    std::vector<ConfigError> errors;
};

// Quick-start flags; each set field overrides the file's value.
struct ConfigOverrides {
    std::optional<std::string> listen;
    std::optional<std::string> blue;     // "ADDR[,ADDR...]"
    std::optional<std::string> green;    // "ADDR[,ADDR...]"
    std::optional<std::string> weights;  // "blue=90,green=10"
    std::optional<unsigned> workers;
    std::optional<std::string> admin;
    std::optional<std::string> control_socket;
    std::optional<std::string> state_file;
    std::optional<std::string> audit_log;
    std::optional<bool> metrics;
    std::optional<std::string> etcd;   // "URL[,URL...]": the fleet's etcd endpoints
    std::optional<std::string> fleet;  // the fleet's name
};

// Reads a file, applies the flags over it, then validates the whole: a file may leave out what
// the flags give (a listener, a pool).
ConfigResult load_config_file(const std::string& path, const ConfigOverrides& flags = {});
ConfigResult parse_config(std::string_view toml_text, const std::string& source_name);
// Applies flags on top of base (which may be a default Config) and validates the result.
ConfigResult apply_overrides(Config base, const ConfigOverrides& flags);
// The same on a parse's result: its errors pass through unchanged.
ConfigResult apply_overrides_to(ConfigResult parsed, const ConfigOverrides& flags);

// Parsing helpers, exposed for the control plane and tests.
std::optional<Duration> parse_duration(std::string_view text);         // "250ms", "10s", "2m", "1h"
std::optional<std::uint32_t> percent_to_basis_points(double percent);  // two decimals at most
std::optional<HostPort> resolve_host_port(std::string_view text, std::string& error);

unsigned default_worker_count();  // CPUs in this process's affinity mask

}  // namespace bg
