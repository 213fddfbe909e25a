#include "routing_state.hpp"

#include <boost/json.hpp>
#include <chrono>
#include <ctime>
#include <sstream>

namespace bg {

namespace json = boost::json;

AdminState RoutingState::admin_state(const std::string& backend) const {
    auto it = admin.find(backend);
    return it == admin.end() ? AdminState::ready : it->second;
}

std::optional<Colour> RoutingState::sole_colour() const {
    for (Colour c : all_colours) {
        if (weight(c) == 10000) {
            return c;
        }
    }
    return std::nullopt;
}

RoutingState initial_state(const Config& config) {
    RoutingState state;
    state.weight_bp = {config.blue_weight_bp, config.green_weight_bp};
    state.stable = config.green_weight_bp > config.blue_weight_bp ? Colour::green : Colour::blue;
    state.split_since = state.split() ? state.version : 0;
    state.changed_at = now_iso8601();
    state.changed_by = "config";
    state.command = "start";
    return state;
}

std::string now_iso8601() {
    return format_iso8601(std::chrono::system_clock::now());
}

std::string format_iso8601(std::chrono::system_clock::time_point now) {
    using namespace std::chrono;
    std::time_t t = system_clock::to_time_t(now);
    auto ms = duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000;
    std::tm tm{};
    gmtime_r(&t, &tm);
    char text[64];
    std::snprintf(text, sizeof(text), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<int>(ms));
    return text;
}

std::string format_percent(std::uint32_t bp) {
    std::string text = std::to_string(bp / 100);
    if (bp % 100 != 0) {
        char decimals[4];
        std::snprintf(decimals, sizeof(decimals), "%02u", bp % 100);
        std::string d = decimals;
        if (d.back() == '0') {
            d.pop_back();
        }
        text += "." + d;
    }
    return text;
}

json::value percent_json(std::uint32_t bp) {
    if (bp % 100 == 0) {
        return json::value(static_cast<std::int64_t>(bp / 100));
    }
    return json::value(bp / 100.0);
}

namespace {

json::value ramp_to_json(const std::optional<RampState>& ramp) {
    if (!ramp) {
        return nullptr;
    }
    return json::object{{"colour", to_string(ramp->colour)},
                        {"to", ramp->to_bp},
                        {"step", ramp->step_bp},
                        {"every_ms", ramp->every.count()},
                        {"paused", ramp->paused}};
}

}  // namespace

json::object to_json(const RoutingState& state) {
    json::object out;
    out["format"] = 1;
    out["version"] = state.version;
    if (state.revision != 0) {
        out["revision"] = state.revision;
    }
    out["weights"] =
        json::object{{"blue", state.weight(Colour::blue)}, {"green", state.weight(Colour::green)}};
    out["stable"] = to_string(state.stable);
    if (state.split_since != 0) {
        out["split_since"] = state.split_since;
    }
    json::array failed;
    for (Colour c : all_colours) {
        if (state.failed[index_of(c)]) {
            failed.emplace_back(to_string(c));
        }
    }
    out["failed"] = std::move(failed);
    json::array withdrawn;
    for (Colour c : all_colours) {
        if (state.withdrawn[index_of(c)]) {
            withdrawn.emplace_back(to_string(c));
        }
    }
    out["withdrawn"] = std::move(withdrawn);
    json::object admin;
    for (const auto& [name, value] : state.admin) {
        admin[name] = to_string(value);
    }
    out["admin"] = std::move(admin);
    out["ramp"] = ramp_to_json(state.ramp);
    if (state.failover) {
        out["failover"] =
            json::object{{"weights", json::object{{"blue", state.failover->weight_bp[0]},
                                                  {"green", state.failover->weight_bp[1]}}},
                         {"at", state.failover->at}};
        if (state.failover->stalled) {
            out["failover"].as_object()["stalled"] = true;
        }
        if (state.failover->ramp) {
            out["failover"].as_object()["ramp"] = ramp_to_json(state.failover->ramp);
        }
    }
    out["changed_at"] = state.changed_at;
    out["changed_by"] = state.changed_by;
    out["command"] = state.command;
    return out;
}

namespace {

std::optional<AdminState> admin_named(std::string_view name) {
    if (name == "ready") {
        return AdminState::ready;
    }
    if (name == "drain") {
        return AdminState::drain;
    }
    if (name == "maint") {
        return AdminState::maint;
    }
    return std::nullopt;
}

// A pair of weights in basis points, which must sum to 10000; nullopt with `error` otherwise.
std::optional<std::array<std::uint32_t, 2>> weights_from_json(const json::object& in,
                                                              std::string_view what,
                                                              std::string& error) {
    const std::array<std::uint32_t, 2> bp{in.at("blue").to_number<std::uint32_t>(),
                                          in.at("green").to_number<std::uint32_t>()};
    if (bp[0] > 10000 || bp[1] > 10000 || bp[0] + bp[1] != 10000) {  // (no wrap-around)
        error = std::string(what) + " do not sum to 10000 basis points";
        return std::nullopt;
    }
    return bp;
}

std::optional<RampState> ramp_from_json(const json::object& in, std::string& error) {
    RampState ramp;
    auto c = colour_from_name(in.at("colour").as_string());
    if (!c) {
        error = "ramp names an unknown colour";
        return std::nullopt;
    }
    ramp.colour = *c;
    ramp.to_bp = in.at("to").to_number<std::uint32_t>();
    ramp.step_bp = in.at("step").to_number<std::uint32_t>();
    ramp.every = Duration(in.at("every_ms").to_number<std::int64_t>());
    ramp.paused = in.at("paused").as_bool();
    if (ramp.to_bp > 10000 || ramp.step_bp == 0 || ramp.step_bp > 10000 ||
        ramp.every.count() <= 0) {
        error = "ramp values out of range";
        return std::nullopt;
    }
    return ramp;
}

// The colours marked failed and the backends' admin states, into `state`; false with `error`.
bool marks_from_json(const json::object& in, RoutingState& state, std::string& error) {
    for (const auto& item : in.at("failed").as_array()) {
        auto c = colour_from_name(item.as_string());
        if (!c) {
            error = "failed names an unknown colour";
            return false;
        }
        state.failed[index_of(*c)] = true;
    }
    if (const json::value* withdrawn = in.if_contains("withdrawn")) {  // since session 26
        for (const auto& item : withdrawn->as_array()) {
            auto c = colour_from_name(item.as_string());
            if (!c) {
                error = "withdrawn names an unknown colour";
                return false;
            }
            state.withdrawn[index_of(*c)] = true;
        }
    }
    for (const auto& [name, admin] : in.at("admin").as_object()) {
        auto a = admin_named(admin.as_string());
        if (!a) {
            error = "unknown admin state for " + std::string(name);
            return false;
        }
        state.admin[std::string(name)] = *a;
    }
    return true;
}

}  // namespace

std::optional<RoutingState> routing_state_from_json(const json::value& value, std::string& error) {
    try {
        const json::object& in = value.as_object();
        if (in.at("format").to_number<int>() != 1) {
            error = "unknown state format";
            return std::nullopt;
        }
        RoutingState state;
        state.version = in.at("version").to_number<std::uint64_t>();
        if (const json::value* revision = in.if_contains("revision")) {
            state.revision = revision->to_number<std::int64_t>();
        }
        if (const json::value* since = in.if_contains("split_since")) {  // since session 42
            state.split_since = since->to_number<std::uint64_t>();
        }
        const auto weights = weights_from_json(in.at("weights").as_object(), "weights", error);
        if (!weights) {
            return std::nullopt;
        }
        state.weight_bp = *weights;
        auto stable = colour_from_name(in.at("stable").as_string());
        if (!stable) {
            error = "stable is not blue or green";
            return std::nullopt;
        }
        state.stable = *stable;
        if (!marks_from_json(in, state, error)) {
            return std::nullopt;
        }
        if (!in.at("ramp").is_null()) {
            state.ramp = ramp_from_json(in.at("ramp").as_object(), error);
            if (!state.ramp) {
                return std::nullopt;
            }
        }
        if (const json::value* f = in.if_contains("failover"); f != nullptr && !f->is_null()) {
            const auto failover =
                weights_from_json(f->at("weights").as_object(), "failover weights", error);
            if (!failover) {
                return std::nullopt;
            }
            state.failover =
                FailoverState{.weight_bp = *failover, .at = std::string(f->at("at").as_string())};
            if (const json::value* stalled = f->as_object().if_contains("stalled")) {
                state.failover->stalled = stalled->as_bool();
            }
            if (const json::value* ramp = f->as_object().if_contains("ramp");
                ramp != nullptr && !ramp->is_null()) {
                state.failover->ramp = ramp_from_json(ramp->as_object(), error);
                if (!state.failover->ramp) {
                    return std::nullopt;
                }
            }
        }
        state.changed_at = std::string(in.at("changed_at").as_string());
        state.changed_by = std::string(in.at("changed_by").as_string());
        state.command = std::string(in.at("command").as_string());
        return state;
    } catch (const std::exception& e) {
        error = std::string("missing or mistyped field: ") + e.what();
        return std::nullopt;
    }
}

std::string describe_change(const RoutingState& before, const RoutingState& after) {
    std::ostringstream out;
    auto sep = [&out, first = true]() mutable {
        if (!first) {
            out << ", ";
        }
        first = false;
    };
    for (Colour c : all_colours) {
        if (before.weight(c) != after.weight(c)) {
            sep();
            out << to_string(c) << ' ' << format_percent(before.weight(c)) << "% -> "
                << format_percent(after.weight(c)) << '%';
        }
    }
    if (before.stable != after.stable) {
        sep();
        out << "stable " << to_string(before.stable) << " -> " << to_string(after.stable);
    }
    for (Colour c : all_colours) {
        if (before.failed[index_of(c)] != after.failed[index_of(c)]) {
            sep();
            out << to_string(c)
                << (after.failed[index_of(c)] ? " marked failed" : " failed mark cleared");
        }
    }
    if (before.failover && !after.failover) {
        sep();
        out << "failover ended";
    }
    const auto stored_ramp = [](const RoutingState& s) {
        return s.failover ? s.failover->ramp : std::optional<RampState>{};
    };
    if (stored_ramp(before) != stored_ramp(after) && after.failover) {
        sep();
        out << (!stored_ramp(after)          ? "the stopped ramp dropped"
                : !before.failover           ? "ramp suspended until the failback"
                : stored_ramp(after)->paused ? "the stopped ramp paused"
                                             : "the stopped ramp resumes at the failback");
    }
    std::map<std::string, bool> names;
    for (const auto& [name, _] : before.admin) {
        names[name] = true;
    }
    for (const auto& [name, _] : after.admin) {
        names[name] = true;
    }
    for (const auto& [name, _] : names) {
        AdminState a = before.admin_state(name);
        AdminState b = after.admin_state(name);
        if (a != b) {
            sep();
            out << name << ' ' << to_string(a) << " -> " << to_string(b);
        }
    }
    const bool suspended = !after.ramp && before.ramp && stored_ramp(after) == before.ramp;
    // A ramp that replaces one in progress says so, with its plan (it once said nothing).
    const bool replaced = before.ramp && after.ramp && !before.ramp->same_plan(*after.ramp);
    if (!suspended && (before.ramp.has_value() != after.ramp.has_value() || replaced ||
                       (before.ramp && after.ramp && before.ramp->paused != after.ramp->paused))) {
        sep();
        if (!after.ramp) {
            out << "ramp ended";
        } else if (!before.ramp || replaced) {
            out << (replaced ? "ramp replaced: " : "ramp ") << to_string(after.ramp->colour)
                << " to " << format_percent(after.ramp->to_bp) << "% by "
                << format_percent(after.ramp->step_bp) << "% every " << after.ramp->every.count()
                << "ms" << (after.ramp->paused ? " (paused)" : "");
        } else {
            out << (after.ramp->paused ? "ramp paused" : "ramp resumed");
        }
    }
    std::string text = out.str();
    return text.empty() ? "no change" : text;
}

std::uint32_t BackendIds::id_of(const std::string& name) {
    auto [it, inserted] = ids_.try_emplace(name, static_cast<std::uint32_t>(ids_.size()));
    return it->second;
}

const std::shared_ptr<FailureRun>& BackendIds::failure_run(std::uint32_t id) {
    if (id >= runs_.size()) {
        runs_.resize(id + 1);
    }
    if (!runs_[id]) {
        runs_[id] = std::make_shared<FailureRun>();
    }
    return runs_[id];
}

RoutingTablePtr build_table(const Config& config, const RoutingState& state, BackendIds& ids,
                            const std::map<std::string, bool>& healthy, Duration tunnel_drain) {
    std::array<ColourPool, 2> pools;
    for (Colour colour : all_colours) {
        const PoolConfig& source = colour == Colour::blue ? config.blue : config.green;
        ColourPool& pool = pools[index_of(colour)];
        pool.weight_bp = state.weight(colour);
        pool.failed = state.failed[index_of(colour)];
        pool.withdrawn = state.withdrawn[index_of(colour)] && state.weight(colour) == 0;
        pool.stable = state.stable == colour;
        for (const auto& backend : source.backends) {
            auto health = healthy.find(backend.name);
            const std::uint32_t id = ids.id_of(backend.name);
            pool.backends.push_back(
                Backend{id, backend.name, colour, backend.address, state.admin_state(backend.name),
                        health == healthy.end() || health->second, source.tls_context,
                        source.send_proxy_protocol, ids.failure_run(id)});
        }
    }
    auto table = std::make_shared<RoutingTable>(state.version, std::move(pools));
    table->set_tunnel_drain(tunnel_drain);
    table->set_split_since(state.split_since);
    return table;
}

}  // namespace bg
