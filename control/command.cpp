#include "command.hpp"

#include "routing_state.hpp"

#include <algorithm>
#include <charconv>
#include <vector>

namespace bg {

const char* verb_name(Verb verb) {
    switch (verb) {
        case Verb::status:
            return "status";
        case Verb::history:
            return "history";
        case Verb::watch:
            return "watch";
        case Verb::help:
            return "help";
        case Verb::set:
            return "set";
        case Verb::flip:
            return "flip";
        case Verb::rollback:
            return "rollback";
        case Verb::promote:
            return "promote";
        case Verb::clear:
            return "clear";
        case Verb::ramp:
            return "ramp";
        case Verb::ramp_pause:
            return "ramp pause";
        case Verb::ramp_resume:
            return "ramp resume";
        case Verb::ramp_abort:
            return "ramp abort";
        case Verb::drain:
            return "drain";
        case Verb::maint:
            return "maint";
        case Verb::ready:
            return "ready";
        case Verb::reload:
            return "reload";
    }
    return "?";
}

Role required_role(Verb verb) {
    switch (verb) {
        case Verb::status:
        case Verb::history:
        case Verb::watch:
        case Verb::help:
            return Role::read;
        case Verb::reload:
            return Role::admin;
        default:
            return Role::operate;
    }
}

bool changes_state(Verb verb) {
    return required_role(verb) != Role::read;
}

const char* protocol_help() {
    return "read:    status | history [N] | watch | help\n"
           "operate: set blue=W green=W | set green=W | flip | rollback | promote | clear\n"
           "         ramp green to=100 step=10 every=30s | ramp pause | ramp resume | ramp abort\n"
           "         drain BACKEND | maint BACKEND | ready BACKEND\n"
           "admin:   reload\n"
           "Weights are percentages with up to two decimals. Add --dry-run to any state-changing\n"
           "command to see the state it would produce without applying it. flip, set and ramp\n"
           "run the [[gate]] smoke checks on the colour gaining traffic first; --skip-gate\n"
           "overrides them (audited).";
}

namespace {

std::optional<std::uint32_t> parse_percent(std::string_view s) {
    // Digits with an optional '.' and up to two decimals: strict, no exponent, no sign.
    if (s.empty() || s.size() > 6) {
        return std::nullopt;
    }
    std::uint32_t whole = 0;
    std::size_t dot = s.find('.');
    std::string_view int_part = s.substr(0, dot);
    auto [end, ec] = std::from_chars(int_part.data(), int_part.data() + int_part.size(), whole);
    if (ec != std::errc{} || end != int_part.data() + int_part.size() || int_part.empty()) {
        return std::nullopt;
    }
    std::uint32_t frac = 0;
    if (dot != std::string_view::npos) {
        std::string_view f = s.substr(dot + 1);
        if (f.empty() || f.size() > 2 ||
            !std::all_of(f.begin(), f.end(), [](char c) { return c >= '0' && c <= '9'; })) {
            return std::nullopt;
        }
        frac = static_cast<std::uint32_t>(std::stoul(std::string(f)));
        if (f.size() == 1) {
            frac *= 10;
        }
    }
    std::uint32_t bp = whole * 100 + frac;
    if (whole > 100 || bp > 10000) {
        return std::nullopt;
    }
    return bp;
}

ParsedCommand fail(std::string message) {
    return {std::nullopt, std::move(message)};
}

// "key=value" arguments, each key once.
bool split_pair(std::string_view token, std::string_view& key, std::string_view& value) {
    auto eq = token.find('=');
    if (eq == std::string_view::npos || eq == 0 || eq + 1 == token.size()) {
        return false;
    }
    key = token.substr(0, eq);
    value = token.substr(eq + 1);
    return true;
}

}  // namespace

ParsedCommand parse_command(std::string_view line) {
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) {
        line.remove_suffix(1);
    }
    for (char c : line) {
        auto u = static_cast<unsigned char>(c);
        if ((u < 0x20 && c != '\t') || u >= 0x7f) {
            return fail("the command contains non-printable bytes");
        }
    }
    std::vector<std::string_view> words;
    bool dry_run = false;
    bool skip_gate = false;
    std::size_t i = 0;
    while (i < line.size()) {
        while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) {
            ++i;
        }
        std::size_t start = i;
        while (i < line.size() && line[i] != ' ' && line[i] != '\t') {
            ++i;
        }
        if (i > start) {
            std::string_view word = line.substr(start, i - start);
            if (word == "--dry-run") {
                dry_run = true;
            } else if (word == "--skip-gate") {
                skip_gate = true;
            } else {
                words.push_back(word);
            }
        }
    }
    if (words.empty()) {
        return fail("empty command; try 'help'");
    }
    Command cmd;
    cmd.dry_run = dry_run;
    cmd.skip_gate = skip_gate;
    const std::string_view verb = words[0];
    const std::size_t args = words.size() - 1;
    auto no_args = [&](Verb v) -> ParsedCommand {
        if (args != 0) {
            return fail(std::string(verb) + " takes no arguments");
        }
        cmd.verb = v;
        return {cmd, {}};
    };

    if (verb == "status") {
        return no_args(Verb::status);
    }
    if (verb == "watch") {
        return no_args(Verb::watch);
    }
    if (verb == "help") {
        return no_args(Verb::help);
    }
    if (verb == "flip") {
        return no_args(Verb::flip);
    }
    if (verb == "rollback") {
        return no_args(Verb::rollback);
    }
    if (verb == "promote") {
        return no_args(Verb::promote);
    }
    if (verb == "clear") {
        return no_args(Verb::clear);
    }
    if (verb == "reload") {
        return no_args(Verb::reload);
    }
    if (verb == "history") {
        cmd.verb = Verb::history;
        if (args > 1) {
            return fail("usage: history [N]");
        }
        if (args == 1) {
            std::size_t n = 0;
            auto w = words[1];
            auto [end, ec] = std::from_chars(w.data(), w.data() + w.size(), n);
            if (ec != std::errc{} || end != w.data() + w.size() || n == 0 || n > 1000) {
                return fail("history N: N must be a number from 1 to 1000");
            }
            cmd.count = n;
        }
        return {cmd, {}};
    }
    if (verb == "drain" || verb == "maint" || verb == "ready") {
        cmd.verb = verb == "drain" ? Verb::drain : verb == "maint" ? Verb::maint : Verb::ready;
        if (args != 1) {
            return fail("usage: " + std::string(verb) + " BACKEND");
        }
        cmd.backend = std::string(words[1]);
        return {cmd, {}};
    }
    if (verb == "set") {
        cmd.verb = Verb::set;
        if (args == 0 || args > 2) {
            return fail("usage: set blue=W green=W | set green=W (percentages summing to 100)");
        }
        for (std::size_t k = 1; k < words.size(); ++k) {
            std::string_view key, value;
            if (!split_pair(words[k], key, value)) {
                return fail("expected COLOUR=PERCENT, got '" + std::string(words[k]) + "'");
            }
            auto colour = colour_from_name(key);
            if (!colour) {
                return fail("unknown colour '" + std::string(key) + "': use blue or green");
            }
            auto bp = parse_percent(value);
            if (!bp) {
                return fail("weight '" + std::string(value) +
                            "' must be a percentage from 0 to 100 with at most two decimals");
            }
            auto& slot = *colour == Colour::blue ? cmd.blue_bp : cmd.green_bp;
            if (slot) {
                return fail(std::string(key) + " is given twice");
            }
            slot = bp;
        }
        if (cmd.blue_bp && cmd.green_bp && *cmd.blue_bp + *cmd.green_bp != 10000) {
            return fail("weights must sum to 100 (got blue " + format_percent(*cmd.blue_bp) +
                        " + green " + format_percent(*cmd.green_bp) + ")");
        }
        if (!cmd.blue_bp) {
            cmd.blue_bp = 10000 - *cmd.green_bp;
        }
        if (!cmd.green_bp) {
            cmd.green_bp = 10000 - *cmd.blue_bp;
        }
        return {cmd, {}};
    }
    if (verb == "pause" || verb == "resume" || verb == "abort") {
        cmd.verb = verb == "pause"    ? Verb::ramp_pause
                   : verb == "resume" ? Verb::ramp_resume
                                      : Verb::ramp_abort;
        return args == 0 ? ParsedCommand{cmd, {}} : fail(std::string(verb) + " takes no arguments");
    }
    if (verb == "ramp") {
        if (args == 1 && (words[1] == "pause" || words[1] == "resume" || words[1] == "abort")) {
            cmd.verb = words[1] == "pause"    ? Verb::ramp_pause
                       : words[1] == "resume" ? Verb::ramp_resume
                                              : Verb::ramp_abort;
            return {cmd, {}};
        }
        cmd.verb = Verb::ramp;
        const char* usage =
            "usage: ramp COLOUR to=P step=P every=DURATION, e.g. ramp green to=100 step=10 "
            "every=30s";
        if (args < 1) {
            return fail(usage);
        }
        auto colour = colour_from_name(words[1]);
        if (!colour) {
            return fail("unknown colour '" + std::string(words[1]) + "'; " + usage);
        }
        cmd.colour = *colour;
        bool have_step = false;
        bool have_every = false;
        bool have_to = false;
        for (std::size_t k = 2; k < words.size(); ++k) {
            std::string_view key, value;
            if (!split_pair(words[k], key, value)) {
                return fail("expected KEY=VALUE, got '" + std::string(words[k]) + "'; " + usage);
            }
            if (key == "to" || key == "step") {
                auto bp = parse_percent(value);
                if (!bp) {
                    return fail(std::string(key) + "=" + std::string(value) +
                                ": a percentage from 0 to 100 with at most two decimals");
                }
                (key == "to" ? cmd.to_bp : cmd.step_bp) = *bp;
                (key == "to" ? have_to : have_step) = true;
            } else if (key == "every") {
                auto d = parse_duration(value);
                if (!d || d->count() < 100) {
                    return fail("every=" + std::string(value) +
                                ": a duration of at least 100ms, like 30s or 5m");
                }
                cmd.every = *d;
                have_every = true;
            } else {
                return fail("unknown ramp option '" + std::string(key) + "'; " + usage);
            }
        }
        if (!have_step || !have_every) {
            return fail(usage);
        }
        if (!have_to) {
            cmd.to_bp = 10000;
        }
        if (cmd.step_bp == 0) {
            return fail("step must be more than 0");
        }
        return {cmd, {}};
    }
    return fail("unknown command '" + std::string(verb) + "'; try 'help'");
}

}  // namespace bg
