#include "config.hpp"

#include "backend_tls_context.hpp"
#include "tls_context.hpp"

#include <netdb.h>
#include <sched.h>
#include <sys/socket.h>

#include <toml++/toml.h>
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <thread>

namespace bg {

const char* to_string(Role role) {
    switch (role) {
        case Role::none:
            return "none";
        case Role::read:
            return "read";
        case Role::operate:
            return "operate";
        case Role::admin:
            return "admin";
    }
    return "?";
}

std::string ConfigError::to_string() const {
    std::ostringstream out;
    out << (file.empty() ? "<flags>" : file) << ':' << line << ':' << column << ": " << message;
    return out.str();
}

unsigned default_worker_count() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) {
            return static_cast<unsigned>(n);
        }
    }
    return std::max(1u, std::thread::hardware_concurrency());
}

std::optional<Duration> parse_duration(std::string_view text) {
    std::uint64_t value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end == text.data()) {
        return std::nullopt;
    }
    std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
    std::uint64_t ms_per_unit = 0;
    if (unit == "ms") {
        ms_per_unit = 1;
    } else if (unit == "s") {
        ms_per_unit = 1000;
    } else if (unit == "m") {
        ms_per_unit = 60'000;
    } else if (unit == "h") {
        ms_per_unit = 3'600'000;
    } else {
        return std::nullopt;
    }
    if (value > (std::uint64_t{1} << 40) / ms_per_unit) {
        return std::nullopt;
    }
    return Duration(static_cast<Duration::rep>(value * ms_per_unit));
}

std::optional<std::uint32_t> percent_to_basis_points(double percent) {
    if (!std::isfinite(percent) || percent < 0.0 || percent > 100.0) {
        return std::nullopt;
    }
    double bp = percent * 100.0;
    double rounded = std::round(bp);
    if (std::fabs(bp - rounded) > 1e-6) {
        return std::nullopt;  // more than two decimals
    }
    return static_cast<std::uint32_t>(rounded);
}

std::uint64_t HostPort::key() const {
    return std::hash<std::string_view>{}(ip)*65537u + port;
}

std::optional<HostPort> resolve_host_port(std::string_view text, std::string& error) {
    std::string host;
    std::string_view port_text;
    if (!text.empty() && text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
            error = "expected [IPv6]:PORT";
            return std::nullopt;
        }
        host = std::string(text.substr(1, close - 1));
        port_text = text.substr(close + 2);
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string_view::npos) {
            error = "expected HOST:PORT";
            return std::nullopt;
        }
        host = std::string(text.substr(0, colon));
        port_text = text.substr(colon + 1);
        if (host.find(':') != std::string::npos) {
            error = "an IPv6 address needs brackets: [ADDR]:PORT";
            return std::nullopt;
        }
    }
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc{} || end != port_text.data() + port_text.size() || port > 65535 ||
        port_text.empty()) {
        error = "port must be a number from 0 to 65535";
        return std::nullopt;
    }
    if (host.empty() || host == "*") {
        host = "0.0.0.0";
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    int rc = getaddrinfo(host.c_str(), nullptr, &hints, &found);
    if (rc != 0 || found == nullptr) {
        error = "cannot resolve host '" + host + "': " + gai_strerror(rc);
        return std::nullopt;
    }
    char numeric[NI_MAXHOST];
    rc = getnameinfo(found->ai_addr, found->ai_addrlen, numeric, sizeof(numeric), nullptr, 0,
                     NI_NUMERICHOST);
    freeaddrinfo(found);
    if (rc != 0) {
        error = "cannot resolve host '" + host + "'";
        return std::nullopt;
    }
    return HostPort{std::string(text), numeric, static_cast<std::uint16_t>(port)};
}

namespace {

// Strings that go into HTTP messages (health and gate requests, response fields) are checked
// here: a CR or LF in one would start a line of its own in every message built from it.

// RFC 9110 5.6.2: a method or a field name.
bool is_token(std::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) ||
               std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
    });
}

// RFC 9110 5.5: no control character but HTAB.
bool is_field_value(std::string_view s) {
    return std::none_of(s.begin(), s.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return (u < 0x20 && c != '\t') || u == 0x7f;
    });
}

// RFC 9112 3.2.1: an origin-form target; a blank would end the request line's target early.
bool is_origin_path(std::string_view s) {
    return s.starts_with('/') && std::none_of(s.begin(), s.end(), [](char c) {
               const auto u = static_cast<unsigned char>(c);
               return u <= 0x20 || u == 0x7f;
           });
}

// Reads one TOML table, remembering which keys were used so the rest can be reported as unknown.
class TableReader {
  public:
    TableReader(const toml::table& table, std::string name, std::string file,
                std::vector<ConfigError>& errors)
        : table_(table), name_(std::move(name)), file_(std::move(file)), errors_(errors) {}

    void error_at(const toml::node& node, std::string message) {
        const auto& where = node.source().begin;
        errors_.push_back({file_, where.line, where.column, std::move(message)});
    }

    const toml::node* take(std::string_view key) {
        used_.insert(std::string(key));
        return table_.get(key);
    }

    // `nonzero`: a setting that 0 would break (every request timing out at once, a loop that
    // never waits) is refused at 0 rather than taken.
    enum class Zero { allowed, refused };
    void read_duration(std::string_view key, Duration& out, Zero zero = Zero::allowed) {
        const toml::node* node = take(key);
        if (node == nullptr) {
            return;
        }
        auto text = node->value<std::string>();
        auto parsed = text ? parse_duration(*text) : std::nullopt;
        if (!parsed) {
            error_at(*node, qualified(key) +
                                " must be a duration string like \"250ms\", \"10s\", "
                                "\"5m\" or \"1h\"");
            return;
        }
        if (zero == Zero::refused && parsed->count() == 0) {
            error_at(*node, qualified(key) + " must be more than 0");
            return;
        }
        out = *parsed;
    }

    template <class Integer>
    void read_integer(std::string_view key, Integer& out, std::int64_t min, std::int64_t max) {
        const toml::node* node = take(key);
        if (node == nullptr) {
            return;
        }
        auto value = node->value_exact<std::int64_t>();
        if (!value || *value < min || *value > max) {
            error_at(*node, qualified(key) + " must be an integer from " + std::to_string(min) +
                                " to " + std::to_string(max));
            return;
        }
        out = static_cast<Integer>(*value);
    }

    void read_fraction(std::string_view key, double& out, double min, double max) {
        const toml::node* node = take(key);
        if (node == nullptr) {
            return;
        }
        auto value = node->value<double>();
        // Written so that NaN (TOML's `nan`), which fails every comparison, is refused too.
        if (!value || !(*value >= min && *value <= max)) {
            error_at(*node,
                     qualified(key) + " must be a number from " + trim(min) + " to " + trim(max));
            return;
        }
        out = *value;
    }

    void read_bool(std::string_view key, bool& out) {
        const toml::node* node = take(key);
        if (node == nullptr) {
            return;
        }
        auto value = node->value_exact<bool>();
        if (!value) {
            error_at(*node, qualified(key) + " must be true or false");
            return;
        }
        out = *value;
    }

    static std::string trim(double v) {
        std::string s = std::to_string(v);
        while (s.find('.') != std::string::npos && (s.back() == '0' || s.back() == '.')) {
            bool dot = s.back() == '.';
            s.pop_back();
            if (dot) {
                break;
            }
        }
        return s;
    }

    // A string checked by `valid` (is_token...), which `what` describes for the error.
    void read_checked(std::string_view key, std::string& out, bool (*valid)(std::string_view),
                      std::string_view what) {
        if (auto value = read_string(key)) {
            if (!valid(*value)) {
                error_at(*table_.get(key), qualified(key) + " must be " + std::string(what));
            } else {
                out = *value;
            }
        }
    }

    std::optional<std::string> read_string(std::string_view key) {
        const toml::node* node = take(key);
        if (node == nullptr) {
            return std::nullopt;
        }
        auto value = node->value_exact<std::string>();
        if (!value) {
            error_at(*node, qualified(key) + " must be a string");
        }
        return value;
    }

    // `out` keeps its default when the key is absent.
    void read_string(std::string_view key, std::string& out) {
        if (auto value = read_string(key)) {
            out = std::move(*value);
        }
    }

    // A list of strings; each is handed to `add`, which says why it is refused (or "").
    template <class Add>
    void read_string_list(std::string_view key, std::string_view what, Add add) {
        const toml::node* node = take(key);
        if (node == nullptr) {
            return;
        }
        const toml::array* list = node->as_array();
        if (list == nullptr || list->empty()) {
            error_at(*node, qualified(key) + " must be a non-empty list of " + std::string(what));
            return;
        }
        for (const toml::node& item : *list) {
            auto text = item.value_exact<std::string>();
            const std::string why = text ? add(*text) : "must be a string";
            if (!why.empty()) {
                error_at(item, qualified(key) + ": '" + text.value_or("") + "' " + why);
            }
        }
    }

    // A list of networks like ["10.0.0.0/8", "::1"].
    void read_networks(std::string_view key, NetworkSet& out) {
        const toml::node* node = take(key);
        if (node == nullptr) {
            return;
        }
        const toml::array* list = node->as_array();
        if (list == nullptr) {
            error_at(*node, qualified(key) + " must be a list like [\"10.0.0.0/8\"]");
            return;
        }
        for (const toml::node& item : *list) {
            auto text = item.value_exact<std::string>();
            std::string why = "a network is a string like \"10.0.0.0/8\"";
            if (!text || !out.add(*text, why)) {
                error_at(item, qualified(key) + ": " + why);
            }
        }
    }

    void read_address(std::string_view key, HostPort& out) {
        const toml::node* node = take(key);
        if (node == nullptr) {
            return;
        }
        resolve_into(*node, key, out);
    }

    bool resolve_into(const toml::node& node, std::string_view key, HostPort& out) {
        auto text = node.value_exact<std::string>();
        if (!text) {
            error_at(node, qualified(key) + " must be a string \"HOST:PORT\"");
            return false;
        }
        std::string why;
        auto resolved = resolve_host_port(*text, why);
        if (!resolved) {
            error_at(node, "bad address '" + *text + "' for " + qualified(key) + ": " + why);
            return false;
        }
        out = *resolved;
        return true;
    }

    std::optional<TableReader> sub_table(std::string_view key) {
        const toml::node* node = take(key);
        if (node == nullptr) {
            return std::nullopt;
        }
        if (!node->is_table()) {
            error_at(*node, qualified(key) + " must be a table");
            return std::nullopt;
        }
        return TableReader(*node->as_table(), qualified(key), file_, errors_);
    }

    // Reports every key that no reader asked for: a typo is an error, never a silent default.
    void reject_unknown_keys() {
        for (const auto& [key, node] : table_) {
            if (!used_.contains(std::string(key.str()))) {
                error_at(node, "unknown key '" + std::string(key.str()) + "'" +
                                   (name_.empty() ? std::string{} : " in [" + name_ + "]"));
            }
        }
    }

    std::string qualified(std::string_view key) const {
        return name_.empty() ? std::string(key) : name_ + "." + std::string(key);
    }

    const toml::table& table() const { return table_; }
    const std::string& name() const { return name_; }
    const std::string& file() const { return file_; }
    std::vector<ConfigError>& errors() { return errors_; }

  private:
    const toml::table& table_;
    std::string name_;
    std::string file_;
    std::vector<ConfigError>& errors_;
    std::set<std::string> used_;
};

void read_weights(TableReader& routing, Config& config) {
    std::optional<std::uint32_t> blue;
    std::optional<std::uint32_t> green;
    auto read_one = [&routing](std::string_view key) -> std::optional<std::uint32_t> {
        const toml::node* node = routing.take(key);
        if (node == nullptr) {
            return std::nullopt;
        }
        auto percent = node->value<double>();
        auto bp = percent ? percent_to_basis_points(*percent) : std::nullopt;
        if (!bp) {
            routing.error_at(*node, routing.qualified(key) +
                                        " must be a percentage from 0 to 100 with at most two "
                                        "decimals");
        }
        return bp;
    };
    blue = read_one("blue");
    green = read_one("green");
    if (blue && green) {
        if (*blue + *green != 10000) {
            routing.error_at(*routing.table().get("blue"),
                             "routing.blue and routing.green must sum to 100");
            return;
        }
        config.blue_weight_bp = *blue;
        config.green_weight_bp = *green;
    } else if (blue) {
        config.blue_weight_bp = *blue;
        config.green_weight_bp = 10000 - *blue;
    } else if (green) {
        config.green_weight_bp = *green;
        config.blue_weight_bp = 10000 - *green;
    }
}

void read_health(TableReader& health, HealthCheckConfig& out) {
    health.read_bool("enabled", out.enabled);
    if (auto type = health.read_string("type")) {
        if (*type == "http" || *type == "tcp") {
            out.tcp_only = *type == "tcp";
        } else {
            health.error_at(*health.table().get("type"),
                            health.qualified("type") + " must be \"http\" or \"tcp\"");
        }
    }
    health.read_checked("method", out.method, is_token, "a method like \"GET\"");
    health.read_checked("path", out.path, is_origin_path,
                        "a path that starts with / (no blank or control character)");
    health.read_checked("host", out.host, is_field_value, "a header value (no control character)");
    if (const toml::node* expect = health.take("expect")) {
        const toml::array* list = expect->as_array();
        std::vector<unsigned> codes;
        bool ok = list != nullptr && !list->empty();
        if (list != nullptr) {
            for (const toml::node& code : *list) {
                auto v = code.value_exact<std::int64_t>();
                ok = ok && v && *v >= 100 && *v <= 599;
                if (v) {
                    codes.push_back(static_cast<unsigned>(*v));
                }
            }
        }
        if (!ok) {
            health.error_at(*expect,
                            health.qualified("expect") +
                                " must be a non-empty list of status codes, e.g. [200, 204]");
        } else {
            out.expect = codes;
        }
    }
    health.read_duration("interval", out.interval, TableReader::Zero::refused);
    health.read_duration("fast_interval", out.fast_interval, TableReader::Zero::refused);
    health.read_duration("timeout", out.timeout, TableReader::Zero::refused);
    health.read_duration("jitter", out.jitter);
    health.read_integer("rise", out.rise, 1, 100);
    health.read_integer("fall", out.fall, 1, 100);
    if (out.interval.count() < 10 || out.fast_interval.count() < 10 || out.timeout.count() < 10) {
        health.error_at(health.table(), health.qualified("interval") +
                                            ", fast_interval and timeout must be at least 10ms");
    }
    health.reject_unknown_keys();
}

// `ciphers` (TLS 1.2: OpenSSL checks the list when the context is built) and `ciphersuites`
// (TLS 1.3, each name checked: OpenSSL skips an unknown one silently beside a known one).
void read_cipher_lists(TableReader& tls, std::string& ciphers, std::string& ciphersuites) {
    if (auto list = tls.read_string("ciphers")) {
        ciphers = *list;
    }
    if (auto suites = tls.read_string("ciphersuites")) {
        if (const std::string why = tls13_suites_problem(*suites); !why.empty()) {
            tls.error_at(*tls.table().get("ciphersuites"),
                         tls.qualified("ciphersuites") + " " + why);
        } else {
            ciphersuites = *suites;
        }
    }
}

// A TLS client's settings ([pools.X.tls], [fleet.tls]): reads the CA and client certificate
// files now, so a bad file is a config error (at --check and at reload) rather than failed
// handshakes later.
std::shared_ptr<const BackendTlsContext> read_client_tls(TableReader& tls,
                                                         BackendTlsSettings& settings) {
    tls.read_bool("verify", settings.verify);
    if (auto ca = tls.read_string("ca_file")) {
        settings.ca_file = *ca;
    }
    if (auto name = tls.read_string("server_name")) {
        settings.server_name = *name;
    }
    auto cert = tls.read_string("cert");
    auto key = tls.read_string("key");
    if (cert.has_value() != key.has_value()) {
        tls.error_at(tls.table(), tls.qualified("cert") +
                                      " and key go together: a client certificate needs both "
                                      "(PEM file paths)");
    } else if (cert) {
        settings.client_certificate = CertificateFiles{*cert, *key};
    }
    if (auto version = tls.read_string("min_version")) {
        if (*version != "1.2" && *version != "1.3") {
            tls.error_at(*tls.table().get("min_version"),
                         tls.qualified("min_version") + " must be \"1.2\" or \"1.3\"");
        } else {
            settings.min_version = *version;
        }
    }
    read_cipher_lists(tls, settings.ciphers, settings.ciphersuites);
    if (!settings.verify && !settings.ca_file.empty()) {
        tls.error_at(*tls.table().get("ca_file"),
                     tls.qualified("ca_file") +
                         " is set but verify = false: nothing would be "
                         "checked against it");
    }
    tls.reject_unknown_keys();
    std::string why;
    auto context = BackendTlsContext::create(settings, why);
    if (!context) {
        tls.error_at(tls.table(), tls.name() + ": " + why);
    }
    return context;
}

void read_backend_tls(TableReader& tls, PoolConfig& pool) {
    BackendTlsSettings settings;
    pool.tls_context = read_client_tls(tls, settings);
    pool.tls = std::move(settings);
}

void read_pool(TableReader& pools, std::string_view colour, PoolConfig& pool) {
    auto reader = pools.sub_table(colour);
    if (!reader) {
        return;
    }
    if (auto health = reader->sub_table("health")) {
        read_health(*health, pool.health);
    }
    if (auto tls = reader->sub_table("tls")) {
        read_backend_tls(*tls, pool);
    }
    reader->read_bool("send_proxy_protocol", pool.send_proxy_protocol);
    const toml::node* list = reader->take("backends");
    if (list == nullptr) {
        reader->error_at(reader->table(), "pools." + std::string(colour) + ".backends is missing");
    } else if (!list->is_array()) {
        reader->error_at(*list, "pools." + std::string(colour) + ".backends must be an array");
    } else {
        std::size_t index = 0;
        for (const toml::node& item : *list->as_array()) {
            ++index;
            BackendConfig backend;
            if (item.is_string()) {
                backend.name = std::string(colour) + "-" + std::to_string(index);
                if (reader->resolve_into(item, "backends", backend.address)) {
                    pool.backends.push_back(std::move(backend));
                }
            } else if (item.is_table()) {
                TableReader entry(*item.as_table(), "pools." + std::string(colour) + ".backends",
                                  reader->file(), reader->errors());
                backend.name = entry.read_string("name").value_or(std::string(colour) + "-" +
                                                                  std::to_string(index));
                const toml::node* address = entry.take("address");
                entry.reject_unknown_keys();
                if (address == nullptr) {
                    entry.error_at(item, "backend '" + backend.name + "' has no address");
                } else if (entry.resolve_into(*address, "address", backend.address)) {
                    pool.backends.push_back(std::move(backend));
                }
            } else {
                reader->error_at(item,
                                 "a backend is \"HOST:PORT\" or { name = ..., address = ... }");
            }
        }
    }
    reader->reject_unknown_keys();
}

void read_members(TableReader& roles, std::string_view role, RoleMembers& members) {
    auto reader = roles.sub_table(role);
    if (!reader) {
        return;
    }
    if (const toml::node* uids = reader->take("uids")) {
        const toml::array* list = uids->as_array();
        if (list == nullptr) {
            reader->error_at(*uids, reader->qualified("uids") + " must be an array of integers");
        } else {
            for (const toml::node& uid : *list) {
                auto value = uid.value_exact<std::int64_t>();
                if (!value || *value < 0 || *value > 0xFFFFFFFFll) {
                    reader->error_at(uid, "a uid is an integer from 0 to 4294967295");
                } else {
                    members.uids.push_back(static_cast<std::uint32_t>(*value));
                }
            }
        }
    }
    if (const toml::node* groups = reader->take("groups")) {
        const toml::array* list = groups->as_array();
        if (list == nullptr) {
            reader->error_at(*groups,
                             reader->qualified("groups") + " must be an array of group names");
        } else {
            for (const toml::node& group : *list) {
                auto value = group.value_exact<std::string>();
                if (!value || value->empty()) {
                    reader->error_at(group, "a group is a non-empty name");
                } else {
                    members.groups.push_back(*value);
                }
            }
        }
    }
    reader->reject_unknown_keys();
}

void read_control(TableReader& control, ControlConfig& out) {
    if (auto socket = control.read_string("socket")) {
        out.socket = *socket;
    }
    if (const toml::node* mode = control.take("socket_mode")) {
        auto text = mode->value_exact<std::string>();
        std::uint32_t value = 0;
        bool ok = text && !text->empty() && text->size() <= 4;
        for (char c : text.value_or("")) {
            ok = ok && c >= '0' && c <= '7';
            value = value * 8 + static_cast<std::uint32_t>(c - '0');
        }
        if (!ok) {
            control.error_at(*mode, "control.socket_mode must be an octal string like \"0660\"");
        } else {
            out.socket_mode = value;
        }
    }
    control.read_string("socket_group", out.socket_group);
    control.read_string("state_file", out.state_file);
    control.read_string("audit_log", out.audit_log);
    control.read_integer("max_line", out.max_line, 256, 16 << 20);
    control.read_integer("max_connections", out.max_connections, 1, 100000);
    control.read_integer("max_watchers", out.max_watchers, 0, 100000);
    control.read_duration("idle_timeout", out.idle_timeout, TableReader::Zero::refused);
    control.read_integer("audit_log_max_size", out.audit_log_max_size, 4096, 1ull << 40);
    control.read_integer("audit_log_keep", out.audit_log_keep, 0, 1000);
    control.read_integer("audit_command_max", out.audit_command_max, 64, 1 << 20);
    control.read_duration("audit_log_wait", out.audit_log_wait, TableReader::Zero::refused);
    control.read_integer("audit_refusals_per_second", out.audit_refusals_per_second, 1, 100000);
    control.read_duration("disk_timeout", out.disk_timeout, TableReader::Zero::refused);
    if (out.disk_timeout < std::chrono::milliseconds(100)) {
        // Shorter than a busy disk's fsync: every ordinary change would be refused.
        control.error_at(*control.table().get("disk_timeout"),
                         "control.disk_timeout must be at least \"100ms\"");
    }
    if (auto role = control.read_string("default_role")) {
        if (*role == "none") {
            out.default_role = Role::none;
        } else if (*role == "read") {
            out.default_role = Role::read;
        } else {
            control.error_at(*control.table().get("default_role"),
                             "control.default_role must be \"none\" or \"read\"");
        }
    }
    if (auto roles = control.sub_table("roles")) {
        read_members(*roles, "admin", out.admin);
        read_members(*roles, "operate", out.operate);
        read_members(*roles, "read", out.read);
        roles->reject_unknown_keys();
    }
    control.reject_unknown_keys();
}

// [listener.tls]: reads the settings and the certificate files now, so a bad file is a config
// error (at --check and at reload) rather than a failed handshake later.
void read_tls(TableReader& tls, const toml::node& where, ListenerConfig& listener) {
    TlsSettings settings;
    if (const toml::node* list = tls.take("certificates")) {
        const toml::array* array = list->as_array();
        if (array == nullptr || array->empty()) {
            tls.error_at(*list,
                         "listener.tls.certificates must be a non-empty list like "
                         "[{ cert = \"site.pem\", key = \"site.key\" }]");
        } else {
            for (const toml::node& item : *array) {
                if (!item.is_table()) {
                    tls.error_at(item,
                                 "a certificate is a table { cert = \"...\", key = \"...\" }");
                    continue;
                }
                TableReader entry(*item.as_table(), "listener.tls.certificates", tls.file(),
                                  tls.errors());
                CertificateFiles files;
                auto cert = entry.read_string("cert");
                auto key = entry.read_string("key");
                if (!cert || !key) {
                    entry.error_at(item, "a certificate needs both cert and key (PEM file paths)");
                } else {
                    files.cert = *cert;
                    files.key = *key;
                    settings.certificates.push_back(std::move(files));
                }
                entry.reject_unknown_keys();
            }
        }
    } else {
        tls.error_at(where,
                     "listener.tls needs certificates = [{ cert = \"...\", key = \"...\" }]");
    }
    if (auto version = tls.read_string("min_version")) {
        if (*version != "1.2" && *version != "1.3") {
            tls.error_at(*tls.table().get("min_version"),
                         "listener.tls.min_version must be \"1.2\" or \"1.3\" (older versions are "
                         "never offered)");
        } else {
            settings.min_version = *version;
        }
    }
    read_cipher_lists(tls, settings.ciphers, settings.ciphersuites);
    tls.read_bool("prefer_server_ciphers", settings.prefer_server_ciphers);
    tls.read_bool("session_tickets", settings.session_tickets);
    tls.read_integer("session_cache", settings.session_cache, 0, 10'000'000);
    tls.read_duration("session_lifetime", settings.session_lifetime);
    // OpenSSL counts it in seconds; RFC 8446 4.6.1: a ticket lives a week at most.
    if (settings.session_lifetime < std::chrono::seconds(1) ||
        settings.session_lifetime > std::chrono::hours(24 * 7) ||
        settings.session_lifetime.count() % 1000 != 0) {
        tls.error_at(*tls.table().get("session_lifetime"),
                     "listener.tls.session_lifetime must be whole seconds from 1s to 168h (a "
                     "week: RFC 8446 4.6.1)");
    }
    tls.reject_unknown_keys();
    if (settings.certificates.empty()) {
        return;
    }
    std::string why;
    listener.tls_context = TlsServerContext::create(settings, why);
    if (!listener.tls_context) {
        tls.error_at(where, why);
    }
    listener.tls = std::move(settings);
}

void read_canary(TableReader& c, CanaryConfig& out) {
    c.read_bool("enabled", out.enabled);
    c.read_duration("interval", out.interval, TableReader::Zero::refused);
    std::vector<Duration> windows;
    c.read_string_list("windows", "durations like \"1s\"", [&](const std::string& text) {
        const auto parsed = parse_duration(text);
        if (!parsed || *parsed < out.interval) {
            return std::string("must be a duration no shorter than interval");
        }
        windows.push_back(*parsed);
        return std::string();
    });
    if (!windows.empty()) {
        out.windows = windows;
    }
    FailureKinds errors{};
    bool listed = false;
    c.read_string_list("errors", "failure kinds", [&](const std::string& text) {
        const auto kind = failure_kind_from(text);
        if (!kind) {
            return std::string("is not one of \"5xx\", \"reset\", \"timeout\", \"connect\"");
        }
        errors[failure_index(*kind)] = listed = true;
        return std::string();
    });
    if (listed) {
        out.errors = errors;
    }
    c.read_integer("min_requests", out.min_requests, 1, 10000000);
    c.read_fraction("error_margin", out.error_margin, 0.0, 1.0);
    c.read_fraction("error_ratio", out.error_ratio, 1.0, 1000.0);
    c.read_fraction("confidence", out.confidence, 0.0, 10.0);
    c.read_fraction("latency_quantile", out.latency_quantile, 0.5, 0.999);
    c.read_fraction("latency_ratio", out.latency_ratio, 1.0, 1000.0);
    c.read_duration("latency_margin", out.latency_margin);
    c.read_integer("latency_min_requests", out.latency_min_requests, 1, 10000000);
    c.read_duration("baseline_memory", out.baseline_memory);
    c.read_fraction("assumed_error_rate", out.assumed_error_rate, 0.0001, 1.0);
    c.reject_unknown_keys();
}

// "http://127.0.0.1:2379,https://10.0.0.2:2379": etcd client URLs, one scheme for all.
void parse_etcd_endpoints(std::string_view list, FleetConfig& fleet,
                          std::vector<std::string>& errors) {
    fleet.endpoints.clear();
    std::optional<bool> tls;
    std::size_t start = 0;
    while (start <= list.size()) {
        std::size_t comma = list.find(',', start);
        std::string_view item = list.substr(
            start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
        start = comma == std::string_view::npos ? list.size() + 1 : comma + 1;
        bool https = false;
        if (item.starts_with("https://")) {
            https = true;
            item.remove_prefix(8);
        } else if (item.starts_with("http://")) {
            item.remove_prefix(7);
        } else if (item.find("://") != std::string_view::npos) {
            errors.push_back("etcd endpoint '" + std::string(item) +
                             "': the scheme must be http:// or https://");
            return;
        }
        if (!item.empty() && item.back() == '/') {
            item.remove_suffix(1);
        }
        if (tls && *tls != https) {
            errors.push_back("etcd endpoints must all be http:// or all https://");
            return;
        }
        tls = https;
        std::string why;
        auto address = resolve_host_port(item, why);
        if (!address) {
            errors.push_back("bad etcd endpoint '" + std::string(item) + "': " + why);
            continue;
        }
        fleet.endpoints.push_back(*address);
    }
    fleet.etcd_tls = tls.value_or(false);
}

// [fleet]: etcd endpoints, the fleet's name, this instance's, and the fleet's timings.
void read_fleet(TableReader& fleet, FleetConfig& out) {
    if (const toml::node* node = fleet.take("endpoints")) {
        const toml::array* list = node->as_array();
        std::string joined;
        bool ok = list != nullptr && !list->empty();
        for (std::size_t i = 0; ok && i < list->size(); ++i) {
            auto text = list->get(i)->value_exact<std::string>();
            ok = text.has_value();
            joined += (i > 0 ? "," : "") + text.value_or("");
        }
        std::vector<std::string> errors;
        if (ok) {
            parse_etcd_endpoints(joined, out, errors);
        }
        if (!ok) {
            errors.push_back(
                "must be a non-empty array of etcd URLs like \"http://127.0.0.1:2379\"");
        }
        for (const auto& e : errors) {
            fleet.error_at(*node, "fleet.endpoints: " + e);
        }
    }
    fleet.read_string("name", out.name);
    fleet.read_string("instance", out.instance);
    fleet.read_string("prefix", out.prefix);
    fleet.read_duration("request_timeout", out.request_timeout, TableReader::Zero::refused);
    fleet.read_duration("lease_ttl", out.lease_ttl, TableReader::Zero::refused);
    fleet.read_duration("apply_timeout", out.apply_timeout, TableReader::Zero::refused);
    fleet.read_duration("retry_min", out.retry_min, TableReader::Zero::refused);
    fleet.read_duration("retry_max", out.retry_max, TableReader::Zero::refused);
    if (auto tls = fleet.sub_table("tls")) {
        BackendTlsSettings settings;
        out.tls_context = read_client_tls(*tls, settings);
        out.tls = std::move(settings);
    }
    fleet.reject_unknown_keys();
}

// A list of protocol names, possibly empty (no upgrades at all).
void read_upgrade_protocols(TableReader& server, std::vector<std::string>& out) {
    const toml::node* node = server.table().get("upgrade_protocols");
    if (node != nullptr && node->as_array() != nullptr && node->as_array()->empty()) {
        server.take("upgrade_protocols");
        out.clear();
        return;
    }
    std::vector<std::string> names;
    server.read_string_list("upgrade_protocols", "protocol names like \"websocket\"",
                            [&](const std::string& name) -> std::string {
                                if (!is_token(name)) {
                                    return "is not a protocol name (a token, without /version)";
                                }
                                names.push_back(name);
                                return {};
                            });
    if (node != nullptr) {
        out = std::move(names);
    }
}

void read_server(TableReader& server, Config& config) {
    server.read_integer("workers", config.workers, 0, 1024);
    server.read_integer("buffer_size", config.limits.buffer_size, 1024, 16 * 1024 * 1024);
    server.read_integer("bulk_buffer_size", config.limits.bulk_buffer_size, 1024, 1024 * 1024);
    server.read_integer("bulk_readers", config.limits.bulk_readers, 0, 1024 * 1024);
    server.read_integer("body_burst", config.limits.body_burst, 1, 1024 * 1024 * 1024);
    server.read_integer("handshake_share", config.limits.handshake_share, 1, 100);
    server.read_integer("splice_min_body", config.limits.splice_min_body, 0,
                        std::numeric_limits<std::int64_t>::max());
    server.read_integer("splice_pipes", config.limits.splice_pipes, 0, 1000000);
    server.read_integer("splice_pipe_size", config.limits.splice_pipe_size, 4096,
                        1024 * 1024 * 1024);
    if (auto admin = server.read_string("admin_listen")) {
        config.admin_listen = *admin;
    }
    server.read_integer("admin_max_connections", config.admin_max_connections, 1, 100000);
    server.read_checked(
        "served_by_header", config.served_by_header,
        [](std::string_view s) { return s.empty() || is_token(s); },
        "a header name like \"X-Served-By\" (or empty: off)");
    server.read_checked(
        "via", config.via,
        [](std::string_view s) {
            return s.empty() || (is_token(s) && s.size() <= Config::max_via_name);
        },
        "a name like \"bgproxy\" (a token of at most 64 characters, or empty: no Via)");
    server.read_bool("metrics", config.metrics);
    server.read_bool("abort_on_client_fin", config.abort_on_client_fin);
    server.read_networks("trusted_proxies", config.trusted_proxies);
    read_upgrade_protocols(server, config.upgrade_protocols);
    server.reject_unknown_keys();
}

void read_timeouts(TableReader& t, Timeouts& out) {
    t.read_duration("client_header", out.client_header, TableReader::Zero::refused);
    t.read_duration("client_keepalive", out.client_keepalive, TableReader::Zero::refused);
    t.read_duration("client_park_after", out.client_park_after);
    t.read_duration("client_body", out.client_body, TableReader::Zero::refused);
    t.read_duration("client_write", out.client_write, TableReader::Zero::refused);
    t.read_duration("upstream_connect", out.upstream_connect, TableReader::Zero::refused);
    t.read_duration("upstream_response", out.upstream_response, TableReader::Zero::refused);
    t.read_duration("upstream_try", out.upstream_try);  // 0: no per-try limit
    t.read_duration("tunnel_idle", out.tunnel_idle, TableReader::Zero::refused);
    t.read_duration("tunnel_half_closed", out.tunnel_half_closed, TableReader::Zero::refused);
    t.read_duration("client_linger", out.client_linger);
    t.read_duration("shutdown_grace", out.shutdown_grace);
    t.read_duration("shutdown_ready_delay", out.shutdown_ready_delay);
    t.read_duration("tls_handshake", out.tls_handshake, TableReader::Zero::refused);
    t.read_duration("accept_pause", out.accept_pause, TableReader::Zero::refused);
    t.read_duration("client_close_check", out.client_close_check);
    t.reject_unknown_keys();
}

void read_limits(TableReader& l, Limits& out) {
    l.read_integer("max_request_line", out.max_request_line, 256, 1 << 20);
    l.read_integer("max_request_header", out.max_request_header, 1024, 65535);
    l.read_integer("max_request_body", out.max_request_body, 0, std::int64_t{1} << 50);
    l.read_integer("max_response_header", out.max_response_header, 1024, 65535);
    l.read_integer("max_header_fields", out.max_header_fields, 1, 10000);
    if (auto action = l.read_string("headers_with_underscores")) {
        if (*action == "allow" || *action == "drop" || *action == "reject") {
            out.headers_with_underscores = *action == "allow"  ? UnderscoreFields::allow
                                           : *action == "drop" ? UnderscoreFields::drop
                                                               : UnderscoreFields::reject;
        } else {
            l.error_at(*l.table().get("headers_with_underscores"),
                       "limits.headers_with_underscores is \"allow\", \"drop\" or \"reject\"");
        }
    }
    l.read_integer("spare_exchanges", out.spare_exchanges, 0, 100000);
    l.read_integer("heap_trim_after", out.heap_trim_after, 0, std::int64_t{1} << 40);
    l.read_duration("heap_trim_delay", out.heap_trim_delay);
    l.read_integer("max_field_size", out.max_field_size, 64, 65535);
    l.read_integer("max_chunk_line", out.max_chunk_line, 16, 65535);
    l.read_integer("max_trailer", out.max_trailer, 0, 65535);
    l.read_integer("max_interim_responses", out.max_interim_responses, 0, 1000);
    l.read_integer("min_request_body_rate", out.min_request_body_rate, 0, std::int64_t{1} << 40);
    l.read_integer("max_connections", out.max_connections, 1, 10000000);
    l.read_duration("evict_opening_after", out.evict_opening_after);
    l.read_integer("max_requests_per_connection", out.max_requests_per_connection, 0, 1u << 31);
    l.reject_unknown_keys();
}

void read_upstream(TableReader& u, UpstreamSettings& out) {
    if (auto balance = u.read_string("balance")) {
        if (*balance == "round_robin") {
            out.balance = BalancePolicy::round_robin;
        } else if (*balance == "least_request") {
            out.balance = BalancePolicy::least_request;
        } else {
            u.error_at(*u.table().get("balance"),
                       "upstream.balance must be \"round_robin\" or \"least_request\"");
        }
    }
    u.read_integer("max_idle_per_backend", out.max_idle_per_backend, 0, 100000);
    u.read_duration("idle_timeout", out.idle_timeout, TableReader::Zero::refused);
    u.read_duration("recheck_after", out.recheck_after);
    u.read_duration("watch_after", out.watch_after);
    u.read_integer("connect_attempts", out.connect_attempts, 1, 16);
    u.reject_unknown_keys();
}

// One [[gate]] smoke check.
SmokeCheck read_gate_check(TableReader& entry, const toml::node& item) {
    SmokeCheck check;
    check.name = entry.read_string("name").value_or("");
    if (check.name.empty()) {
        entry.error_at(item, "a [[gate]] check needs a name (it is named when it fails)");
    }
    entry.read_checked("method", check.method, is_token, "a method like \"GET\"");
    entry.read_checked("path", check.path, is_origin_path,
                       "a path that starts with / (no blank or control character)");
    if (auto headers = entry.sub_table("headers")) {
        for (const auto& [name, value] : headers->table()) {
            auto text = value.value_exact<std::string>();
            headers->take(name.str());
            if (!text) {
                headers->error_at(value, "gate header values are strings");
            } else if (!is_token(name.str())) {
                headers->error_at(value, "gate header name '" + std::string(name.str()) +
                                             "' is not a valid field name");
            } else if (!is_field_value(*text)) {
                headers->error_at(value, "gate header " + std::string(name.str()) +
                                             " has a control character in its value");
            } else {
                check.headers.emplace_back(std::string(name.str()), *text);
            }
        }
    }
    if (const toml::node* expect = entry.take("expect")) {
        // Status codes as in health.expect: every item one, none dropped.
        std::vector<unsigned> codes;
        bool ok = true;
        const auto add = [&codes, &ok](const toml::node& code) {
            const auto v = code.value_exact<std::int64_t>();
            ok = ok && v && *v >= 100 && *v <= 599;
            if (ok) {
                codes.push_back(static_cast<unsigned>(*v));
            }
        };
        if (const toml::array* list = expect->as_array()) {
            for (const toml::node& code : *list) {
                add(code);
            }
        } else {
            add(*expect);
        }
        if (!ok || codes.empty()) {
            entry.error_at(*expect,
                           "gate.expect is a status code (100 to 599) or a list of "
                           "them");
        } else {
            check.expect = std::move(codes);
        }
    }
    if (auto body = entry.read_string("body_contains")) {
        check.body_contains = *body;
        if (check.method == "HEAD") {
            // The answer to a HEAD has no body: the check would wait for one until its timeout
            // and fail a healthy release.
            entry.error_at(*entry.table().get("body_contains"),
                           "gate check '" + check.name +
                               "': body_contains needs a method whose answer has a body (the "
                               "answer to a HEAD has none): use GET, or drop body_contains");
        }
    }
    entry.read_duration("timeout", check.timeout, TableReader::Zero::refused);
    entry.reject_unknown_keys();
    return check;
}

void read_outlier(TableReader& o, OutlierConfig& out) {
    o.read_integer("consecutive_failures", out.consecutive_failures, 0, 1000);
    o.read_fraction("error_rate", out.error_rate, 0.0, 1.0);
    o.read_duration("window", out.window, TableReader::Zero::refused);
    o.read_integer("min_requests", out.min_requests, 1, 1000000);
    o.read_bool("count_5xx", out.count_5xx);
    o.read_duration("base_ejection", out.base_ejection, TableReader::Zero::refused);
    o.read_duration("max_ejection", out.max_ejection, TableReader::Zero::refused);
    o.read_fraction("panic_threshold", out.panic_threshold, 0.0, 1.0);
    o.read_duration("stalled_after", out.stalled_after);  // 0: off
    o.read_duration("stalled_alone_after", out.stalled_alone_after, TableReader::Zero::refused);
    o.read_duration("slow_answer_memory", out.slow_answer_memory);  // 0: no memory
    // Retired: an ignored key would be a silent default, so it is refused with what replaced it.
    if (const toml::node* node = o.take("stall_ratio")) {
        o.error_at(*node,
                   "outlier.stall_ratio is retired: remove it (a backend is stalled once its "
                   "requests outwait what its colour's answers took, see slow_answer_memory)");
    }
    o.read_duration("colour_stalled_after", out.colour_stalled_after);  // 0: off
    if (out.colour_stalled_after > out.window) {
        // Judged on the window's samples: a longer stall could never be seen. Asked for, that
        // is an error; the default follows a shorter window instead of going quietly off.
        if (const toml::node* node = o.take("colour_stalled_after")) {
            o.error_at(*node, "outlier.colour_stalled_after must not exceed outlier.window");
        } else {
            out.colour_stalled_after = out.window;
        }
    }
    o.reject_unknown_keys();
}

void read_sticky(TableReader& st, StickyConfig& out) {
    if (auto cookie = st.read_string("cookie")) {
        const bool token = std::all_of(cookie->begin(), cookie->end(), [](char c) {
            return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
        });
        if (!token) {
            st.error_at(*st.table().get("cookie"),
                        "sticky.cookie must be a cookie name (letters, digits, _ - .)");
        } else {
            out.cookie = *cookie;
        }
    }
    st.read_duration("max_age", out.max_age);
    st.reject_unknown_keys();
}

void read_rollout(TableReader& r, RolloutConfig& out) {
    r.read_fraction("min_healthy", out.min_healthy, 0.0, 10000.0);
    if (out.min_healthy > 1 &&
        out.min_healthy != static_cast<double>(static_cast<long>(out.min_healthy))) {
        r.error_at(*r.table().get("min_healthy"),
                   "rollout.min_healthy is a whole count (1, 2, ...) or a fraction below 1 (0.5)");
    }
    if (auto policy = r.read_string("stable_failure")) {
        if (*policy == "failover") {
            out.stable_failure = StableFailurePolicy::failover;
        } else if (*policy == "hold") {
            out.stable_failure = StableFailurePolicy::hold;
        } else {
            r.error_at(*r.table().get("stable_failure"),
                       "rollout.stable_failure must be \"failover\" or \"hold\"");
        }
    }
    if (auto policy = r.read_string("failback")) {
        if (*policy == "auto" || *policy == "manual") {
            out.failback_auto = *policy == "auto";
        } else {
            r.error_at(*r.table().get("failback"),
                       "rollout.failback must be \"auto\" or \"manual\"");
        }
    }
    r.read_duration("failback_hold", out.failback_hold);
    r.read_duration("tunnel_drain", out.tunnel_drain);
    r.read_duration("tunnel_drain_revert", out.tunnel_drain_revert);
    r.reject_unknown_keys();
}

// One [[listener]].
ListenerConfig read_listener(TableReader& entry, const toml::node& item) {
    ListenerConfig listener;
    if (entry.table().get("address") == nullptr) {
        entry.error_at(item, "a [[listener]] needs an address");
    }
    entry.read_address("address", listener.address);
    entry.read_bool("proxy_protocol", listener.proxy_protocol);
    entry.read_networks("proxy_protocol_from", listener.proxy_protocol_from);
    if (listener.proxy_protocol && listener.proxy_protocol_from.empty()) {
        entry.error_at(item,
                       "listener.proxy_protocol needs proxy_protocol_from: the networks "
                       "of the load balancers allowed to send a PROXY header");
    }
    entry.read_integer("max_connections", listener.max_connections, 0, 10000000);
    entry.read_bool("smart_accept", listener.smart_accept);
    entry.read_bool("defer_accept", listener.defer_accept);
    entry.read_integer("send_buffer", listener.send_buffer, 0, 64 * 1024 * 1024);
    if (listener.send_buffer > 0 && listener.send_buffer < 4096) {
        entry.error_at(*entry.table().get("send_buffer"),
                       "listener.send_buffer must be 0 (the kernel's autotuning) or at least "
                       "4096 bytes");
    }
    if (auto tls = entry.sub_table("tls")) {
        read_tls(*tls, *entry.table().get("tls"), listener);
    }
    entry.reject_unknown_keys();
    return listener;
}

void read_pools(TableReader& pools, Config& config) {
    read_pool(pools, "blue", config.blue);
    read_pool(pools, "green", config.green);
    pools.reject_unknown_keys();
}

void read_retries(TableReader& r, RetryConfig& out) {
    r.read_integer("attempts", out.attempts, 0, 10);
    r.read_fraction("budget", out.budget, 0.0, 1.0);
    r.read_integer("min_budget", out.min_budget, 0, 100000);
    r.read_bool("cross_colour", out.cross_colour);
    r.reject_unknown_keys();
}

void read_access_log(TableReader& a, AccessLogConfig& out) {
    if (auto target = a.read_string("target")) {
        if (target->empty()) {
            a.error_at(*a.table().get("target"),
                       "access_log.target is \"off\", \"stdout\" or a file path");
        } else {
            out.target = *target;
        }
    }
    a.read_integer("queue", out.queue, 16, 1 << 22);
    a.reject_unknown_keys();
}

void read_preview(TableReader& p, PreviewConfig& out) {
    p.read_checked(
        "header", out.header, [](std::string_view s) { return s.empty() || is_token(s); },
        "a header name like \"X-BG-Color\" (or empty: off)");
    p.read_networks("allowed_networks", out.allowed);
    p.reject_unknown_keys();
}

// [[name]]: each table of the array to `read`.
template <class Read>
void read_table_array(TableReader& top, const char* name, const std::string& source,
                      std::vector<ConfigError>& errors, Read&& read) {
    const toml::node* array = top.take(name);
    if (array == nullptr) {
        return;
    }
    if (!array->is_array_of_tables()) {
        top.error_at(*array, std::string(name) + " must be an array of tables: [[" + name + "]]");
        return;
    }
    for (const toml::node& item : *array->as_array()) {
        TableReader entry(*item.as_table(), name, source, errors);
        read(entry, item);
    }
}

void read_document(const toml::table& root, Config& config, std::vector<ConfigError>& errors) {
    TableReader top(root, "", config.source, errors);

    if (auto server = top.sub_table("server")) {
        read_server(*server, config);
    }

    read_table_array(top, "listener", config.source, errors,
                     [&](TableReader& entry, const toml::node& item) {
                         config.listeners.push_back(read_listener(entry, item));
                     });

    if (auto t = top.sub_table("timeouts")) {
        read_timeouts(*t, config.timeouts);
    }

    if (auto l = top.sub_table("limits")) {
        read_limits(*l, config.limits);
    }

    if (auto u = top.sub_table("upstream")) {
        read_upstream(*u, config.upstream);
    }

    if (auto routing = top.sub_table("routing")) {
        read_weights(*routing, config);
        routing->reject_unknown_keys();
    }

    if (auto control = top.sub_table("control")) {
        read_control(*control, config.control);
    }

    if (auto fleet = top.sub_table("fleet")) {
        read_fleet(*fleet, config.fleet);
    }
    if (auto health = top.sub_table("health")) {
        read_health(*health, config.blue.health);
        config.green.health = config.blue.health;
    }

    if (auto o = top.sub_table("outlier")) {
        read_outlier(*o, config.outlier);
    }

    if (auto c = top.sub_table("canary")) {
        read_canary(*c, config.canary);
    }

    if (auto r = top.sub_table("retries")) {
        read_retries(*r, config.retries);
    }

    read_table_array(top, "gate", config.source, errors, [&](TableReader& entry, const auto& item) {
        config.gate.push_back(read_gate_check(entry, item));
    });

    if (auto a = top.sub_table("access_log")) {
        read_access_log(*a, config.access_log);
    }

    if (auto p = top.sub_table("preview")) {
        read_preview(*p, config.preview);
    }

    if (auto st = top.sub_table("sticky")) {
        read_sticky(*st, config.sticky);
    }

    if (auto r = top.sub_table("rollout")) {
        read_rollout(*r, config.rollout);
    }

    if (auto pools = top.sub_table("pools")) {
        read_pools(*pools, config);
    }

    top.reject_unknown_keys();
}

template <class Fail>
void validate_fleet(const FleetConfig& fleet, Fail&& fail) {
    if (fleet.name.empty() != fleet.endpoints.empty()) {
        fail(fleet.name.empty()
                 ? "fleet: etcd endpoints are set but no fleet name (fleet.name or --fleet)"
                 : "fleet: a fleet name is set but no etcd endpoints (fleet.endpoints or --etcd)");
    }
    auto key_safe = [](const std::string& s) {
        return s.find_first_of(" /\\\t\r\n") == std::string::npos;
    };
    if (!key_safe(fleet.name) || !key_safe(fleet.instance)) {
        fail("fleet: the fleet and instance names must not contain '/', '\\' or spaces");
    }
    if (!fleet.prefix.starts_with("/")) {
        fail("fleet.prefix must start with '/'");
    }
    if (fleet.tls && !fleet.etcd_tls) {
        fail("fleet.tls is set but the etcd endpoints are http://: use https:// URLs");
    }
    if (fleet.lease_ttl < std::chrono::seconds(2)) {
        fail("fleet.lease_ttl must be at least 2s (etcd's smallest lease)");
    }
    if (fleet.retry_min > fleet.retry_max) {
        fail("fleet.retry_min must not exceed fleet.retry_max");
    }
}

// Checks that span sections; done after file and flags are merged.
void validate(const Config& config, std::vector<ConfigError>& errors) {
    auto fail = [&](std::string message) {
        errors.push_back({config.source, 1, 1, std::move(message)});
    };
    if (config.listeners.empty()) {
        fail("no listener: add a [[listener]] with an address (or pass --listen)");
    }
    if (config.blue.backends.empty()) {
        fail("pool 'blue' is empty: [pools.blue] needs at least one backend (or pass --blue)");
    }
    if (config.green.backends.empty()) {
        fail("pool 'green' is empty: [pools.green] needs at least one backend (or pass --green)");
    }
    std::set<std::string> names;
    for (const PoolConfig* pool : {&config.blue, &config.green}) {
        for (const auto& backend : pool->backends) {
            if (backend.name.empty()) {
                fail("a backend name must not be empty");
            } else if (!names.insert(backend.name).second) {
                fail("backend name '" + backend.name + "' is used twice: names must be unique");
            } else if (!std::all_of(backend.name.begin(), backend.name.end(), [](char c) {
                           return std::isalnum(static_cast<unsigned char>(c)) || c == '-' ||
                                  c == '_' || c == '.';
                       })) {
                // Named in control commands (split on blanks), metrics labels and the
                // served-by header: letters, digits, '-', '_', '.' only.
                fail("backend name '" + backend.name +
                     "': use letters, digits, '-', '_' and '.' only");
            }
            if (backend.address.port == 0) {
                fail("backend '" + backend.name + "': port 0 is no address to connect to");
            }
        }
    }
    // Two listeners on one address would both bind (SO_REUSEPORT) and split its connections
    // at random; a backend at a listener's address would be the proxy itself, in a loop.
    std::set<std::pair<std::string, std::uint16_t>> bound;
    for (const auto& listener : config.listeners) {
        const auto& a = listener.address;
        if (a.port != 0 && !bound.insert({a.ip, a.port}).second) {
            fail("listener address " + a.text + " is used twice");
        }
    }
    for (const PoolConfig* pool : {&config.blue, &config.green}) {
        for (const auto& backend : pool->backends) {
            if (bound.contains({backend.address.ip, backend.address.port})) {
                fail("backend '" + backend.name + "' is at a listener's own address " +
                     backend.address.text + ": the proxy would send requests to itself");
            }
        }
    }
    if (!config.admin_listen.empty()) {
        std::string why;
        if (!resolve_host_port(config.admin_listen, why)) {
            fail("server.admin_listen: bad address '" + config.admin_listen + "': " + why);
        }
    }
    if (config.limits.max_request_line > config.limits.max_request_header) {
        fail("limits.max_request_line must not exceed limits.max_request_header");
    }
    if (config.control.max_watchers >= config.control.max_connections) {
        // Watch streams are never closed for being idle: a rollback needs a slot left.
        fail("control.max_watchers must be below control.max_connections");
    }
    validate_fleet(config.fleet, fail);
}

// The file's own checks, without the ones that span sections: flags may still fill those in.
ConfigResult parse_unvalidated(std::string_view toml_text, const std::string& source_name) {
    ConfigResult result;
    Config config;
    config.source = source_name;
    try {
        toml::table root = toml::parse(toml_text, source_name);
        read_document(root, config, result.errors);
    } catch (const toml::parse_error& e) {
        const auto& where = e.source().begin;
        result.errors.push_back(
            {source_name, where.line, where.column, std::string(e.description())});
        return result;
    }
    if (result.errors.empty()) {
        result.config = std::move(config);
    }
    return result;
}

}  // namespace

ConfigResult parse_config(std::string_view toml_text, const std::string& source_name) {
    return apply_overrides_to(parse_unvalidated(toml_text, source_name), ConfigOverrides{});
}

ConfigResult load_config_file(const std::string& path, const ConfigOverrides& flags) {
    errno = 0;
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        const int why = errno;
        ConfigResult result;
        result.errors.push_back(
            {path, 0, 0,
             "cannot read config file" +
                 (why != 0 ? ": " + std::string(std::strerror(why)) : std::string())});
        return result;
    }
    std::ostringstream text;
    text << in.rdbuf();
    return apply_overrides_to(parse_unvalidated(text.str(), path), flags);
}

namespace {

void parse_backend_list(const std::string& list, const char* colour, PoolConfig& pool,
                        std::vector<ConfigError>& errors) {
    pool.backends.clear();
    std::size_t start = 0;
    std::size_t index = 0;
    while (start <= list.size()) {
        auto comma = list.find(',', start);
        std::string item =
            list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        ++index;
        std::string why;
        auto address = resolve_host_port(item, why);
        if (!address) {
            errors.push_back(
                {"", 0, 0, std::string("--") + colour + ": bad address '" + item + "': " + why});
        } else {
            pool.backends.push_back({std::string(colour) + "-" + std::to_string(index), *address});
        }
        if (comma == std::string::npos) {
            break;
        }
        start = comma + 1;
    }
}

void parse_weight_flag(const std::string& text, Config& config, std::vector<ConfigError>& errors) {
    std::optional<std::uint32_t> blue;
    std::optional<std::uint32_t> green;
    std::istringstream in(text);
    std::string item;
    bool ok = true;
    while (std::getline(in, item, ',')) {
        auto eq = item.find('=');
        std::string name = item.substr(0, eq);
        double percent = 0;
        try {
            std::size_t used = 0;
            percent = std::stod(item.substr(eq == std::string::npos ? item.size() : eq + 1), &used);
            if (used != item.size() - eq - 1) {
                ok = false;
            }
        } catch (const std::exception&) {
            ok = false;
        }
        auto bp = percent_to_basis_points(percent);
        if (!bp || eq == std::string::npos) {
            ok = false;
        } else if (name == "blue") {
            blue = bp;
        } else if (name == "green") {
            green = bp;
        } else {
            ok = false;
        }
    }
    if (ok && blue && green && *blue + *green != 10000) {
        ok = false;
    }
    if (!ok || (!blue && !green)) {
        errors.push_back({"", 0, 0,
                          "--weights: expected blue=P,green=P with percentages summing to 100, "
                          "got '" +
                              text + "'"});
        return;
    }
    config.blue_weight_bp = blue ? *blue : 10000 - *green;
    config.green_weight_bp = 10000 - config.blue_weight_bp;
}

}  // namespace

ConfigResult apply_overrides_to(ConfigResult parsed, const ConfigOverrides& flags) {
    if (!parsed.config) {
        return parsed;
    }
    return apply_overrides(std::move(*parsed.config), flags);
}

ConfigResult apply_overrides(Config config, const ConfigOverrides& flags) {
    ConfigResult result;
    if (flags.listen) {
        std::string why;
        auto address = resolve_host_port(*flags.listen, why);
        if (!address) {
            result.errors.push_back(
                {"", 0, 0, "--listen: bad address '" + *flags.listen + "': " + why});
        } else {
            ListenerConfig listener;
            listener.address = *address;
            config.listeners = {std::move(listener)};
        }
    }
    if (flags.blue) {
        parse_backend_list(*flags.blue, "blue", config.blue, result.errors);
    }
    if (flags.green) {
        parse_backend_list(*flags.green, "green", config.green, result.errors);
    }
    if (flags.weights) {
        parse_weight_flag(*flags.weights, config, result.errors);
    }
    if (flags.workers) {
        config.workers = *flags.workers;
    }
    if (flags.admin) {
        config.admin_listen = *flags.admin;
    }
    if (flags.control_socket) {
        config.control.socket = *flags.control_socket;
    }
    if (flags.state_file) {
        config.control.state_file = *flags.state_file;
    }
    if (flags.metrics) {
        config.metrics = *flags.metrics;
    }
    if (flags.audit_log) {
        config.control.audit_log = *flags.audit_log;
    }
    if (flags.etcd) {
        std::vector<std::string> errors;
        parse_etcd_endpoints(*flags.etcd, config.fleet, errors);
        for (const auto& e : errors) {
            result.errors.push_back({"", 0, 0, "--etcd: " + e});
        }
    }
    if (flags.fleet) {
        config.fleet.name = *flags.fleet;
    }
    if (config.fleet.etcd_tls && !config.fleet.tls) {
        // https:// endpoints without [fleet.tls]: verified against the system's CAs, as etcdctl
        // and curl do. (Without a context the calls went out as plain HTTP: an outside probe.)
        std::string why;
        config.fleet.tls = BackendTlsSettings{};
        config.fleet.tls_context = BackendTlsContext::create(*config.fleet.tls, why);
        if (!config.fleet.tls_context) {
            result.errors.push_back({"", 0, 0, "fleet: https:// etcd endpoints: " + why});
        }
    }
    if (result.errors.empty()) {
        validate(config, result.errors);
    }
    if (result.errors.empty()) {
        result.config = std::move(config);
    }
    return result;
}

}  // namespace bg
