#include "metrics_exporter.hpp"

#include "fleet_store.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

namespace bg {

namespace {

std::uint64_t sum(const std::vector<const WorkerStats*>& workers,
                  const WorkerStats::Counter WorkerStats::*field) {
    std::uint64_t total = 0;
    for (const WorkerStats* w : workers) {
        total += (w->*field).load(std::memory_order_relaxed);
    }
    return total;
}

std::uint64_t at(const std::vector<std::uint64_t>& v, std::uint32_t id) {
    return id < v.size() ? v[id] : 0;
}

// Per-request traffic, from the workers' TrafficCounters gathered for this scrape. Only the
// backends of the current table are named: the label sets stay bounded by the config.
void render_traffic(prometheus::Registry& registry, const RoutingTable& table,
                    const DataPlaneLoad& load) {
    const TrafficCounters& traffic = load.traffic;
    auto& responses =
        prometheus::BuildCounter()
            .Name("bgproxy_http_responses_total")
            .Help(
                "Responses sent to clients by colour, backend, method class and status "
                "class; colour and backend \"none\" when the proxy answered without one")
            .Register(registry);
    static constexpr const char* classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
    auto add_slot = [&](std::uint32_t slot, const std::string& colour, const std::string& backend) {
        if (slot >= traffic.responses.size()) {
            return;
        }
        const auto& cells = traffic.responses[slot];
        for (std::size_t m = 0; m < method_class_count; ++m) {
            for (std::size_t k = 0; k < TrafficCounters::status_class_count; ++k) {
                const std::uint64_t n = cells[m * TrafficCounters::status_class_count + k];
                if (n == 0) {
                    continue;  // series appear with their first response
                }
                responses
                    .Add({{"colour", colour},
                          {"backend", backend},
                          {"method", to_string(static_cast<MethodClass>(m))},
                          {"code", classes[k]}})
                    .Increment(static_cast<double>(n));
            }
        }
    };
    add_slot(0, "none", "none");

    auto& request_duration =
        prometheus::BuildHistogram()
            .Name("bgproxy_request_duration_seconds")
            .Help(
                "Time from a request's head to the end of its response, by the "
                "colour that served it")
            .Register(registry);
    auto& upstream_duration =
        prometheus::BuildHistogram()
            .Name("bgproxy_upstream_duration_seconds")
            .Help(
                "The backend's share of a request: from sending it to the end of "
                "the response")
            .Register(registry);
    auto& request_bytes = prometheus::BuildCounter()
                              .Name("bgproxy_request_body_bytes_total")
                              .Help("Request body bytes sent to backends, by colour")
                              .Register(registry);
    auto& response_bytes = prometheus::BuildCounter()
                               .Name("bgproxy_response_body_bytes_total")
                               .Help("Response body bytes sent to clients, by colour")
                               .Register(registry);
    auto& connections_open = prometheus::BuildGauge()
                                 .Name("bgproxy_upstream_connections")
                                 .Help("Connections to a backend open now, idle or in use")
                                 .Register(registry);
    auto& connections_opened = prometheus::BuildCounter()
                                   .Name("bgproxy_upstream_connections_total")
                                   .Help("Connections opened to a backend")
                                   .Register(registry);
    const prometheus::Histogram::BucketBoundaries bounds(DurationHistogram::bounds.begin(),
                                                         DurationHistogram::bounds.end());
    auto observe = [&bounds](prometheus::Family<prometheus::Histogram>& family,
                             const std::string& colour, const DurationHistogram& h) {
        std::vector<double> increments(h.counts.begin(), h.counts.end());
        family.Add({{"colour", colour}}, bounds).ObserveMultiple(increments, h.sum);
    };
    for (Colour c : all_colours) {
        const std::string colour = to_string(c);
        const std::size_t i = index_of(c);
        observe(request_duration, colour, traffic.request_duration[i]);
        observe(upstream_duration, colour, traffic.upstream_duration[i]);
        request_bytes.Add({{"colour", colour}})
            .Increment(static_cast<double>(traffic.request_body_bytes[i]));
        response_bytes.Add({{"colour", colour}})
            .Increment(static_cast<double>(traffic.response_body_bytes[i]));
        for (const Backend& b : table.pool(c).backends) {
            add_slot(b.id + 1, colour, b.name);
            const std::map<std::string, std::string> labels{{"colour", colour},
                                                            {"backend", b.name}};
            connections_open.Add(labels).Set(
                b.id < load.upstream_open.size() ? load.upstream_open[b.id] : 0);
            connections_opened.Add(labels).Increment(
                static_cast<double>(at(traffic.upstream_connects, b.id)));
        }
    }
}

// The canary analysis's latest verdict and the figures it rests on.
// Tunnels (WebSockets...) per colour, and when those of a colour that lost its share close.
void render_tunnels(prometheus::Registry& registry, const Switchboard& board,
                    const DataPlaneLoad& load) {
    auto& open = prometheus::BuildGauge()
                     .Name("bgproxy_tunnels_open")
                     .Help("Upgraded connections (WebSocket...) open, by the colour they reach")
                     .Register(registry);
    auto& deadline =
        prometheus::BuildGauge()
            .Name("bgproxy_tunnel_drain_deadline_seconds")
            .Help(
                "Unix time when the tunnels of a colour that lost its share will be closed "
                "([rollout] tunnel_drain); 0 when none are due")
            .Register(registry);
    const RoutingTable& table = *board.table();
    for (Colour c : all_colours) {
        const std::map<std::string, std::string> colour{{"colour", to_string(c)}};
        double tunnels = 0;
        for (const Backend& b : table.pool(c).backends) {
            tunnels += b.id < load.upgraded.size() ? load.upgraded[b.id] : 0;
        }
        open.Add(colour).Set(tunnels);
        const auto due = board.tunnel_deadline(c);
        deadline.Add(colour).Set(
            due ? std::chrono::duration<double>(due->time_since_epoch()).count() : 0.0);
    }
}

void render_canary(prometheus::Registry& registry, const CanaryVerdict& verdict) {
    auto& state = prometheus::BuildGauge()
                      .Name("bgproxy_canary_verdict")
                      .Help("1 for the canary analysis's current verdict on the candidate colour")
                      .Register(registry);
    for (auto s : {CanaryVerdict::State::idle, CanaryVerdict::State::collecting,
                   CanaryVerdict::State::passing, CanaryVerdict::State::failing}) {
        state.Add({{"verdict", to_string(s)}}).Set(verdict.state == s ? 1 : 0);
    }
    auto& errors = prometheus::BuildGauge()
                       .Name("bgproxy_canary_error_ratio")
                       .Help(
                           "Error rate of the candidate and of the stable colour in the window "
                           "the verdict is about")
                       .Register(registry);
    auto& latency = prometheus::BuildGauge()
                        .Name("bgproxy_canary_latency_seconds")
                        .Help(
                            "Latency quantile ([canary] latency_quantile) of each side in the "
                            "window the verdict is about (0: too few requests to judge)")
                        .Register(registry);
    errors.Add({{"role", "candidate"}}).Set(verdict.candidate_error_rate);
    errors.Add({{"role", "stable"}}).Set(verdict.stable_error_rate);
    latency.Add({{"role", "candidate"}}).Set(verdict.candidate_latency);
    latency.Add({{"role", "stable"}}).Set(verdict.stable_latency);
    prometheus::BuildGauge()
        .Name("bgproxy_canary_error_z")
        .Help(
            "z statistic of the candidate's error rate over stable's (significant at "
            "[canary] confidence)")
        .Register(registry)
        .Add({})
        .Set(verdict.z);
}

// Fleet mode: is etcd reachable, who is in the fleet, how far behind each member is, and how
// changes fared (acks complete or partial, conflicts).
void render_fleet(prometheus::Registry& registry, const Switchboard& board) {
    const FleetStore* fleet = board.fleet();
    if (fleet == nullptr) {
        return;
    }
    auto gauge = [&registry](const char* name,
                             const char* help) -> prometheus::Family<prometheus::Gauge>& {
        return prometheus::BuildGauge().Name(name).Help(help).Register(registry);
    };
    gauge("bgproxy_fleet_store_reachable", "1 while the fleet's etcd answers this instance")
        .Add({{"fleet", fleet->name()}})
        .Set(fleet->reachable() ? 1 : 0);
    gauge("bgproxy_fleet_members", "Live members of the fleet (instances holding a lease)")
        .Add({{"fleet", fleet->name()}})
        .Set(static_cast<double>(fleet->members().size()));
    gauge("bgproxy_fleet_applied_version", "The state version this instance serves")
        .Add({{"fleet", fleet->name()}})
        .Set(static_cast<double>(board.state().version));
    gauge("bgproxy_fleet_applied_revision", "The etcd revision of the state this instance serves")
        .Add({{"fleet", fleet->name()}})
        .Set(static_cast<double>(board.state().revision));
    std::uint64_t newest = 0;
    for (const auto& [name, m] : fleet->members()) {
        newest = std::max(newest, m.applied_version);
    }
    auto& lag = gauge("bgproxy_fleet_member_lag_versions",
                      "State versions a member is behind the newest any member applied, as this "
                      "instance sees the membership");
    for (const auto& [name, m] : fleet->members()) {
        lag.Add({{"fleet", fleet->name()}, {"member", name}})
            .Set(static_cast<double>(newest - m.applied_version));
    }
    auto& acks = prometheus::BuildCounter()
                     .Name("bgproxy_fleet_acks_total")
                     .Help(
                         "Changes made on this instance by whether every member applied them "
                         "within fleet.apply_timeout (complete) or not (partial)")
                     .Register(registry);
    acks.Add({{"result", "complete"}})
        .Increment(static_cast<double>(board.counts().fleet_acks_complete));
    acks.Add({{"result", "partial"}})
        .Increment(static_cast<double>(board.counts().fleet_acks_partial));
    prometheus::BuildCounter()
        .Name("bgproxy_fleet_conflicts_total")
        .Help("Changes refused because another change reached the fleet first")
        .Register(registry)
        .Add({})
        .Increment(static_cast<double>(fleet->conflicts()));
    prometheus::BuildCounter()
        .Name("bgproxy_fleet_states_applied_total")
        .Help("States other instances committed that this instance applied")
        .Register(registry)
        .Add({})
        .Increment(static_cast<double>(board.counts().fleet_states_applied));
}

// The routing state and table: weights, stable and failed colours, each backend's health and
// load, panic, and the state's version and durability.
void render_routing(prometheus::Registry& registry, const Switchboard& board,
                    const DataPlaneLoad& load) {
    const RoutingState& state = board.state();
    const RoutingTable& table = *board.table();
    auto& weight = prometheus::BuildGauge()
                       .Name("bgproxy_colour_weight_ratio")
                       .Help("Share of new traffic a colour is configured to take (0..1)")
                       .Register(registry);
    auto& stable = prometheus::BuildGauge()
                       .Name("bgproxy_colour_stable")
                       .Help("1 for the stable (last known good) colour")
                       .Register(registry);
    auto& failed = prometheus::BuildGauge()
                       .Name("bgproxy_colour_failed")
                       .Help("1 while the rollout guard has marked the colour failed")
                       .Register(registry);
    auto& healthy_count = prometheus::BuildGauge()
                              .Name("bgproxy_colour_healthy_backends")
                              .Help("Backends of the colour able to take new requests")
                              .Register(registry);
    auto& backend_up = prometheus::BuildGauge()
                           .Name("bgproxy_backend_healthy")
                           .Help("1 when the backend passes its checks and is not ejected")
                           .Register(registry);
    auto& backend_requests = prometheus::BuildCounter()
                                 .Name("bgproxy_backend_requests_total")
                                 .Help("Requests sent to a backend (each try counts)")
                                 .Register(registry);
    auto& backend_failures =
        prometheus::BuildCounter()
            .Name("bgproxy_backend_failures_total")
            .Help(
                "Tries that failed: connect error, reset, timeout, or 5xx when "
                "outlier.count_5xx")
            .Register(registry);
    auto& in_flight = prometheus::BuildGauge()
                          .Name("bgproxy_backend_requests_in_flight")
                          .Help("Requests in flight to a backend")
                          .Register(registry);
    for (Colour c : all_colours) {
        const std::map<std::string, std::string> colour{{"colour", to_string(c)}};
        weight.Add(colour).Set(state.weight(c) / 10000.0);
        stable.Add(colour).Set(state.stable == c ? 1 : 0);
        failed.Add(colour).Set(state.failed[index_of(c)] ? 1 : 0);
        healthy_count.Add(colour).Set(static_cast<double>(table.pool(c).eligible.size()) *
                                      (table.panic() ? 0 : 1));
        for (const Backend& b : table.pool(c).backends) {
            const std::map<std::string, std::string> labels{{"colour", to_string(c)},
                                                            {"backend", b.name}};
            backend_up.Add(labels).Set(b.healthy ? 1 : 0);
            backend_requests.Add(labels).Increment(static_cast<double>(at(load.requests, b.id)));
            backend_failures.Add(labels).Increment(static_cast<double>(at(load.failures, b.id)));
            in_flight.Add(labels).Set(b.id < load.in_flight.size() ? load.in_flight[b.id] : 0);
        }
    }
    prometheus::BuildGauge()
        .Name("bgproxy_panic")
        .Help("1 when no colour has a healthy backend and requests go to every backend")
        .Register(registry)
        .Add({})
        .Set(table.panic() ? 1 : 0);
    prometheus::BuildGauge()
        .Name("bgproxy_state_durable")
        .Help(
            "1 when the routing state served is the one on disk; 0 while a safety action "
            "(rollback, revert, failover) waits to be persisted")
        .Register(registry)
        .Add({})
        .Set(board.durable() ? 1 : 0);
    prometheus::BuildCounter()
        .Name("bgproxy_audit_records_dropped_total")
        .Help(
            "Audit records not written to the audit log because its writer was stuck (a "
            "stalled disk) with a whole audit_log_max_size of records queued")
        .Register(registry)
        .Add({})
        .Increment(static_cast<double>(board.audit().dropped()));
    prometheus::BuildGauge()
        .Name("bgproxy_state_version")
        .Help("Version of the routing state")
        .Register(registry)
        .Add({})
        .Set(static_cast<double>(state.version));
}

// What changed the routing, and when: switches by kind, reloads, ejections; the canary and
// the tunnels a switch leaves open.
void render_switches(prometheus::Registry& registry, const Switchboard& board,
                     const DataPlaneLoad& load) {
    const auto& counts = board.counts();
    auto& switches =
        prometheus::BuildCounter()
            .Name("bgproxy_switches_total")
            .Help(
                "Routing changes by kind: set, flip, ramp, ramp_step, rollback, promote, "
                "auto_revert, outlier_revert, canary_revert, failover, failback, ...")
            .Register(registry);
    for (SwitchKind kind : all_switch_kinds) {
        // Every kind present, at 0 until it happens, so rate() works from the first switch.
        auto found = counts.switches.find(kind);
        switches.Add({{"kind", to_string(kind)}})
            .Increment(found == counts.switches.end() ? 0.0 : static_cast<double>(found->second));
    }
    render_canary(registry, board.canary());
    render_tunnels(registry, board, load);
    prometheus::BuildGauge()
        .Name("bgproxy_last_switch_timestamp_seconds")
        .Help("Unix time of the last routing change (0: none since start)")
        .Register(registry)
        .Add({})
        .Set(counts.last_switch_unix);
    auto& reloads = prometheus::BuildCounter()
                        .Name("bgproxy_config_reloads_total")
                        .Help("Config reloads by result")
                        .Register(registry);
    reloads.Add({{"result", "applied"}}).Increment(static_cast<double>(counts.reloads_applied));
    reloads.Add({{"result", "refused"}}).Increment(static_cast<double>(counts.reloads_refused));
    prometheus::BuildCounter()
        .Name("bgproxy_ejections_total")
        .Help("Backends ejected by outlier detection")
        .Register(registry)
        .Add({})
        .Increment(static_cast<double>(counts.ejections));
}

// The data plane's own counters, summed over the workers.
void render_worker_counters(prometheus::Registry& registry,
                            const std::vector<const WorkerStats*>& w) {
    auto counter = [&registry, &w](const char* name, const char* help,
                                   const WorkerStats::Counter WorkerStats::*field) {
        prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add({}).Increment(
            static_cast<double>(sum(w, field)));
    };
    auto gauge = [&registry, &w](const char* name, const char* help,
                                 const WorkerStats::Counter WorkerStats::*field) {
        prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({}).Set(
            static_cast<double>(sum(w, field)));
    };
    counter("bgproxy_requests_total", "Requests received from clients", &WorkerStats::requests);
    counter("bgproxy_downstream_connections_total", "Client connections accepted",
            &WorkerStats::connections_accepted);
    gauge("bgproxy_downstream_connections", "Client connections open",
          &WorkerStats::connections_open);
    gauge("bgproxy_downstream_connections_idle",
          "Client connections open and idle between requests (parked: socket and identity only)",
          &WorkerStats::connections_parked);
    counter("bgproxy_downstream_parks_total",
            "Times an idle client connection was parked (after timeouts.client_park_after)",
            &WorkerStats::parks);
    counter("bgproxy_bad_requests_total",
            "Requests refused by the proxy (400, 405, 413, 414, 417, 431, 501, 505)",
            &WorkerStats::bad_requests);
    counter("bgproxy_client_header_timeouts_total",
            "Clients dropped for sending their header too slowly",
            &WorkerStats::client_header_timeouts);
    counter("bgproxy_upstream_connect_failures_total", "Failed connects to backends",
            &WorkerStats::upstream_connect_failures);
    counter("bgproxy_upstream_tls_failures_total",
            "TLS handshakes with backends that failed (certificate, name or protocol)",
            &WorkerStats::upstream_tls_failures);
    counter("bgproxy_upstream_timeouts_total", "Backends that did not answer in time (504)",
            &WorkerStats::upstream_timeouts);
    counter("bgproxy_upstream_broken_responses_total", "Backend responses reset or cut",
            &WorkerStats::upstream_broken_responses);
    counter("bgproxy_upstream_idle_closed_total",
            "Pooled backend connections closed while idle because the backend closed them or "
            "sent bytes nobody asked for",
            &WorkerStats::upstream_idle_closed);
    counter("bgproxy_heap_trims_total",
            "Times a worker gave back to the system the memory freed past its spare pools after "
            "a burst (limits.heap_trim_after)",
            &WorkerStats::heap_trims);
    counter("bgproxy_retries_total", "Requests retried on another backend", &WorkerStats::retries);
    counter("bgproxy_retry_budget_exhausted_total", "Retries not made because the budget was spent",
            &WorkerStats::retry_budget_exhausted);
    counter("bgproxy_spliced_bytes_total",
            "Body bytes moved between plain sockets inside the kernel (splice), never copied "
            "through the proxy (server.splice_min_body)",
            &WorkerStats::spliced_bytes);
    counter("bgproxy_upgrades_total", "Connections upgraded (WebSocket...)",
            &WorkerStats::upgrades);
    gauge("bgproxy_upgraded_connections", "Upgraded connections open", &WorkerStats::upgraded_open);
    counter("bgproxy_connections_refused_total",
            "Client connections refused past max_connections, or with the process's file "
            "descriptors nearly all in use",
            &WorkerStats::connections_refused);
    counter(
        "bgproxy_tries_cut_total",
        "Tries waiting for a response head from a backend taken out of the routing (ejected, "
        "failing its checks, or its colour reverted or rolled back), cut to be retried elsewhere",
        &WorkerStats::tries_cut);
    counter("bgproxy_idle_connections_evicted_total",
            "Idle keep-alive client connections closed to make room past max_connections",
            &WorkerStats::idle_evicted);
    counter("bgproxy_opening_connections_evicted_total",
            "Client connections still in their TLS handshake, PROXY header or an incomplete "
            "request head (the oldest) closed to make room past max_connections",
            &WorkerStats::opening_evicted);
    counter("bgproxy_slow_uploads_evicted_total",
            "Client connections sending a request body slower than min_request_body_rate (the "
            "oldest) closed to make room past max_connections",
            &WorkerStats::slow_uploads_evicted);
    counter("bgproxy_tls_handshake_failures_total", "TLS handshakes that failed or timed out",
            &WorkerStats::tls_handshake_failures);
    counter("bgproxy_proxy_headers_refused_total",
            "Connections closed for a missing, malformed or untrusted PROXY protocol header",
            &WorkerStats::proxy_headers_refused);
    counter("bgproxy_client_aborts_total",
            "Requests whose client closed the connection while they were in flight (the "
            "backend connection is closed at once; 499 in the access log)",
            &WorkerStats::client_aborts);
    counter("bgproxy_client_body_timeouts_total",
            "Request bodies that stalled past client_body or came slower than "
            "min_request_body_rate (408 in the access log)",
            &WorkerStats::client_body_timeouts);
    counter("bgproxy_accept_failures_total",
            "accept() failures for want of descriptors or memory; the listener pauses each time",
            &WorkerStats::accept_failures);
    counter("bgproxy_out_of_descriptors_total",
            "Backend connections the proxy could not open for want of descriptors (503; not "
            "counted against the backend)",
            &WorkerStats::out_of_descriptors);
    auto& breaches = prometheus::BuildCounter()
                         .Name("bgproxy_limit_refusals_total")
                         .Help("Messages refused for going over a [limits] bound, by bound")
                         .Register(registry);
    for (std::size_t i = 0; i < limit_breach_kinds; ++i) {
        std::uint64_t n = 0;
        for (const WorkerStats* stats : w) {
            n += stats->limit_breaches[i].load(std::memory_order_relaxed);
        }
        breaches.Add({{"limit", to_string(static_cast<LimitBreach>(i))}})
            .Increment(static_cast<double>(n));
    }
}

}  // namespace

std::string render_metrics(const MetricsSources& in) {
    // A registry per scrape: label lookups happen here, once a scrape, never per request.
    prometheus::Registry registry;
    const Switchboard& board = in.switchboard;
    const RoutingTable& table = *board.table();

    auto& info = prometheus::BuildGauge()
                     .Name("bgproxy_build_info")
                     .Help("bgproxy build; always 1")
                     .Register(registry);
    info.Add({{"version", BGPROXY_VERSION}}).Set(1);

    render_routing(registry, board, in.load);
    render_switches(registry, board, in.load);
    render_traffic(registry, table, in.load);
    render_worker_counters(registry, in.workers);
    render_fleet(registry, board);
    if (in.access_log != nullptr) {
        prometheus::BuildCounter()
            .Name("bgproxy_access_log_dropped_total")
            .Help("Access log lines dropped because a worker's queue was full")
            .Register(registry)
            .Add({})
            .Increment(static_cast<double>(in.access_log->dropped()));
    }
    return prometheus::TextSerializer().Serialize(registry.Collect());
}

}  // namespace bg
