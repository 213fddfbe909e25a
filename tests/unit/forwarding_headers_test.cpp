#include <doctest/doctest.h>

#include <boost/beast/http/fields.hpp>
#include <string>

#include "exchange_outcome.hpp"
#include "forwarding_headers.hpp"

namespace http = boost::beast::http;

TEST_CASE("hop-by-hop fields are removed, with those Connection names") {
    bg::Fields f;
    f.set(http::field::host, "example.com");
    f.insert(http::field::connection, "keep-alive, X-Secret");
    f.insert(http::field::connection, "Upgrade");
    f.set("X-Secret", "s");
    f.set(http::field::keep_alive, "timeout=5");
    f.set(http::field::proxy_connection, "keep-alive");
    f.set(http::field::te, "trailers");
    f.set(http::field::trailer, "X-T");
    f.set(http::field::transfer_encoding, "chunked");
    f.set(http::field::upgrade, "websocket");
    f.set("X-Kept", "yes");
    bg::rewrite_request_fields(f, {"10.0.0.1", false, false});
    for (auto name : {"Connection", "X-Secret", "Keep-Alive", "Proxy-Connection", "TE", "Trailer",
                      "Transfer-Encoding", "Upgrade"}) {
        CHECK_MESSAGE(f.find(name) == f.end(), name);
    }
    CHECK(f["X-Kept"] == "yes");
    CHECK(f[http::field::host] == "example.com");
}

TEST_CASE("Connection's options remove every field they name, however many fields and options") {
    // The options are looked up in a table of the fields' names (an option at a time over every
    // field cost 3 ms a request for 16,000 options).
    bg::Fields f;
    f.set(http::field::host, "example.com");
    for (int i = 0; i < 300; ++i) {
        f.insert("X-" + std::to_string(i), "v");
    }
    f.insert("x-7", "again");  // a second field of one name, in another case
    f.insert(http::field::content_length, "0");
    std::string options = "host, Content-Length";
    for (int i = 0; i < 5000; ++i) {
        options += ", " + std::string(i % 2 == 0 ? "x-" : "X-") + std::to_string(i % 10) +
                   ", unknown-" + std::to_string(i);
    }
    f.insert(http::field::connection, options);
    bg::rewrite_request_fields(f, {"10.0.0.1", false, false});
    for (int i = 0; i < 300; ++i) {
        CHECK_MESSAGE((f.find("X-" + std::to_string(i)) == f.end()) == (i < 10), i);
    }
    CHECK(f[http::field::host] == "example.com");  // framing and routing stay (see above)
    CHECK(f[http::field::content_length] == "0");
}

TEST_CASE("a few Connection options and many remove the same fields, and keep the same ones") {
    // Up to 4 options are looked for field by field, more through a table: the same outcome.
    for (const int extra : {0, 10}) {
        bg::Fields f;
        f.set(http::field::host, "example.com");
        f.insert(http::field::content_length, "0");
        f.set(http::field::upgrade, "websocket");
        f.set("X-A", "a");
        f.set("x-b", "b");
        f.set("X-Kept", "k");
        std::string options = "keep-alive, Upgrade, HOST, content-length, x-a, X-B";
        for (int i = 0; i < extra; ++i) {
            options += ", unknown-" + std::to_string(i);
        }
        f.insert(http::field::connection, options);
        bg::rewrite_request_fields(f, {"10.0.0.1", false, true});  // an upgrade goes on
        CAPTURE(extra);
        CHECK(f.find("X-A") == f.end());
        CHECK(f.find("X-B") == f.end());
        CHECK(f["X-Kept"] == "k");
        CHECK(f[http::field::host] == "example.com");
        CHECK(f[http::field::content_length] == "0");
        CHECK(f[http::field::upgrade] == "websocket");
        CHECK(f[http::field::connection] == "upgrade");
    }
}

TEST_CASE("from a trusted proxy X-Forwarded-For is appended to and its Proto kept") {
    bg::Fields f;
    f.set(http::field::host, "shop.example:8080");
    f.insert("X-Forwarded-For", "1.1.1.1");
    f.insert("X-Forwarded-For", "2.2.2.2");
    f.set("X-Forwarded-Proto", "https");
    f.set(http::field::forwarded, "for=1.1.1.1");
    bg::rewrite_request_fields(f, {"10.0.0.1", false, false, true});
    CHECK(f["X-Forwarded-For"] == "1.1.1.1, 2.2.2.2, 10.0.0.1");
    CHECK(f.count("X-Forwarded-For") == 1);
    CHECK(f["X-Forwarded-Proto"] == "https");
    CHECK(f[http::field::forwarded] == "for=1.1.1.1");
    CHECK(f["X-Forwarded-Host"] == "shop.example:8080");
}

TEST_CASE("a trusted proxy's chain keeps no empty members") {
    // Found by an outside probe: "1.1.1.1," became "1.1.1.1,, 10.0.0.1".
    bg::Fields f;
    f.set(http::field::host, "x");
    f.insert("X-Forwarded-For", "1.1.1.1, ");
    f.insert("X-Forwarded-For", ",");
    f.insert("X-Forwarded-For", "2.2.2.2,");
    bg::rewrite_request_fields(f, {"10.0.0.1", false, false, true});
    CHECK(f["X-Forwarded-For"] == "1.1.1.1, 2.2.2.2, 10.0.0.1");
}

TEST_CASE("from anyone else X-Forwarded-For is replaced, Proto and Host are set") {
    bg::Fields f;
    f.set(http::field::host, "shop.example:8080");
    f.insert("X-Forwarded-For", "1.1.1.1");
    f.set("X-Forwarded-Proto", "gopher");
    f.set("X-Forwarded-Host", "evil.example");
    f.set(http::field::forwarded, "for=1.1.1.1");
    bg::rewrite_request_fields(f, {"10.0.0.1", true, false});
    CHECK(f["X-Forwarded-For"] == "10.0.0.1");
    CHECK(f["X-Forwarded-Proto"] == "https");
    CHECK(f["X-Forwarded-Host"] == "shop.example:8080");
    CHECK(f.find(http::field::forwarded) == f.end());

    bg::Fields fresh;
    bg::rewrite_request_fields(fresh, {"::1", false, false});
    CHECK(fresh["X-Forwarded-For"] == "::1");
    CHECK(fresh["X-Forwarded-Proto"] == "http");
    CHECK(fresh.find("X-Forwarded-Host") == fresh.end());
}

TEST_CASE("an upgrade keeps Upgrade and says so in Connection") {
    bg::Fields f;
    f.set(http::field::connection, "Upgrade");
    f.set(http::field::upgrade, "websocket");
    bg::rewrite_request_fields(f, {"10.0.0.1", false, true});
    CHECK(f[http::field::upgrade] == "websocket");
    CHECK(f[http::field::connection] == "upgrade");

    bg::Fields response;
    response.set(http::field::connection, "Upgrade");
    response.set(http::field::upgrade, "websocket");
    response.set(http::field::keep_alive, "x");
    bg::strip_response_hop_fields(response, true);
    CHECK(response[http::field::upgrade] == "websocket");
    CHECK(response.find(http::field::keep_alive) == response.end());
}

TEST_CASE("forwarding fields are matched whatever their case; framing named by Connection stays") {
    bg::Fields f;
    f.set(http::field::host, "a.example");
    f.set(http::field::content_length, "5");
    f.insert(http::field::connection, "content-length, host, x-drop, close");
    f.insert("x-drop", "1");
    f.insert("x-forwarded-for", "1.1.1.1");
    f.insert("X-FORWARDED-FOR", "2.2.2.2");
    f.insert("x-forwarded-host", "front.example");
    bg::rewrite_request_fields(f, {"10.0.0.1", false, false, true});
    CHECK(f[http::field::content_length] == "5");
    CHECK(f[http::field::host] == "a.example");
    CHECK(f.find("X-Drop") == f.end());
    CHECK(f["X-Forwarded-For"] == "1.1.1.1, 2.2.2.2, 10.0.0.1");
    CHECK(f.count("X-Forwarded-For") == 1);
    CHECK(f["X-Forwarded-Host"] == "front.example");  // a trusted proxy's stands
    CHECK(f["X-Forwarded-Proto"] == "http");

    bg::rewrite_request_fields(f, {"10.0.0.2", false, false, false});  // untrusted now
    CHECK(f["X-Forwarded-For"] == "10.0.0.2");
    CHECK(f["X-Forwarded-Host"] == "a.example");
    CHECK(f.count("X-Forwarded-Host") == 1);
}

TEST_CASE("an Upgrade keeps only the allowed protocols; a 101 switches to one offered") {
    const std::vector<std::string> websocket{"websocket"};
    CHECK(bg::allowed_upgrade("h2c", websocket).empty());
    CHECK(bg::allowed_upgrade("h2c, WebSocket", websocket) == "WebSocket");
    CHECK(bg::allowed_upgrade(" websocket/13 ,,foo", websocket) == "websocket/13");
    CHECK(bg::allowed_upgrade("websocket", {}).empty());
    CHECK(bg::upgrade_offered("websocket", "WebSocket"));
    CHECK(bg::upgrade_offered("websocket/13", "foo, websocket"));
    CHECK_FALSE(bg::upgrade_offered("h2c", "websocket"));
    CHECK_FALSE(bg::upgrade_offered("h2c, websocket", "websocket"));  // the first is the switch
    CHECK_FALSE(bg::upgrade_offered("", "websocket"));
}

TEST_CASE("fields named with an underscore: dropped, refused or kept as configured") {
    const auto fields = [] {
        bg::Fields f;
        f.set(http::field::host, "example.com");
        f.set("X_Forwarded_For", "6.6.6.6");
        f.set("X-Kept", "yes");
        return f;
    };
    bg::Fields dropped = fields();
    CHECK(bg::rewrite_request_fields(
        dropped, {"10.0.0.1", false, false, false, bg::UnderscoreFields::drop}));
    CHECK(dropped.find("X_Forwarded_For") == dropped.end());
    CHECK(dropped["X-Forwarded-For"] == "10.0.0.1");
    CHECK(dropped["X-Kept"] == "yes");
    bg::Fields refused = fields();
    CHECK_FALSE(bg::rewrite_request_fields(
        refused, {"10.0.0.1", false, false, false, bg::UnderscoreFields::reject}));
    bg::Fields kept = fields();
    CHECK(bg::rewrite_request_fields(
        kept, {"10.0.0.1", false, false, false, bg::UnderscoreFields::allow}));
    CHECK(kept["X_Forwarded_For"] == "6.6.6.6");
}

TEST_CASE(
    "the forwarding names have no Beast code (rewrite_request_fields inserts them as unknown)") {
    for (const char* name : {"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"}) {
        CHECK(http::string_to_field(name) == http::field::unknown);
    }
}
