#include "forwarding_headers.hpp"

#include <boost/beast/http/rfc7230.hpp>
#include <string>

namespace bg {

namespace http = boost::beast::http;

namespace {

// Content-Length and Host frame and route the message: the proxy derives them itself, so a
// peer naming them in Connection (a smuggling trick: the body would become a second request)
// does not remove them. RFC 9110 7.6.1 forbids naming fields meant for every recipient there;
// keeping the framing is safe for every reading of such a message, refusing it is not needed.
bool frames_or_routes(std::string_view name) {
    const http::field field = http::string_to_field(name);
    return field == http::field::content_length || field == http::field::host;
}

void strip_hop_fields(http::fields& fields, bool keep_upgrade) {
    // Fields named by Connection are hop-by-hop too; collect names before erasing.
    std::string named;
    for (auto it = fields.find(http::field::connection);
         it != fields.end() && it->name() == http::field::connection; ++it) {
        named.append(it->value()).push_back(',');
    }
    for (auto token : http::token_list(named)) {
        if ((keep_upgrade && boost::beast::iequals(token, "upgrade")) || frames_or_routes(token)) {
            continue;
        }
        fields.erase(token);
    }
    fields.erase(http::field::connection);
    fields.erase(http::field::keep_alive);
    fields.erase(http::field::proxy_connection);
    fields.erase(http::field::te);
    fields.erase(http::field::trailer);
    fields.erase(http::field::transfer_encoding);
    if (!keep_upgrade) {
        fields.erase(http::field::upgrade);
    }
}

}  // namespace

void rewrite_request_fields(http::fields& fields, const ForwardedFor& hop) {
    strip_hop_fields(fields, hop.upgrade);
    if (hop.upgrade) {
        fields.set(http::field::connection, "upgrade");
    }

    // One X-Forwarded-For line: the list so far (from a trusted proxy only), then this client.
    // From anyone else the fields are replaced: a client cannot forge its way into the chain.
    std::string chain;
    for (auto it = fields.find("X-Forwarded-For"); it != fields.end();
         it = fields.find("X-Forwarded-For")) {
        if (hop.trusted) {
            if (!chain.empty()) {
                chain.append(", ");
            }
            chain.append(it->value());
        }
        fields.erase(it);
    }
    if (!chain.empty()) {
        chain.append(", ");
    }
    chain.append(hop.client_ip);
    fields.set("X-Forwarded-For", chain);
    if (!hop.trusted) {
        fields.erase(http::field::forwarded);
    }
    // A trusted proxy in front terminated the client's connection: its Proto and Host stand.
    if (!hop.trusted || fields.find("X-Forwarded-Proto") == fields.end()) {
        fields.set("X-Forwarded-Proto", hop.tls ? "https" : "http");
    }
    if (!hop.trusted || fields.find("X-Forwarded-Host") == fields.end()) {
        auto host = fields.find(http::field::host);
        if (host != fields.end()) {
            fields.set("X-Forwarded-Host", host->value());
        } else {
            fields.erase("X-Forwarded-Host");
        }
    }
}

void strip_response_hop_fields(http::fields& fields, bool upgrade) {
    strip_hop_fields(fields, upgrade);
    if (upgrade) {
        fields.set(http::field::connection, "upgrade");
    }
}

}  // namespace bg
