#include "upstream_response.hpp"

#include <algorithm>
#include <cstring>
#include <string_view>

#include "forwarding_headers.hpp"

namespace bg {

namespace http = boost::beast::http;

namespace {

HeadRead refuse(ResponseRefusal& refusal, std::string_view why,
                std::optional<LimitBreach> breach = std::nullopt) {
    refusal.why = why;
    refusal.breach = breach;
    return HeadRead::invalid;
}

// "HTTP/1.1 200" with no space before the (empty) reason: RFC 9112 4 wants the space, but
// HAProxy, nginx, Envoy and curl take the line without it, and a backend that leaves it out
// would get every response refused. The space is put in for Beast, which insists on it. False
// when the buffer cannot take the byte.
bool add_missing_reason_space(boost::beast::flat_buffer& buffer, std::size_t line_end) {
    constexpr std::size_t bare = sizeof("HTTP/1.1 200") - 1;
    const auto* data = static_cast<const char*>(buffer.data().data());
    const std::string_view line(data, line_end);
    if (line.size() != bare || line[8] != ' ' ||
        !std::all_of(line.begin() + 9, line.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return true;  // not that shape: left as it is
    }
    if (buffer.size() >= buffer.max_size()) {
        return false;
    }
    const std::size_t size = buffer.size();
    buffer.commit(boost::asio::buffer_copy(buffer.prepare(1), boost::asio::buffer(" ", 1)));
    auto* moved = static_cast<char*>(buffer.data().data());
    std::memmove(moved + bare + 1, moved + bare, size - bare);
    moved[bare] = ' ';
    return true;
}

}  // namespace

HeadRead parse_response_head(boost::beast::flat_buffer& buffer, ResponseParser& parser,
                             const HeaderLimits& limits, std::size_t& checked,
                             ResponseRefusal& refusal) {
    auto* data = static_cast<char*>(buffer.data().data());
    const std::string_view bytes(data, buffer.size());
    if (bytes.find('\n', checked) == std::string_view::npos) {
        checked = bytes.size();
        return bytes.size() > limits.max_header
                   ? refuse(refusal, "header too large", LimitBreach::response_header)
                   : HeadRead::need_more;
    }
    checked = bytes.size();
    const RawHeaderScan scan = scan_raw_header(bytes, limits);
    switch (scan.verdict) {
        case RawHeaderVerdict::incomplete:
            return HeadRead::need_more;
        case RawHeaderVerdict::complete:
            break;
        case RawHeaderVerdict::request_line_too_long:
        case RawHeaderVerdict::header_too_long:
            return refuse(refusal, "header too large", LimitBreach::response_header);
        case RawHeaderVerdict::too_many_fields:
            return refuse(refusal, "too many header fields", LimitBreach::response_fields);
        case RawHeaderVerdict::field_too_long:
            return refuse(refusal, "header field too large", LimitBreach::response_header);
        default:
            return refuse(refusal, "malformed header");
    }
    if (normalize_response_version({data, bytes.find("\r\n")}) != StartLineVersion::http1) {
        return refuse(refusal, "not HTTP/1.x");
    }
    std::size_t header_end = scan.header_end;
    const std::size_t before = buffer.size();
    if (!add_missing_reason_space(buffer, bytes.find("\r\n"))) {
        return refuse(refusal, "header too large", LimitBreach::response_header);
    }
    header_end += buffer.size() - before;
    data = static_cast<char*>(buffer.data().data());
    boost::system::error_code ec;
    const std::size_t used = parser.put(boost::asio::buffer(data, header_end), ec);
    buffer.consume(used);
    if (ec || !parser.is_header_done()) {
        return refuse(refusal, "malformed header");
    }
    if (auto why = response_framing_problem(parser.get().base()); !why.empty()) {
        return refuse(refusal, why);
    }
    return HeadRead::done;
}

ResponsePlan rewrite_response_head(ResponseParser& parser, const RequestFacts& facts,
                                   bool may_stay) {
    auto& response = parser.get();
    const unsigned status = response.result_int();
    ResponsePlan plan;
    plan.switching = status == 101 && facts.upgrade;
    plan.no_body = facts.head || status == 204 || status == 304 || plan.switching;
    const bool upstream_chunked = parser.chunked();
    plan.until_close = !plan.no_body && !upstream_chunked && !parser.content_length();

    strip_response_hop_fields(response, plan.switching);
    plan.keep_alive = may_stay;
    if (const auto length = parser.content_length(); length) {
        const std::string_view text = response[http::field::content_length];
        if (response.count(http::field::content_length) > 1 ||
            text.find(',') != std::string_view::npos || (text.size() > 1 && text.front() == '0')) {
            // The length as the proxy read it, once: never a list ("3, 3") nor repeated fields
            // passed on (RFC 9110 8.6, RFC 9112 6.3), nor leading zeros that a client might
            // read as octal (as a request's are rewritten).
            response.content_length(*length);
        }
    }
    if (status == 204 || plan.switching) {
        // These never have a body, so no length either (RFC 9110 8.6): a client that read one
        // would wait for bytes that belong to the tunnel, or to nothing.
        response.erase(http::field::content_length);
    }
    if (!plan.no_body && (upstream_chunked || plan.until_close)) {
        // The proxy frames this body itself: a Content-Length beside it never reaches the
        // client.
        response.erase(http::field::content_length);
        if (facts.version >= 11) {
            response.chunked(true);
            plan.chunked = true;
        } else {
            plan.keep_alive = false;  // an HTTP/1.0 client learns the end from the close
        }
    }
    response.version(11);
    if (plan.switching) {
        // Connection: upgrade already set.
    } else if (!plan.keep_alive) {
        response.set(http::field::connection, "close");
    } else if (facts.version < 11) {
        response.set(http::field::connection, "keep-alive");
    }
    return plan;
}

void rewrite_interim_head(ResponseHeader& interim) {
    strip_response_hop_fields(interim, false);
    interim.erase(http::field::content_length);
    interim.version(11);
}

}  // namespace bg
