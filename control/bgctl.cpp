// bgctl: the operator's CLI for bgproxy's control socket.
//
// Exit codes: 0 done, 1 refused by the proxy, 2 usage error, 3 proxy unreachable, 4 no answer
// in time (the command may still apply: its id says where to look), 5 in a fleet: committed,
// but not applied by every member in time (the reply names them).

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <algorithm>
#include <random>

#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "verb_table.hpp"

namespace json = boost::json;

namespace {

// 5: in a fleet, committed but not applied by every member within fleet.apply_timeout.
enum Exit { done = 0, refused = 1, usage = 2, unreachable = 3, no_answer = 4, fleet_partial = 5 };

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

// In a fleet: the store, the members, what each applied and sees of the backends.
void print_fleet(const json::object& s) {
    const json::value* f = s.if_contains("fleet");
    if (f == nullptr || !f->is_object()) {
        return;
    }
    const json::object& fleet = f->as_object();
    const bool reachable = fleet.at("reachable").as_bool();
    std::printf("\nfleet %s (this instance: %s), etcd %s%s; ramp driver: %s\n",
                str(fleet.at("name")).c_str(), str(fleet.at("instance")).c_str(),
                reachable ? "reachable at " : "UNREACHABLE: ",
                str(fleet.at(reachable ? "endpoint" : "error")).c_str(),
                str(fleet.at("ramp_driver")).c_str());
    if (const json::value* warning = fleet.if_contains("warning")) {
        std::printf("warning: %s\n", str(*warning).c_str());
    }
    std::printf("%-20s %-22s %8s %8s  %s\n", "MEMBER", "LISTEN", "VERSION", "BEHIND",
                "BACKENDS DOWN (as it sees them)");
    for (const auto& m : fleet.at("members").as_array()) {
        const json::object& o = m.as_object();
        std::string down;
        for (const auto& [name, healthy] : o.at("health").as_object()) {
            if (healthy.is_bool() && !healthy.as_bool()) {
                down += (down.empty() ? "" : ", ") + std::string(name);
            }
        }
        std::printf("%-20s %-22s %8s %8s  %s\n",
                    (str(o.at("instance")) + (o.at("self").as_bool() ? " *" : "")).c_str(),
                    str(o.at("listen")).c_str(), str(o.at("applied_version")).c_str(),
                    str(o.at("versions_behind")).c_str(), down.empty() ? "-" : down.c_str());
    }
}

// The ramp in progress, and the failover with the ramp it stopped.
void print_ramp_and_failover(const json::object& s) {
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
        if (const auto* r = o.if_contains("ramp"); r != nullptr && r->is_object()) {
            std::printf("  the failback resumes the ramp of %s to %s%s\n",
                        str(r->at("colour")).c_str(), percent(r->at("to")).c_str(),
                        r->at("paused").as_bool() ? " (paused)" : "");
        }
    }
}

void print_status(const json::object& s) {
    std::printf("version %s, changed %s by %s (%s)\n", str(s.at("version")).c_str(),
                str(s.at("changed_at")).c_str(), str(s.at("changed_by")).c_str(),
                str(s.at("last_command")).c_str());
    std::printf("stable colour: %s\n", str(s.at("stable")).c_str());
    print_ramp_and_failover(s);
    if (const auto* c = s.if_contains("canary"); c != nullptr && c->is_object()) {
        const auto& o = c->as_object();
        std::string line = "canary: " + str(o.at("verdict"));
        if (const auto* cand = o.if_contains("candidate")) {
            line += " (" + str(*cand) + ")";
        }
        if (const auto* w = o.if_contains("window")) {
            const auto* assumed = o.if_contains("assumed_baseline");
            const bool no_stable = assumed != nullptr && assumed->is_bool() && assumed->as_bool();
            char figures[200];
            std::snprintf(figures, sizeof figures, " over %s: errors %.2f%% vs %s %.2f%% (z %.1f)",
                          str(*w).c_str(), o.at("candidate_error_rate").to_number<double>() * 100,
                          no_stable ? "an assumed" : "stable",
                          o.at("stable_error_rate").to_number<double>() * 100,
                          o.at("z").to_number<double>());
            line += figures;
            if (const auto* c = o.if_contains("candidate_latency_seconds")) {
                std::snprintf(figures, sizeof figures, ", p99 %.1fms vs %.1fms",
                              c->to_number<double>() * 1000,
                              o.at("stable_latency_seconds").to_number<double>() * 1000);
                line += figures;
            } else {
                line += ", latency not judged";
            }
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
    if (const auto* t = s.if_contains("tunnels"); t != nullptr && t->is_object()) {
        for (const char* c : {"blue", "green"}) {
            const auto& colour = t->as_object().at(c).as_object();
            if (colour.at("closing_at").is_string()) {
                std::printf("tunnels to %s: %s open, closed at %s (the colour lost its share)\n", c,
                            str(colour.at("open")).c_str(), str(colour.at("closing_at")).c_str());
            }
        }
    }
    print_fleet(s);
    std::printf("\n%-12s %-6s %-22s %-6s %-9s %9s %9s\n", "BACKEND", "COLOUR", "ADDRESS", "ADMIN",
                "HEALTH", "IN-FLIGHT", "UPGRADED");
    for (const char* c : {"blue", "green"}) {
        for (const auto& b : colours.at(c).as_object().at("backends").as_array()) {
            const auto& o = b.as_object();
            std::printf("%-12s %-6s %-22s %-6s %-9s %9s %9s\n", str(o.at("name")).c_str(), c,
                        str(o.at("address")).c_str(), str(o.at("admin")).c_str(),
                        o.at("healthy").as_bool() ? "healthy"
                        : o.contains("ejected")   ? "EJECTED"
                                                  : "DOWN",
                        str(o.at("in_flight")).c_str(), str(o.at("upgraded")).c_str());
            if (const auto* why = o.if_contains("check")) {
                std::printf("%-12s   check: %s\n", "", str(*why).c_str());
            }
            if (const auto* why = o.if_contains("ejected")) {
                std::printf("%-12s   ejected: %s\n", "", str(*why).c_str());
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
            std::printf("%s  uid %-6s %-9s %-16s %s%s%s\n", str(o.at("time")).c_str(),
                        str(o.at("uid")).c_str(), str(o.at("result")).c_str(),
                        o.contains("id") ? str(o.at("id")).c_str() : "-",
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
    if (const json::value* fleet = reply.if_contains("fleet");
        verb != "status" && fleet && fleet->is_object()) {
        const json::object& f = fleet->as_object();
        auto names = [&f](const char* key) {
            std::string out;
            if (const json::value* list = f.if_contains(key); list && list->is_array()) {
                for (const auto& n : list->as_array()) {
                    out += (out.empty() ? "" : ", ") + str(n);
                }
            }
            return out;
        };
        if (f.contains("local")) {
            std::printf("fleet: applied to this instance only (--local)\n");
        } else if (f.contains("error")) {
            std::printf("fleet: %s\n", str(f.at("error")).c_str());
        } else if (f.contains("complete")) {
            std::printf("fleet: applied by %s%s%s\n", names("applied").c_str(),
                        names("lagging").empty() ? "" : "; NOT yet by ", names("lagging").c_str());
        }
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

std::string command_list() {
    std::string out;
    for (const bg::VerbSpec& spec : bg::verb_table) {
        out += (out.empty() ? "" : ", ") + std::string(spec.words);
    }
    return out;
}

// A name for this command that the proxy records with it: when no answer comes in time, the
// audit log still says what became of it (`bgctl history --id=ID`).
std::string new_command_id() {
    std::random_device random;
    char id[17];
    std::snprintf(id, sizeof id, "%08x%08x", random(), random());
    return id;
}

// The subcommands, from the protocol's verb table (two-word verbs like "ramp pause" are the
// ramp subcommand's arguments).
struct Subcommands {
    std::vector<std::pair<CLI::App*, const bg::VerbSpec*>> all;
    std::vector<std::string> args;
    bool dry_run = false;
    bool skip_gate = false;
    bool local = false;
    std::string id;
};

void add_subcommands(CLI::App& app, Subcommands& subs) {
    for (const bg::VerbSpec& spec : bg::verb_table) {
        if (spec.words.find(' ') != std::string_view::npos) {
            continue;
        }
        CLI::App* sub = app.add_subcommand(std::string(spec.words), std::string(spec.summary));
        sub->footer("Usage: " + std::string(spec.usage) +
                    "\nExample: " + std::string(spec.example));
        if (!spec.args.empty()) {
            auto* opt = sub->add_option(std::string(spec.args), subs.args, std::string(spec.args));
            if (spec.arguments != bg::Arguments::count) {
                opt->required();
            }
            if (spec.arguments == bg::Arguments::count ||
                spec.arguments == bg::Arguments::backend) {
                // One argument: the help says `BACKEND`, not CLI11's `BACKEND TEXT ...`.
                opt->expected(1)->type_name("")->description(
                    spec.arguments == bg::Arguments::backend
                        ? "a backend's name, as `bgctl status` lists it"
                        : "how many records, newest last (default 20)");
            }
        }
        if (spec.role != bg::Role::read) {
            sub->add_flag("--dry-run", subs.dry_run,
                          "validate and show the state it would produce without applying it");
        }
        if (spec.role != bg::Role::read && spec.verb != bg::Verb::reload) {
            sub->add_flag("--local", subs.local,
                          "in a fleet whose etcd is unreachable: this instance only (audited)");
        }
        if (spec.gated) {
            sub->add_flag("--skip-gate", subs.skip_gate,
                          "do not run the [[gate]] smoke checks first (recorded in the audit log)");
        }
        if (spec.verb == bg::Verb::history) {
            sub->add_option("--id", subs.id, "only the records of this command id");
        }
        subs.all.emplace_back(sub, &spec);
    }
}

// The protocol line for what was parsed; state-changing commands carry a fresh id.
std::string protocol_line(const Subcommands& subs, std::string& verb, std::string& id) {
    for (const auto& [sub, spec] : subs.all) {
        if (sub->parsed()) {
            verb = std::string(spec->words);
            id = spec->role != bg::Role::read ? new_command_id() : subs.id;
        }
    }
    std::string line = verb;
    for (const auto& a : subs.args) {
        line += " " + a;
    }
    if (subs.dry_run) {
        line += " --dry-run";
    }
    if (subs.skip_gate) {
        line += " --skip-gate";
    }
    if (subs.local) {
        line += " --local";
    }
    if (!id.empty()) {
        line += " --id=" + id;
    }
    return line;
}

namespace {

// Parses the command line into `subs`: nothing when bgctl goes on, else its exit code.
std::optional<int> parse_command_line(CLI::App& app, const Subcommands& subs, int argc,
                                      char** argv) {
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        if (const std::string unknown = first_unknown_command(app, argc, argv); !unknown.empty()) {
            std::fprintf(stderr, "bgctl: unknown command '%s'; the commands are: %s\n",
                         unknown.c_str(), command_list().c_str());
            return usage;
        }
        app.exit(e);
        return usage;
    }
    if (has_control_character(subs.args) || has_control_character({subs.id})) {
        std::fprintf(stderr, "bgctl: an argument contains a control character (newline, tab...)\n");
        return usage;
    }
    return std::nullopt;
}

// Sends the line and reads the one-line reply into `reply_line`: nothing when one came, else
// bgctl's exit code.
std::optional<int> send_command(Connection& conn, const std::string& socket_path,
                                const std::string& line, const std::string& verb,
                                const std::string& id, int timeout_s, std::string& reply_line) {
    std::string error;
    if (!conn.open(socket_path, error)) {
        std::fprintf(stderr, "bgctl: cannot reach bgproxy at %s: %s\n", socket_path.c_str(),
                     error.c_str());
        return unreachable;
    }
    // A proxy turning the connection away (too many) answers and closes before reading: the
    // send may fail, and its answer is still there to read.
    const bool sent = conn.send_line(line);
    if (!conn.read_line(reply_line, sent ? timeout_s * 1000 : 1000) && !sent) {
        std::fprintf(stderr, "bgctl: cannot send to bgproxy at %s\n", socket_path.c_str());
        return unreachable;
    }
    if (!reply_line.empty()) {
        return std::nullopt;
    }
    if (id.empty() || verb == "history") {
        std::fprintf(stderr, "bgctl: no reply from bgproxy at %s\n", socket_path.c_str());
        return unreachable;
    }
    // Hanging up cancels the command if it is still waiting (for its turn or its gate); if it
    // was already applying, it completes. The audit log says which.
    std::fprintf(stderr,
                 "bgctl: no answer within %ds to command %s: cancelled if it had not started "
                 "applying; `bgctl history --id=%s` says what became of it\n",
                 timeout_s, id.c_str(), id.c_str());
    return no_answer;
}

// Prints the reply (and a watch's events as they come); bgctl's exit code.
int print_outcome(Connection& conn, const std::string& reply_line, const std::string& verb,
                  bool as_json) {
    boost::system::error_code ec;
    json::value reply = json::parse(reply_line, ec);
    if (ec || !reply.is_object() || !reply.as_object().contains("ok")) {
        std::fprintf(stderr, "bgctl: unexpected reply: %s\n", reply_line.c_str());
        return unreachable;
    }
    const json::object& obj = reply.as_object();
    if (!obj.at("ok").as_bool()) {
        const auto flag = [&obj](const char* name) {
            const json::value* value = obj.if_contains(name);
            return value != nullptr && value->is_bool() && value->as_bool();
        };
        // "uncertain": the fleet store may have taken it though its answer was lost.
        const bool uncertain = flag("uncertain");
        if (as_json) {
            std::printf("%s\n", reply_line.c_str());
        } else {
            std::fprintf(stderr, "bgctl: %s: %s\n", uncertain ? "not confirmed" : "refused",
                         str(obj.at("error")).c_str());
        }
        return flag("usage") ? usage : uncertain ? no_answer : refused;
    }
    if (as_json) {
        std::printf("%s\n", reply_line.c_str());
    } else {
        print_reply(verb, obj);
    }
    if (const json::value* fleet = obj.if_contains("fleet");
        verb != "status" && fleet && fleet->is_object() &&
        fleet->as_object().contains("complete") && !fleet->as_object().at("complete").as_bool()) {
        return fleet_partial;
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
        // A watch never ends by itself: the proxy stopped (or restarted), which a script must
        // tell from success (an outside probe: exit 0).
        std::fprintf(stderr, "bgctl: the proxy closed the watch (stopped or restarting)\n");
        return unreachable;
    }
    return done;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "bgctl: control a running bgproxy through its control socket.\n"
        "Exit codes: 0 done, 1 refused by the proxy, 2 usage error, 3 proxy unreachable, 4 no\n"
        "answer in time, or not confirmed by a fleet's etcd (the command may still apply: see\n"
        "`bgctl history --id=ID`), 5 in a\n"
        "fleet: committed, but not applied by every member within the apply timeout (named)."};
    const char* env_socket = std::getenv("BGCTL_SOCKET");
    std::string socket_path = env_socket != nullptr ? env_socket : "/run/bgproxy/control.sock";
    bool as_json = false;
    int timeout_s = 30;
    app.add_option("-s,--socket", socket_path,
                   "the control socket (default: $BGCTL_SOCKET or /run/bgproxy/control.sock)");
    app.add_flag("--json", as_json, "print the proxy's JSON reply as it is, for scripts");
    app.add_option("--timeout", timeout_s, "seconds to wait for a reply (at most a day)")
        ->check(CLI::Range(1, 86400));  // in milliseconds it must fit poll()'s int
    app.require_subcommand(1);
    Subcommands subs;
    add_subcommands(app, subs);
    if (auto exit_code = parse_command_line(app, subs, argc, argv)) {
        return *exit_code;
    }
    std::string verb;
    std::string id;
    const std::string line = protocol_line(subs, verb, id);
    Connection conn;
    std::string reply_line;
    if (auto exit_code = send_command(conn, socket_path, line, verb, id, timeout_s, reply_line)) {
        return *exit_code;
    }
    return print_outcome(conn, reply_line, verb, as_json);
}
