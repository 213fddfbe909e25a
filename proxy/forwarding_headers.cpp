#include "forwarding_headers.hpp"

#include <boost/beast/http/rfc7230.hpp>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace bg {

namespace http = boost::beast::http;

namespace {

// Content-Length and Host frame and route the message: the proxy derives them itself, so a
// peer naming them in Connection (a smuggling trick: the body would become a second request)
// does not remove them. RFC 9110 7.6.1 forbids naming fields meant for every recipient there;
// keeping the framing is safe for every reading of such a message, refusing it is not needed.
bool frames_or_routes(std::string_view name) {
    return boost::beast::iequals(name, "content-length") || boost::beast::iequals(name, "host");
}

// A case-blind hash of a field name, keyed per process: no one can pick names that share a
// slot of the table below. (The key is drawn at start, not on a request: out of descriptors,
// random_device may need one to read /dev/urandom.)
const std::uint64_t name_hash_key =
    (std::uint64_t{std::random_device{}()} << 32) | std::random_device{}();

std::uint64_t name_hash(std::string_view name) {
    std::uint64_t h = 14695981039346656037ull ^ name_hash_key;  // FNV-1a
    for (const char c : name) {
        h ^= static_cast<unsigned char>(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

// An option that removes nothing: the framing and routing fields, Keep-Alive (gone with the
// other hop-by-hop fields), and Upgrade when the upgrade goes on.
bool kept_option(std::string_view option, bool keep_upgrade) {
    return (keep_upgrade && boost::beast::iequals(option, "upgrade")) || frames_or_routes(option) ||
           boost::beast::iequals(option, "keep-alive");
}

// Erases the fields the Connection options in `named` (a comma list) name. Each option is one
// lookup in a table of the fields' distinct names, and the doomed fields go in one pass, however
// many fields there are: an option at a time over every field cost 3 ms of CPU for a 32 KB head
// of 16,000 options (an outside probe; HAProxy spends a tenth of that on such a head), and an
// erase per doomed name over every field was O(fields x names).
void strip_named_fields(Fields& fields, std::string_view named, bool keep_upgrade) {
    struct Slot {
        std::uint64_t hash = 0;
        std::string_view name;  // in the arena: valid while the erasing moves the fields
        bool used = false;
        bool doomed = false;
    };
    std::size_t size = 16;
    while (size < 2 * fields.size()) {
        size *= 2;
    }
    std::vector<Slot> table(size);
    // The slot of `name`: its own, or the empty one where it would go.
    const auto slot_of = [&](std::string_view name, std::uint64_t hash) -> Slot& {
        for (std::size_t s = hash & (size - 1);; s = (s + 1) & (size - 1)) {
            Slot& slot = table[s];
            if (!slot.used || (slot.hash == hash && boost::beast::iequals(slot.name, name))) {
                return slot;
            }
        }
    };
    for (const auto& field : fields) {
        const std::string_view name = field.name_string();
        const std::uint64_t hash = name_hash(name);
        Slot& slot = slot_of(name, hash);
        if (!slot.used) {
            slot = {hash, name, true, false};
        }
    }
    bool any = false;
    for (auto token : http::token_list(named)) {
        const std::string_view option(token.data(), token.size());
        if (kept_option(option, keep_upgrade)) {
            continue;
        }
        Slot& slot = slot_of(option, name_hash(option));
        slot.doomed = slot.used;
        any = any || slot.used;
    }
    if (any) {
        fields.erase_if([&](const auto& field) {
            const std::string_view name = field.name_string();
            return slot_of(name, name_hash(name)).doomed;
        });
    }
}

bool is_hop_field(http::field name, bool keep_upgrade) {
    switch (name) {
        case http::field::connection:
        case http::field::keep_alive:
        case http::field::proxy_connection:
        case http::field::te:
        case http::field::trailer:
        case http::field::transfer_encoding:
        case http::field::http2_settings:  // h2c's, connection-specific (RFC 9113 3.2.1)
            return true;
        case http::field::upgrade:
            return !keep_upgrade;
        default:
            return false;
    }
}

// One pass over the fields (a lookup by name per hop-by-hop field walked Beast's ordered set
// seven times); then the fields Connection names, which most messages have none of.
void strip_hop_fields(Fields& fields, bool keep_upgrade) {
    std::string named;  // Connection's values, collected before they are erased
    for (auto it = fields.begin(); it != fields.end();) {
        const http::field name = it->name();
        if (name == http::field::connection) {
            named.append(it->value()).push_back(',');
        }
        it = is_hop_field(name, keep_upgrade) ? fields.erase(it) : std::next(it);
    }
    // Most messages' options are "close" or "keep-alive" at most: a few are looked for field by
    // field (no table to build for each Connection: close request), more through the table.
    std::size_t options = 0;
    for (auto token : http::token_list(named)) {
        const std::string_view option(token.data(), token.size());
        if (kept_option(option, keep_upgrade)) {
            continue;
        }
        if (++options > 4) {
            strip_named_fields(fields, named, keep_upgrade);
            return;
        }
        fields.erase(option);
    }
}

}  // namespace

bool rewrite_request_fields(Fields& fields, const ForwardedFor& hop) {
    strip_hop_fields(fields, hop.upgrade);
    if (hop.upgrade) {
        fields.insert(http::field::connection, "upgrade");
    }

    // One pass over the fields. X-Forwarded-For becomes one line: the list so far (from a
    // trusted proxy only), then this client; from anyone else the forwarding fields are
    // replaced, so a client cannot forge its way into the chain. A trusted proxy in front
    // terminated the client's connection: its Proto and Host stand.
    std::string chain;
    bool kept_proto = false;
    bool kept_host = false;
    std::optional<std::string_view> host;  // the (first) Host field's value
    for (auto it = fields.begin(); it != fields.end();) {
        const http::field name = it->name();
        if (name == http::field::host) {
            host = host ? host : it->value();
        } else if (name == http::field::forwarded && !hop.trusted) {
            it = fields.erase(it);
            continue;
        } else if (name == http::field::unknown) {
            const std::string_view text = it->name_string();
            if (hop.underscores != UnderscoreFields::allow &&
                text.find('_') != std::string_view::npos) {
                if (hop.underscores == UnderscoreFields::reject) {
                    return false;
                }
                it = fields.erase(it);
                continue;
            }
            if (boost::beast::iequals(text, "X-Forwarded-For")) {
                if (hop.trusted) {
                    // Empty list members (a trailing ", ") are dropped, not passed on doubled.
                    std::string_view value = it->value();
                    while (!value.empty() &&
                           (value.back() == ',' || value.back() == ' ' || value.back() == '\t')) {
                        value.remove_suffix(1);
                    }
                    if (!chain.empty() && !value.empty()) {
                        chain.append(", ");
                    }
                    chain.append(value);
                }
                it = fields.erase(it);
                continue;
            }
            const bool proto = boost::beast::iequals(text, "X-Forwarded-Proto");
            if (proto || boost::beast::iequals(text, "X-Forwarded-Host")) {
                if (!hop.trusted) {
                    it = fields.erase(it);
                    continue;
                }
                (proto ? kept_proto : kept_host) = true;
            }
        }
        ++it;
    }
    if (!chain.empty()) {
        chain.append(", ");
    }
    chain.append(hop.client_ip);
    // Beast has no codes for these names: said here, not looked up for every request.
    constexpr auto unknown = http::field::unknown;
    fields.insert(unknown, "X-Forwarded-For", chain);
    if (!kept_proto) {
        fields.insert(unknown, "X-Forwarded-Proto", hop.tls ? "https" : "http");
    }
    if (!kept_host && host) {
        fields.insert(unknown, "X-Forwarded-Host", *host);  // (in the arena: *host stays valid)
    }
    return true;
}

void strip_response_hop_fields(Fields& fields, bool upgrade) {
    strip_hop_fields(fields, upgrade);
    if (upgrade) {
        fields.insert(http::field::connection, "upgrade");
    }
}

}  // namespace bg
