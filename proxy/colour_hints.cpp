#include "colour_hints.hpp"

#include <algorithm>
#include <boost/beast/core/string.hpp>

namespace bg {

namespace http = boost::beast::http;

namespace {

std::optional<Colour> named(std::string_view value) {
    if (boost::beast::iequals(value, "blue")) {
        return Colour::blue;
    }
    if (boost::beast::iequals(value, "green")) {
        return Colour::green;
    }
    return std::nullopt;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
        s.remove_prefix(1);
    }
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
        s.remove_suffix(1);
    }
    return s;
}

// One X-Forwarded-For member: an address, bracketed or not, with a port or not (some
// balancers add one).
std::optional<boost::asio::ip::address> member_address(std::string_view item) {
    if (item.starts_with('[')) {
        item = item.substr(1, item.find(']') - 1);  // ("[v6]" or "[v6]:port")
    } else if (std::count(item.begin(), item.end(), ':') == 1) {
        item = item.substr(0, item.find(':'));  // "v4:port"
    }
    boost::system::error_code ec;
    const auto address = boost::asio::ip::make_address(std::string(item), ec);
    return ec ? std::nullopt : std::optional(address);
}

// The client behind trusted proxies (see preview_colour), from the right of X-Forwarded-For's
// members (its lines in order, RFC 9110 5.3; empty members skipped). None without one: a
// trusted balancer that names no client (Forwarded only, or none) names no one to judge.
std::optional<boost::asio::ip::address> forwarded_client(const Fields& fields,
                                                         const NetworkSet& trusted) {
    std::optional<boost::asio::ip::address> client;
    for (auto line = fields.end(); line != fields.begin();) {
        --line;
        if (!boost::beast::iequals(line->name_string(), "X-Forwarded-For")) {
            continue;
        }
        std::string_view list = line->value();
        while (!list.empty()) {
            const std::size_t comma = list.rfind(',');
            const std::string_view item =
                trim(comma == std::string_view::npos ? list : list.substr(comma + 1));
            list = comma == std::string_view::npos ? std::string_view{} : list.substr(0, comma);
            if (item.empty()) {
                continue;
            }
            client = member_address(item);
            if (!client || !trusted.contains(*client)) {
                return client;
            }
        }
    }
    return client;  // trusted all the way: the farthest named
}

}  // namespace

std::optional<Colour> preview_colour(const Fields& fields, const boost::asio::ip::address& client,
                                     const NetworkSet* trusted_hops, const PreviewConfig& preview,
                                     const RoutingTable& table) {
    if (preview.header.empty() || preview.allowed.empty()) {
        return std::nullopt;
    }
    auto it = fields.find(preview.header);
    if (it == fields.end()) {
        return std::nullopt;
    }
    auto colour = named(trim(it->value()));
    // The header on several lines: one colour, or none. (A front proxy that checks the last
    // line, as HAProxy's req.hdr does, and this one the first would disagree on where it goes.)
    for (++it; colour && it != fields.end(); ++it) {
        if (boost::beast::iequals(it->name_string(), preview.header) &&
            named(trim(it->value())) != colour) {
            colour.reset();
        }
    }
    if (!colour || table.pool(*colour).eligible.empty()) {
        return std::nullopt;
    }
    const std::optional<boost::asio::ip::address> judged =
        trusted_hops != nullptr ? forwarded_client(fields, *trusted_hops) : std::optional(client);
    if (!judged || !preview.allowed.contains(*judged)) {
        return std::nullopt;
    }
    return colour;
}

std::optional<Colour> sticky_colour(const Fields& fields, const StickyConfig& sticky,
                                    const RoutingTable& table) {
    if (sticky.cookie.empty()) {
        return std::nullopt;
    }
    for (auto it = fields.find(http::field::cookie);
         it != fields.end() && it->name() == http::field::cookie; ++it) {
        std::string_view rest = it->value();
        while (!rest.empty()) {
            auto semi = rest.find(';');
            std::string_view pair = trim(rest.substr(0, semi));
            rest = semi == std::string_view::npos ? std::string_view{} : rest.substr(semi + 1);
            auto eq = pair.find('=');
            if (eq == std::string_view::npos || pair.substr(0, eq) != sticky.cookie) {
                continue;
            }
            std::string_view value = pair.substr(eq + 1);
            if (const auto dot = value.find('.'); dot != std::string_view::npos) {
                if (value.substr(dot + 1) != std::to_string(table.split_since())) {
                    return std::nullopt;  // given in another split
                }
                value = value.substr(0, dot);
            }
            auto colour = named(value);
            if (!colour) {
                return std::nullopt;
            }
            const ColourPool& pool = table.pool(*colour);
            if (pool.failed || pool.weight_bp == 0 || pool.eligible.empty()) {
                return std::nullopt;
            }
            return colour;
        }
    }
    return std::nullopt;
}

std::string sticky_cookie(const StickyConfig& sticky, Colour colour, std::uint64_t split) {
    return sticky.cookie + "=" + to_string(colour) + "." + std::to_string(split) +
           "; Path=/; Max-Age=" +
           std::to_string(
               std::chrono::duration_cast<std::chrono::seconds>(sticky.max_age).count()) +
           "; HttpOnly; SameSite=Lax";
}

}  // namespace bg
