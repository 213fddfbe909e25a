#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <regex>
#include <set>

#include "audit_log.hpp"
#include "metrics_exporter.hpp"
#include "state_store.hpp"
#include "switchboard.hpp"
#include "traffic_counters.hpp"
#include "unit_fixtures.hpp"

namespace {

std::uint32_t id_of(const bg::RoutingTable& table, bg::Colour colour, const std::string& name) {
    for (const auto& b : table.pool(colour).backends) {
        if (b.name == name) {
            return b.id;
        }
    }
    FAIL("no backend " << name);
    return 0;
}

}  // namespace

TEST_CASE("a duration lands in the first bucket whose bound it does not exceed") {
    bg::DurationHistogram h;
    h.observe(0.0001);  // <= 0.0005
    h.observe(0.0005);  // the bound itself belongs to its bucket
    h.observe(0.003);   // <= 0.005
    h.observe(60);      // +Inf
    CHECK(h.counts[0] == 2);
    CHECK(h.counts[3] == 1);
    CHECK(h.counts.back() == 1);
    CHECK(h.count() == 4);
    CHECK(h.sum == doctest::Approx(60.0036));
}

TEST_CASE("traffic counters sum over workers cell by cell") {
    bg::TrafficCounters a;
    bg::TrafficCounters b;
    a.count_response(0, bg::MethodClass::other, 400);
    b.count_response(3, bg::MethodClass::post, 503);
    b.count_response(3, bg::MethodClass::post, 599);
    b.count_connect(7);
    a.add(b);
    REQUIRE(a.responses.size() == 4);
    CHECK(a.responses[0][static_cast<int>(bg::MethodClass::other) * 5 + 3] == 1);
    CHECK(a.responses[3][static_cast<int>(bg::MethodClass::post) * 5 + 4] == 2);
    CHECK(a.upstream_connects.at(7) == 1);
    CHECK(bg::method_class(boost::beast::http::verb::propfind) == bg::MethodClass::other);
    CHECK(std::string(bg::to_string(bg::MethodClass::delete_)) == "DELETE");
}

TEST_CASE("the exposition names each colour, backend, method class and status class") {
    boost::asio::io_context io;
    bg::MemoryStateStore store;
    bg::AuditLog audit("");
    std::string error;
    REQUIRE(audit.open(error));
    bg::Switchboard board(io.get_executor(),
                          std::make_shared<const bg::Config>(bg::test::two_blue_one_green()), "",
                          store, audit);
    REQUIRE(board.load(error));
    const bg::RoutingTable& table = *board.table();
    const auto blue1 = id_of(table, bg::Colour::blue, "blue-1");
    const auto green1 = id_of(table, bg::Colour::green, "green-1");

    bg::DataPlaneLoad load;
    for (int i = 0; i < 7; ++i) {
        load.traffic.count_response(blue1 + 1, bg::MethodClass::get, 200);
    }
    load.traffic.count_response(green1 + 1, bg::MethodClass::put, 502);
    load.traffic.count_response(0, bg::MethodClass::other, 431);
    load.traffic.request_duration[bg::index_of(bg::Colour::blue)].observe(0.002);
    load.traffic.response_body_bytes[bg::index_of(bg::Colour::green)] = 1234;
    load.traffic.count_connect(green1);
    load.upstream_open.assign(table.backend_id_limit(), 0);
    load.upstream_open[green1] = 2;
    const std::string text = bg::render_metrics({board, load, {}, nullptr});

    CHECK(
        text.find(
            R"(bgproxy_http_responses_total{backend="blue-1",code="2xx",colour="blue",method="GET"} 7)") !=
        std::string::npos);
    CHECK(
        text.find(
            R"(bgproxy_http_responses_total{backend="green-1",code="5xx",colour="green",method="PUT"} 1)") !=
        std::string::npos);
    CHECK(
        text.find(
            R"(bgproxy_http_responses_total{backend="none",code="4xx",colour="none",method="OTHER"} 1)") !=
        std::string::npos);
    // Cells never counted are not exported: no series for blue-2 yet.
    CHECK(text.find(R"(bgproxy_http_responses_total{backend="blue-2")") == std::string::npos);
    CHECK(text.find(R"(bgproxy_request_duration_seconds_bucket{colour="blue",le="0.0025"} 1)") !=
          std::string::npos);
    CHECK(text.find(R"(bgproxy_request_duration_seconds_bucket{colour="blue",le="0.001"} 0)") !=
          std::string::npos);
    CHECK(text.find(R"(bgproxy_request_duration_seconds_count{colour="green"} 0)") !=
          std::string::npos);
    CHECK(text.find(R"(bgproxy_response_body_bytes_total{colour="green"} 1234)") !=
          std::string::npos);
    CHECK(text.find(R"(bgproxy_upstream_connections{backend="green-1",colour="green"} 2)") !=
          std::string::npos);
    CHECK(text.find(R"(bgproxy_upstream_connections_total{backend="green-1",colour="green"} 1)") !=
          std::string::npos);
    CHECK(text.find("# TYPE bgproxy_upstream_duration_seconds histogram") != std::string::npos);

    // Label sets stay bounded: no label outside this list, ever (no paths, no addresses).
    const std::set<std::string> allowed{"colour", "backend", "method", "code",    "le",  "kind",
                                        "result", "version", "limit",  "verdict", "role"};
    const std::regex label(R"(([a-z_]+)=")");
    for (auto it = std::sregex_iterator(text.begin(), text.end(), label);
         it != std::sregex_iterator(); ++it) {
        CHECK_MESSAGE(allowed.count((*it)[1].str()) == 1, "unexpected label " << (*it)[1].str());
    }
}
