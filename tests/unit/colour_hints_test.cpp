#include <doctest/doctest.h>

#include "colour_hints.hpp"

namespace http = boost::beast::http;

namespace {

bg::RoutingTable table(std::uint32_t blue_bp, bool green_failed = false) {
    std::array<bg::ColourPool, 2> pools;
    pools[0].weight_bp = blue_bp;
    pools[1].weight_bp = 10000 - blue_bp;
    pools[1].failed = green_failed;
    pools[0].backends = {{0, "b", bg::Colour::blue, {}}};
    pools[1].backends = {{1, "g", bg::Colour::green, {}}};
    return bg::RoutingTable(1, std::move(pools));
}

bg::PreviewConfig loopback_preview() {
    bg::PreviewConfig preview;
    std::string error;
    REQUIRE(preview.allowed.add("127.0.0.0/8", error));
    REQUIRE(preview.allowed.add("::1", error));
    return preview;
}

}  // namespace

TEST_CASE("the preview header reaches an idle colour, only from an allowed network") {
    auto t = table(10000);
    auto preview = loopback_preview();
    bg::Fields f;
    f.set("X-BG-Color", "Green");
    auto local = boost::asio::ip::make_address("127.0.0.5");
    auto remote = boost::asio::ip::make_address("203.0.113.9");
    CHECK(bg::preview_colour(f, local, nullptr, preview, t) == bg::Colour::green);
    CHECK(bg::preview_colour(f, boost::asio::ip::make_address("::ffff:127.0.0.1"), nullptr, preview,
                             t) == bg::Colour::green);
    CHECK_FALSE(bg::preview_colour(f, remote, nullptr, preview, t));
    f.set("X-BG-Color", "purple");
    CHECK_FALSE(bg::preview_colour(f, local, nullptr, preview, t));
    // On several lines: one colour, or ignored (the first line won before).
    f.set("X-BG-Color", "green");
    f.insert("x-bg-color", " green");
    CHECK(bg::preview_colour(f, local, nullptr, preview, t) == bg::Colour::green);
    f.insert("X-Other", "blue");
    f.insert("X-BG-COLOR", "blue");
    CHECK_FALSE(bg::preview_colour(f, local, nullptr, preview, t));
}

TEST_CASE("behind trusted proxies the preview is judged on the client they forward for") {
    // Found by an outside probe: a balancer at 127.0.0.2 (trusted, in the allowed network)
    // forwarding for 9.9.9.9 reached the idle colour with the header: its own address was judged.
    auto t = table(10000);
    auto preview = loopback_preview();
    bg::NetworkSet trusted;
    std::string error;
    REQUIRE(trusted.add("127.0.0.2", error));
    REQUIRE(trusted.add("10.0.0.0/8", error));
    const auto balancer = boost::asio::ip::make_address("127.0.0.2");
    const auto with = [](std::vector<std::string> lines) {
        bg::Fields f;
        f.set("X-BG-Color", "green");
        for (const auto& line : lines) {
            f.insert("X-Forwarded-For", line);
        }
        return f;
    };
    CHECK_FALSE(bg::preview_colour(with({"9.9.9.9"}), balancer, &trusted, preview, t));
    CHECK(bg::preview_colour(with({"127.0.0.9"}), balancer, &trusted, preview, t) ==
          bg::Colour::green);
    // Hops of trusted proxies are passed over, from the right, over several lines; an address
    // a client put further left is not believed.
    CHECK(bg::preview_colour(with({"127.0.0.9, 9.9.9.9", "127.0.0.8 , 10.1.2.3"}), balancer,
                             &trusted, preview, t) == bg::Colour::green);
    CHECK_FALSE(bg::preview_colour(with({"127.0.0.9", "9.9.9.9, 10.1.2.3"}), balancer, &trusted,
                                   preview, t));
    CHECK(bg::preview_colour(with({"[::1]"}), balancer, &trusted, preview, t) == bg::Colour::green);
    // Ports and empty members (a trailing ", ") are read past.
    CHECK(bg::preview_colour(with({"127.0.0.9:5151, "}), balancer, &trusted, preview, t) ==
          bg::Colour::green);
    CHECK(bg::preview_colour(with({"[::1]:5151"}), balancer, &trusted, preview, t) ==
          bg::Colour::green);
    // Unreadable: no preview. None at all (a balancer naming no client): no preview either.
    CHECK_FALSE(bg::preview_colour(with({"127.0.0.9, unknown"}), balancer, &trusted, preview, t));
    CHECK_FALSE(bg::preview_colour(with({}), balancer, &trusted, preview, t));
    // Not from a trusted peer: its own address, whatever it forwards.
    CHECK(bg::preview_colour(with({"9.9.9.9"}), boost::asio::ip::make_address("127.0.0.5"), nullptr,
                             preview, t) == bg::Colour::green);
}

TEST_CASE("the sticky cookie holds unless its colour is failed or at weight 0") {
    bg::StickyConfig sticky;
    sticky.cookie = "bg";
    bg::Fields f;
    f.insert(http::field::cookie, "a=1; bg=green; c=2");
    CHECK(bg::sticky_colour(f, sticky, table(5000)) == bg::Colour::green);
    CHECK_FALSE(bg::sticky_colour(f, sticky, table(10000)));       // green at 0
    CHECK_FALSE(bg::sticky_colour(f, sticky, table(5000, true)));  // green failed
    sticky.cookie = "";
    CHECK_FALSE(bg::sticky_colour(f, sticky, table(5000)));
    sticky.cookie = "bg";
    CHECK(bg::sticky_cookie(sticky, bg::Colour::blue, 7) ==
          "bg=blue.7; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax");
}

TEST_CASE("a sticky cookie holds only in the split it was given in") {
    bg::StickyConfig sticky;
    sticky.cookie = "bg";
    bg::RoutingTable now = table(5000);
    now.set_split_since(7);
    bg::Fields f;
    f.insert(http::field::cookie, "bg=green.7");
    CHECK(bg::sticky_colour(f, sticky, now) == bg::Colour::green);
    f.set(http::field::cookie, "bg=green.3");  // from a split before a rollback
    CHECK_FALSE(bg::sticky_colour(f, sticky, now));
    f.set(http::field::cookie, "bg=green.");
    CHECK_FALSE(bg::sticky_colour(f, sticky, now));
    f.set(http::field::cookie, "bg=green");  // an older proxy's: no split named
    CHECK(bg::sticky_colour(f, sticky, now) == bg::Colour::green);
}

TEST_CASE("network sets match by prefix") {
    bg::NetworkSet set;
    std::string error;
    CHECK(set.add("10.1.0.0/16", error));
    CHECK(set.add("2001:db8::/32", error));
    CHECK_FALSE(set.add("10.0.0.0/33", error));
    CHECK_FALSE(set.add("not-an-address", error));
    CHECK(set.contains(boost::asio::ip::make_address("10.1.200.3")));
    CHECK_FALSE(set.contains(boost::asio::ip::make_address("10.2.0.1")));
    CHECK(set.contains(boost::asio::ip::make_address("2001:db8:1::1")));
    CHECK_FALSE(set.contains(boost::asio::ip::make_address("2001:db9::1")));
}
