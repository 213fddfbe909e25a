// bgctl: the operator's CLI for bgproxy's control socket.
//
// Exit codes: 0 done, 1 refused by the proxy, 2 usage error, 3 proxy unreachable.

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <algorithm>

#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

namespace json = boost::json;

namespace {

enum Exit { done = 0, refused = 1, usage = 2, unreachable = 3 };

class Connection {
  public:
    ~Connection() {
        if (fd_ >= 0) {
            ::close(fd_);
        }
    }
    bool open(const std::string& path, std::string& error) {
        sockaddr_un addr{};
        if (path.size() >= sizeof(addr.sun_path)) {
            error = "socket path too long";
            return false;
        }
        addr.sun_family = AF_UNIX;
        std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
        fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd_ < 0 || ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
            error = std::strerror(errno);
            return false;
        }
        return true;
    }
    bool send_line(const std::string& line) {
        std::string data = line + "\n";
        std::size_t sent = 0;
        while (sent < data.size()) {
            ssize_t n = ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
            if (n <= 0) {
                return false;
            }
            sent += static_cast<std::size_t>(n);
        }
        return true;
    }
    // One line, or false on close, error or timeout (timeout_ms < 0: wait forever).
    bool read_line(std::string& line, int timeout_ms) {
        for (;;) {
            auto nl = buffer_.find('\n');
            if (nl != std::string::npos) {
                line = buffer_.substr(0, nl);
                buffer_.erase(0, nl + 1);
                return true;
            }
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, timeout_ms) <= 0) {
                return false;
            }
            char chunk[65536];
            ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
            if (n <= 0) {
                return false;
            }
            buffer_.append(chunk, static_cast<std::size_t>(n));
        }
    }

  private:
    int fd_ = -1;
    std::string buffer_;
};

std::string percent(const json::value& v) {
    double d = v.to_number<double>();
    char text[32];
    std::snprintf(text, sizeof(text), "%.2f", d);
    std::string s = text;
    while (s.back() == '0') {
        s.pop_back();
    }
    if (s.back() == '.') {
        s.pop_back();
    }
    return s + "%";
}

std::string str(const json::value& v) {
    if (v.is_string()) {
        return std::string(v.as_string());
    }
    return json::serialize(v);
}

void print_status(const json::object& s) {
    std::printf("version %s, changed %s by %s (%s)\n", str(s.at("version")).c_str(),
                str(s.at("changed_at")).c_str(), str(s.at("changed_by")).c_str(),
                str(s.at("last_command")).c_str());
    std::printf("stable colour: %s\n", str(s.at("stable")).c_str());
    if (s.at("ramp").is_object()) {
        const auto& r = s.at("ramp").as_object();
        std::printf("ramp: %s to %s by %s every %sms%s\n", str(r.at("colour")).c_str(),
                    percent(r.at("to")).c_str(), percent(r.at("step")).c_str(),
                    str(r.at("every_ms")).c_str(), r.at("paused").as_bool() ? " (paused)" : "");
    } else {
        std::printf("ramp: none\n");
    }
    if (const auto* f = s.if_contains("failover"); f != nullptr && f->is_object()) {
        const auto& o = f->as_object();
        std::printf("failover since %s (weights before: blue %s, green %s); failback: %s\n",
                    str(o.at("since")).c_str(), percent(o.at("weights").at("blue")).c_str(),
                    percent(o.at("weights").at("green")).c_str(), str(o.at("failback")).c_str());
    }
    if (const auto* c = s.if_contains("canary"); c != nullptr && c->is_object()) {
        const auto& o = c->as_object();
        std::string line = "canary: " + str(o.at("verdict"));
        if (const auto* cand = o.if_contains("candidate")) {
            line += " (" + str(*cand) + ")";
        }
        if (const auto* w = o.if_contains("window")) {
            char figures[200];
            std::snprintf(figures, sizeof figures,
                          " over %s: errors %.2f%% vs stable %.2f%% (z %.1f), p99 %.1fms vs %.1fms",
                          str(*w).c_str(), o.at("candidate_error_rate").to_number<double>() * 100,
                          o.at("stable_error_rate").to_number<double>() * 100,
                          o.at("z").to_number<double>(),
                          o.at("candidate_latency_seconds").to_number<double>() * 1000,
                          o.at("stable_latency_seconds").to_number<double>() * 1000);
            line += figures;
        }
        if (const auto* why = o.if_contains("reason")) {
            line += " -- " + str(*why);
        }
        std::printf("%s\n", line.c_str());
    }
    std::printf("\n%-8s %8s  %-10s %s\n", "COLOUR", "WEIGHT", "ROLE", "HEALTHY");
    const auto& colours = s.at("colours").as_object();
    for (const char* c : {"blue", "green"}) {
        const auto& col = colours.at(c).as_object();
        std::printf("%-8s %8s  %-10s %s/%zu\n", c, percent(col.at("weight")).c_str(),
                    str(col.at("role")).c_str(), str(col.at("healthy")).c_str(),
                    col.at("backends").as_array().size());
    }
    std::printf("\n%-12s %-6s %-22s %-6s %-9s %9s %9s\n", "BACKEND", "COLOUR", "ADDRESS", "ADMIN",
                "HEALTH", "IN-FLIGHT", "UPGRADED");
    for (const char* c : {"blue", "green"}) {
        for (const auto& b : colours.at(c).as_object().at("backends").as_array()) {
            const auto& o = b.as_object();
            std::printf("%-12s %-6s %-22s %-6s %-9s %9s %9s\n", str(o.at("name")).c_str(), c,
                        str(o.at("address")).c_str(), str(o.at("admin")).c_str(),
                        o.at("healthy").as_bool() ? "healthy" : "DOWN",
                        str(o.at("in_flight")).c_str(), str(o.at("upgraded")).c_str());
            if (const auto* why = o.if_contains("check")) {
                std::printf("%-12s   check: %s\n", "", str(*why).c_str());
            }
        }
    }
}

void print_reply(const std::string& verb, const json::object& reply) {
    if (verb == "status") {
        print_status(reply);
    } else if (verb == "help") {
        std::printf("%s\n", str(reply.at("help")).c_str());
    } else if (verb == "history") {
        for (const auto& r : reply.at("history").as_array()) {
            if (!r.is_object()) {
                std::printf("%s\n", str(r).c_str());
                continue;
            }
            const auto& o = r.as_object();
            std::printf("%s  uid %-6s %-9s %s%s%s\n", str(o.at("time")).c_str(),
                        str(o.at("uid")).c_str(), str(o.at("result")).c_str(),
                        str(o.at("command")).c_str(), o.contains("error") ? "  -- " : "",
                        o.contains("error") ? str(o.at("error")).c_str() : "");
        }
    } else if (verb == "watch") {
        std::printf("watching switches, health, ejections and canary verdicts (Ctrl-C ends)\n");
    } else if (reply.contains("dry_run")) {
        std::printf("dry run: %s (nothing applied)\n", str(reply.at("change")).c_str());
    } else {
        const json::value* change = reply.if_contains("change");
        std::printf("ok: %s", change != nullptr ? str(*change).c_str() : "done");
        if (reply.contains("version")) {
            std::printf(" (version %s)", str(reply.at("version")).c_str());
        }
        std::printf("\n");
    }
    if (reply.contains("note")) {
        std::printf("note: %s\n", str(reply.at("note")).c_str());
    }
    if (reply.contains("warning")) {
        std::fprintf(stderr, "warning: %s\n", str(reply.at("warning")).c_str());
    }
}

}  // namespace

// One watch event as a line: time, what (a switch's kind, or the event: health, ejection,
// canary...), the state version when it changed, and the change. Any event kind, any fields
// missing: printed as it came rather than failing.
void print_event(const std::string& event) {
    boost::system::error_code ec;
    json::value v = json::parse(event, ec);
    if (ec || !v.is_object() || !v.as_object().contains("change")) {
        std::printf("%s\n", event.c_str());
        return;
    }
    const json::object& e = v.as_object();
    auto field = [&e](const char* name) {
        const json::value* f = e.if_contains(name);
        return f != nullptr ? str(*f) : std::string();
    };
    const std::string what = e.contains("kind") ? field("kind") : field("event");
    const std::string version = e.contains("version") ? "v" + field("version") : "-";
    std::printf("%s  %-13s %-5s %s\n", field("time").c_str(), what.c_str(), version.c_str(),
                field("change").c_str());
}

// The first word on the command line that is not an option nor a known command, if the
// command itself is unknown (`bgctl bogus`).
std::string first_unknown_command(CLI::App& app, int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        const std::string word = argv[i];
        if (word.starts_with("-")) {
            if (word == "-s" || word == "--socket" || word == "--timeout") {
                ++i;  // its value
            }
            continue;
        }
        try {
            app.get_subcommand(word);
            return {};
        } catch (const CLI::OptionNotFound&) {
            return word;
        }
    }
    return {};
}

// One invocation sends one protocol line: a newline (or any control character) in an argument
// would smuggle a second command after the first.
bool has_control_character(const std::vector<std::string>& args) {
    return std::any_of(args.begin(), args.end(), [](const std::string& a) {
        return std::any_of(a.begin(), a.end(), [](char c) {
            return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
        });
    });
}

template <class Specs>
std::string command_list(const Specs& specs) {
    std::string out;
    for (const auto& spec : specs) {
        out += (out.empty() ? "" : ", ") + std::string(spec.name);
    }
    return out;
}

int main(int argc, char** argv) {
    CLI::App app{
        "bgctl: control a running bgproxy through its control socket.\n"
        "Exit codes: 0 done, 1 refused by the proxy, 2 usage error, 3 proxy unreachable."};
    const char* env_socket = std::getenv("BGCTL_SOCKET");
    std::string socket_path = env_socket != nullptr ? env_socket : "/run/bgproxy/control.sock";
    bool as_json = false;
    int timeout_s = 30;
    app.add_option("-s,--socket", socket_path,
                   "the control socket (default: $BGCTL_SOCKET or /run/bgproxy/control.sock)");
    app.add_flag("--json", as_json, "print the proxy's JSON reply as it is, for scripts");
    app.add_option("--timeout", timeout_s, "seconds to wait for a reply")
        ->check(CLI::PositiveNumber);
    app.require_subcommand(1);

    std::vector<std::string> args;
    bool dry_run = false;
    bool skip_gate = false;
    struct Spec {
        const char* name;
        const char* help;
        const char* example;
        bool changes;
        const char* args;  // positional argument name, or nullptr
        bool args_required;
    };
    const Spec specs[] = {
        {"status", "show weights, roles, backends, in-flight requests and the ramp", "bgctl status",
         false, nullptr, false},
        {"history", "show the last N audit records (default 20)", "bgctl history 50", false, "N",
         false},
        {"watch", "stream switches, ramp steps, health transitions and reverts as they happen",
         "bgctl watch", false, nullptr, false},
        {"set", "set the split in percent (two decimals at most); one colour gets the rest",
         "bgctl set blue=90 green=10   or   bgctl set green=12.5", true, "WEIGHTS", true},
        {"flip", "send all new traffic to the other colour; the old one stays as the fallback",
         "bgctl flip", true, nullptr, false},
        {"rollback",
         "send all traffic back to the stable (last known good) colour, ending any ramp",
         "bgctl rollback", true, nullptr, false},
        {"promote", "declare the colour taking all traffic the stable one", "bgctl promote", true,
         nullptr, false},
        {"clear", "clear the failed mark the rollout guard put on a colour (traffic does not move)",
         "bgctl clear", true, nullptr, false},
        {"ramp",
         "shift traffic step by step: ramp COLOUR to=P step=P every=DURATION; or ramp "
         "pause|resume|abort",
         "bgctl ramp green to=100 step=10 every=30s", true, "ARGS", true},
        {"drain", "stop new requests to a backend; in-flight ones finish", "bgctl drain blue-1",
         true, "BACKEND", true},
        {"maint", "take a backend out entirely (maintenance)", "bgctl maint blue-1", true,
         "BACKEND", true},
        {"ready", "put a drained or maintained backend back in service", "bgctl ready blue-1", true,
         "BACKEND", true},
        {"reload", "re-read the config file: apply it whole or refuse it with its errors",
         "bgctl reload", true, nullptr, false},
        {"help", "the control protocol's own summary", "bgctl help", false, nullptr, false},
    };
    std::vector<std::pair<CLI::App*, const Spec*>> subs;
    for (const Spec& spec : specs) {
        CLI::App* sub = app.add_subcommand(spec.name, spec.help);
        sub->footer(std::string("Example: ") + spec.example);
        if (spec.args != nullptr) {
            auto* opt = sub->add_option(spec.args, args, spec.args);
            if (spec.args_required) {
                opt->required();
            }
        }
        if (spec.changes) {
            sub->add_flag("--dry-run", dry_run,
                          "validate and show the state it would produce without applying it");
        }
        const std::string name = spec.name;
        if (name == "flip" || name == "set" || name == "ramp") {
            sub->add_flag("--skip-gate", skip_gate,
                          "do not run the [[gate]] smoke checks first (recorded in the audit log)");
        }
        subs.emplace_back(sub, &spec);
    }

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        if (const std::string unknown = first_unknown_command(app, argc, argv); !unknown.empty()) {
            std::fprintf(stderr, "bgctl: unknown command '%s'; the commands are: %s\n",
                         unknown.c_str(), command_list(specs).c_str());
            return usage;
        }
        app.exit(e);
        return usage;
    }
    if (has_control_character(args)) {
        std::fprintf(stderr, "bgctl: an argument contains a control character (newline, tab...)\n");
        return usage;
    }

    std::string verb;
    for (auto& [sub, spec] : subs) {
        if (sub->parsed()) {
            verb = spec->name;
        }
    }
    std::string line = verb;
    for (const auto& a : args) {
        line += " " + a;
    }
    if (dry_run) {
        line += " --dry-run";
    }
    if (skip_gate) {
        line += " --skip-gate";
    }

    Connection conn;
    std::string error;
    if (!conn.open(socket_path, error)) {
        std::fprintf(stderr, "bgctl: cannot reach bgproxy at %s: %s\n", socket_path.c_str(),
                     error.c_str());
        return unreachable;
    }
    std::string reply_line;
    if (!conn.send_line(line) || !conn.read_line(reply_line, timeout_s * 1000)) {
        std::fprintf(stderr, "bgctl: no reply from bgproxy at %s\n", socket_path.c_str());
        return unreachable;
    }
    boost::system::error_code ec;
    json::value reply = json::parse(reply_line, ec);
    if (ec || !reply.is_object() || !reply.as_object().contains("ok")) {
        std::fprintf(stderr, "bgctl: unexpected reply: %s\n", reply_line.c_str());
        return unreachable;
    }
    const json::object& obj = reply.as_object();
    if (!obj.at("ok").as_bool()) {
        if (as_json) {
            std::printf("%s\n", reply_line.c_str());
        } else {
            std::fprintf(stderr, "bgctl: refused: %s\n", str(obj.at("error")).c_str());
        }
        return refused;
    }
    if (as_json) {
        std::printf("%s\n", reply_line.c_str());
    } else {
        print_reply(verb, obj);
    }
    if (verb == "watch") {
        std::fflush(stdout);
        std::string event;
        while (conn.read_line(event, -1)) {
            if (as_json) {
                std::printf("%s\n", event.c_str());
            } else {
                print_event(event);
            }
            std::fflush(stdout);
        }
    }
    return done;
}
