#include "upstream_request.hpp"

#include <algorithm>
#include <array>
#include <boost/beast/core/string.hpp>
#include <boost/url/parse.hpp>
#include <charconv>
#include <limits>
#include <stdexcept>

#include "exchange_outcome.hpp"
#include "field_list.hpp"
#include "forwarding_headers.hpp"
#include "request_validation.hpp"

namespace bg {

namespace http = boost::beast::http;

namespace {

// RFC 9112 3.2: a target is ASCII URI characters (Beast refuses controls but lets obs-text
// through; HAProxy answers 400 too), without a fragment (in no request form).
bool ascii_without_fragment(std::string_view target) {
    return std::all_of(target.begin(), target.end(),
                       [](char c) { return static_cast<unsigned char>(c) < 0x80 && c != '#'; });
}

// Origin-form stays; absolute-form ("GET http://host/path") becomes origin-form with Host set
// from it (RFC 9112 3.2.2); "*" is kept for OPTIONS. Refused: a fragment (in no request form,
// RFC 9112 3.2), a scheme other than http and https (this is no forward proxy), an empty host
// or userinfo (RFC 9110 4.2.1 and 4.2.4: to be rejected as invalid), a port that is no port,
// and a path after the authority that does not begin with "/" (RFC 3986 3.3). Boost.URL 1.81
// takes the digits a port begins with and leaves the rest to the path: "http://a:http://b/x"
// became host "a:" and target "http://b/x", which a backend reads as host b (an outside probe).
bool normalize_target(Request& request) {
    auto target = request.target();
    if (!ascii_without_fragment(target)) {
        return false;
    }
    if (target.starts_with('/')) {
        return true;
    }
    if (target == "*") {
        return request.method() == http::verb::options;
    }
    auto uri = boost::urls::parse_absolute_uri(target);
    if (!uri || !uri->has_authority() || uri->encoded_host().empty() || uri->has_userinfo() ||
        (uri->scheme_id() != boost::urls::scheme::http &&
         uri->scheme_id() != boost::urls::scheme::https)) {
        return false;
    }
    const std::string_view port = uri->port();
    std::string origin(uri->encoded_path());
    if (!valid_port(port) || (!origin.empty() && origin.front() != '/')) {
        return false;
    }
    if (origin.empty()) {
        // RFC 9112 3.2.4: an OPTIONS for the server as a whole goes on as asterisk-form.
        origin = request.method() == http::verb::options && !uri->has_query() ? "*" : "/";
    }
    if (uri->has_query()) {
        origin.push_back('?');
        origin.append(uri->encoded_query());
    }
    std::string host(uri->encoded_host());
    if (!port.empty()) {
        host.push_back(':');
        host.append(port);
    }
    request.set(http::field::host, host);
    request.target(origin);
    return true;
}

}  // namespace

namespace {

// Whether any member of any Expect field of an HTTP/1.1 request satisfies `test` (HTTP/1.0
// requests' Expect is ignored, RFC 9110 10.1.1).
template <class Test>
bool any_expectation(const Request& request, Test test) {
    if (request.version() < 11) {
        return false;
    }
    for (const auto& field : request) {
        if (field.name() != http::field::expect) {
            continue;
        }
        bool found = false;
        for_each_list_member(field.value(), [&](std::string_view member) {
            found = test(member);
            return !found;
        });
        if (found) {
            return true;
        }
    }
    return false;
}

bool is_continue(std::string_view member) {
    return boost::beast::iequals(member, "100-continue");
}

// RFC 9110 10.1.1: 100-continue is the one expectation there is; a server may answer 417 to
// any other (which the proxy could not meet: it answers 100-continue itself).
bool unmet_expectation(const Request& request) {
    return any_expectation(request, [](std::string_view m) { return !is_continue(m); });
}

// Any Expect field naming 100-continue, not only the first.
bool expects_continue(const Request& request) {
    return any_expectation(request, is_continue);
}

}  // namespace

Refusal check_request_head(RequestParser& parser, std::uint64_t max_request_body) {
    auto& request = parser.get();
    if (auto why = framing_problem(request.base()); !why.empty()) {
        return {http::status::bad_request, why};
    }
    if (auto why = unimplemented_coding(request.base()); !why.empty()) {
        return {http::status::not_implemented, why};
    }
    if (request.method() == http::verb::connect) {
        return {http::status::method_not_allowed, "CONNECT is not supported"};
    }
    if (!normalize_target(request)) {
        return {http::status::bad_request, "invalid request target"};
    }
    if (unmet_expectation(request)) {
        return {http::status::expectation_failed, "only 100-continue can be expected"};
    }
    if (max_request_body > 0 && parser.content_length() &&
        *parser.content_length() > max_request_body) {
        return {http::status::payload_too_large, "request body too large",
                LimitBreach::request_body};
    }
    return {};
}

std::optional<LocalAnswer> apply_max_forwards(Request& request) {
    const auto method = request.method();
    if (method != http::verb::options && method != http::verb::trace) {
        return std::nullopt;
    }
    const auto field = request.find(http::field::max_forwards);
    if (field == request.end()) {
        return std::nullopt;
    }
    const std::string_view value = field->value();
    std::uint64_t hops = 0;
    const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), hops);
    if (end != value.data() + value.size()) {
        return std::nullopt;  // not a count: left alone
    }
    if (ec == std::errc::result_out_of_range) {
        // Digits past 2^64 - 1: RFC 9110 7.6.2 forwards the lesser of the count less one and
        // the proxy's own maximum (went on unchanged before).
        hops = std::numeric_limits<std::uint64_t>::max();
    } else if (ec != std::errc{}) {
        return std::nullopt;
    }
    if (hops > 0) {
        request.set(http::field::max_forwards, std::to_string(hops - 1));
        return std::nullopt;
    }
    if (method == http::verb::options) {
        return LocalAnswer{.content_type = {}, .body = {}, .allow = true};
    }
    LocalAnswer echo{.content_type = "message/http", .body = {}, .allow = false};
    echo.body.append(request.method_string())
        .append(" ")
        .append(request.target())
        .append(request.version() == 10 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n");
    for (const auto& f : request) {
        const auto name = f.name();
        if (name == http::field::authorization || name == http::field::proxy_authorization ||
            name == http::field::cookie) {
            continue;
        }
        echo.body.append(f.name_string()).append(": ").append(f.value()).append("\r\n");
    }
    echo.body.append("\r\n");
    return echo;
}

RequestFacts request_facts(const RequestParser& parser, const std::vector<std::string>& upgrades) {
    const auto& request = parser.get();
    RequestFacts facts{
        .keep_alive = parser.keep_alive(),
        .version = request.version(),
        .upgrade = false,
        .upgrade_to = {},
        .head = request.method() == http::verb::head,
        // (check_request_head refused any other expectation.)
        .expect_continue = expects_continue(request),
        .idempotent = idempotent(request.method()),
    };
    if (request.version() >= 11 && is_upgrade_request(request.base())) {
        // h2c and the like would make a tunnel of HTTP requests that no routing, limit or log
        // sees (Envoy and nginx switch only to protocols configured).
        // Upgrade fields on several lines are one list (RFC 9110 5.3).
        for (const auto& field : request) {
            if (field.name() == http::field::upgrade) {
                const std::string allowed = allowed_upgrade(field.value(), upgrades);
                if (!allowed.empty()) {
                    facts.upgrade_to.append(facts.upgrade_to.empty() ? "" : ", ").append(allowed);
                }
            }
        }
        facts.upgrade = !facts.upgrade_to.empty();
    }
    return facts;
}

namespace {

// RFC 9110 7.6.3: a gateway adds itself to Via on each request it forwards, after the protocol
// it received the request in ("1.0 bgproxy" for an HTTP/1.0 client). A field line of its own
// after any the client sent: the same list. Built on the stack (the name is at most 64 bytes).
void add_via(Request& request, unsigned version, std::string_view name) {
    std::array<char, 4 + Config::max_via_name> value{};
    const std::string_view protocol = version >= 11 ? "1.1 " : "1.0 ";
    const std::size_t size = protocol.size() + std::min(name.size(), Config::max_via_name);
    std::copy(protocol.begin(), protocol.end(), value.begin());
    std::copy_n(name.begin(), size - protocol.size(), value.begin() + protocol.size());
    request.insert(http::field::via, std::string_view(value.data(), size));
}

}  // namespace

Refusal rewrite_for_upstream(RequestParser& parser, const RequestFacts& facts,
                             const ClientHop& hop) {
    auto& request = parser.get();
    const bool chunked = parser.chunked();
    if (request.find(http::field::expect) != request.end()) {
        // We answer 100-continue ourselves (the backend sees no Expect), so the body flows
        // without waiting for the backend's interim response. An HTTP/1.0 client's Expect is
        // ignored (RFC 9110 10.1.1): it would not reach the backend as an HTTP/1.1 request's.
        // Empty Expect fields go too: one before "100-continue" must not hide it.
        request.erase(http::field::expect);
    }
    try {
        if (!rewrite_request_fields(request, ForwardedFor{hop.client_ip, hop.tls, facts.upgrade,
                                                          hop.trusted, hop.underscores})) {
            return {http::status::bad_request, "header field name with an underscore"};
        }
        if (!hop.via.empty()) {
            add_via(request, facts.version, hop.via);
        }
        if (facts.upgrade) {
            request.set(http::field::upgrade, facts.upgrade_to);
        }
        if (request.find(http::field::host) == request.end()) {
            // RFC 9112 3.2: HTTP/1.1 needs a Host (a 1.1 request without one was refused).
            request.set(http::field::host, authority_of(hop.server));
        }
    } catch (const std::length_error&) {
        // Beast holds a field in at most 64 KiB: a forwarded chain grown past that.
        return {http::status::request_header_fields_too_large, "header field too large",
                LimitBreach::field_size};
    }
    if (chunked) {
        request.chunked(true);
    } else if (const auto length = parser.content_length()) {
        // Leading zeros are valid (and were checked), but a backend that limits the digits of
        // a length, or reads them as octal, would frame the body otherwise: the value as read.
        const std::string_view sent = request[http::field::content_length];
        if (sent.size() > 1 && sent.front() == '0') {
            request.content_length(*length);
        }
    }
    request.version(11);
    return {};
}

std::string authority_of(const boost::asio::ip::tcp::endpoint& endpoint) {
    const auto address = endpoint.address();
    std::string text = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
    return text + ":" + std::to_string(endpoint.port());
}

}  // namespace bg
