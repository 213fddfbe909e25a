#include "exchange_outcome.hpp"

#include <boost/beast/core/string.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/rfc7230.hpp>

#include "field_list.hpp"

namespace bg {

namespace beast = boost::beast;
namespace http = beast::http;
using boost::system::error_code;

// Parser errors that mean the peer framed its body wrongly (as opposed to the connection
// failing under it).
bool is_framing_error(const error_code& ec) {
    return ec.category() == http::make_error_code(http::error::bad_chunk).category() &&
           ec != http::error::partial_message && ec != http::error::end_of_stream &&
           ec != http::error::body_limit;
}

bool idempotent(http::verb method) {
    switch (method) {
        case http::verb::get:
        case http::verb::head:
        case http::verb::options:
        case http::verb::trace:
        case http::verb::put:
        case http::verb::delete_:
            return true;
        default:
            return false;
    }
}

namespace {

std::string_view protocol_name(std::string_view protocol) {
    return protocol.substr(0, protocol.find('/'));
}

}  // namespace

std::string allowed_upgrade(std::string_view offered, const std::vector<std::string>& allowed) {
    std::string out;
    for_each_list_member(offered, [&](std::string_view protocol) {
        for (const auto& ok : allowed) {
            if (beast::iequals(protocol_name(protocol), ok)) {
                out.append(out.empty() ? "" : ", ").append(protocol);
                break;
            }
        }
        return true;
    });
    return out;
}

bool upgrade_offered(std::string_view chosen, std::string_view offered) {
    bool found = false;
    // The first protocol is the one switched to (RFC 9110 7.8: lowest layer first).
    for_each_list_member(chosen, [&](std::string_view switched) {
        for_each_list_member(offered, [&](std::string_view protocol) {
            found = beast::iequals(protocol_name(switched), protocol_name(protocol));
            return !found;
        });
        return false;
    });
    return found;
}

bool is_upgrade_request(const RequestHeader& header) {
    if (header.find(http::field::upgrade) == header.end()) {
        return false;
    }
    // Every Connection field: "Connection: keep-alive" then "Connection: upgrade" asks too.
    for (const auto& field : header) {
        if (field.name() != http::field::connection) {
            continue;
        }
        for (auto token : http::token_list(field.value())) {
            if (beast::iequals(token, "upgrade")) {
                return true;
            }
        }
    }
    return false;
}

}  // namespace bg
