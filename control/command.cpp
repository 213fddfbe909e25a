#include "command.hpp"

#include "routing_state.hpp"

#include <algorithm>
#include <charconv>
#include <vector>

namespace bg {

const char* verb_name(Verb verb) {
    return spec_of(verb).words.data();
}

const char* verb_label(Verb verb) {
    return spec_of(verb).label.data();
}

Role required_role(Verb verb) {
    return spec_of(verb).role;
}

bool changes_state(Verb verb) {
    return required_role(verb) != Role::read;
}

bool valid_command_id(std::string_view id) {
    return !id.empty() && id.size() <= 64 && std::all_of(id.begin(), id.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '_' || c == '.' || c == '-';
    });
}

const std::string& protocol_help() {
    static const std::string text = [] {
        std::string out;
        for (Role role : {Role::read, Role::operate, Role::admin}) {
            out += role == Role::read      ? "read:\n"
                   : role == Role::operate ? "operate:\n"
                                           : "admin:\n";
            for (const VerbSpec& spec : verb_table) {
                if (spec.role == role) {
                    out += "  " + std::string(spec.usage) + "\n      " + std::string(spec.summary) +
                           "\n";
                }
            }
        }
        out +=
            "Weights are percentages with up to two decimals. Add --dry-run to any state-changing\n"
            "command to see the state it would produce without applying it. flip, set and ramp\n"
            "run the [[gate]] smoke checks on the colour gaining traffic first; --skip-gate\n"
            "overrides them (audited). --id=ID names a command in its reply and the audit log.\n"
            "In a fleet whose store (etcd) is unreachable, --local applies a change to this\n"
            "instance only (audited); the fleet's state replaces it when the store is back.";
        return out;
    }();
    return text;
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

using Words = std::vector<std::string_view>;

ParsedCommand parse_count(Command cmd, const Words& args) {
    if (args.size() > 1) {
        return fail("usage: history [N] [--id=ID]");
    }
    if (args.size() == 1) {
        std::size_t n = 0;
        auto w = args[0];
        auto [end, ec] = std::from_chars(w.data(), w.data() + w.size(), n);
        if (ec != std::errc{} || end != w.data() + w.size() || n == 0 || n > 1000) {
            return fail("history N: N must be a number from 1 to 1000");
        }
        cmd.count = n;
    }
    return {cmd, {}};
}

ParsedCommand parse_backend(Command cmd, const Words& args) {
    if (args.size() != 1) {
        return fail("usage: " + std::string(spec_of(cmd.verb).usage));
    }
    cmd.backend = std::string(args[0]);
    return {cmd, {}};
}

ParsedCommand parse_weights(Command cmd, const Words& args) {
    if (args.empty() || args.size() > 2) {
        return fail("usage: " + std::string(spec_of(cmd.verb).usage));
    }
    for (std::string_view word : args) {
        std::string_view key, value;
        if (!split_pair(word, key, value)) {
            return fail("expected COLOUR=PERCENT, got '" + std::string(word) + "'");
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

// One key=value option of ramp into cmd; an error message, or empty.
std::string read_ramp_option(std::string_view word, Command& cmd, bool& have_to, bool& have_step,
                             bool& have_every) {
    const std::string usage = "usage: " + std::string(spec_of(Verb::ramp).usage);
    std::string_view key, value;
    if (!split_pair(word, key, value)) {
        return "expected KEY=VALUE, got '" + std::string(word) + "'; " + usage;
    }
    if (key == "to" || key == "step") {
        auto bp = parse_percent(value);
        if (!bp) {
            return std::string(key) + "=" + std::string(value) +
                   ": a percentage from 0 to 100 with at most two decimals";
        }
        bool& seen = key == "to" ? have_to : have_step;
        if (seen) {
            return std::string(key) + " is given twice";
        }
        (key == "to" ? cmd.to_bp : cmd.step_bp) = *bp;
        seen = true;
        return {};
    }
    if (key == "every") {
        auto d = parse_duration(value);
        if (!d || d->count() < 100) {
            return "every=" + std::string(value) + ": a duration of at least 100ms, like 30s or 5m";
        }
        if (have_every) {
            return "every is given twice";
        }
        cmd.every = *d;
        have_every = true;
        return {};
    }
    return "unknown ramp option '" + std::string(key) + "'; " + usage;
}

ParsedCommand parse_ramp(Command cmd, const Words& args) {
    const std::string usage = "usage: " + std::string(spec_of(Verb::ramp).usage) +
                              ", e.g. ramp green to=100 step=10 every=30s";
    if (args.empty()) {
        return fail(usage);
    }
    auto colour = colour_from_name(args[0]);
    if (!colour) {
        return fail("unknown colour '" + std::string(args[0]) + "'; " + usage);
    }
    cmd.colour = *colour;
    bool have_to = false;
    bool have_step = false;
    bool have_every = false;
    for (std::size_t k = 1; k < args.size(); ++k) {
        std::string error = read_ramp_option(args[k], cmd, have_to, have_step, have_every);
        if (!error.empty()) {
            return fail(error);
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

// The entry whose words the line starts with (the longest: "ramp pause" before "ramp").
const VerbSpec* match_verb(const Words& words, std::size_t& used) {
    const VerbSpec* best = nullptr;
    for (const VerbSpec& spec : verb_table) {
        std::size_t n = 0;
        std::string_view rest = spec.words;
        bool matches = true;
        while (!rest.empty()) {
            const auto space = rest.find(' ');
            const std::string_view word = rest.substr(0, space);
            if (n >= words.size() || words[n] != word) {
                matches = false;
                break;
            }
            ++n;
            rest = space == std::string_view::npos ? std::string_view{} : rest.substr(space + 1);
        }
        if (matches && (best == nullptr || n > used)) {
            best = &spec;
            used = n;
        }
    }
    return best;
}

// Splits on blanks and takes out the options any verb may carry.
std::string split_words(std::string_view line, Words& words, Command& cmd) {
    std::size_t i = 0;
    while (i < line.size()) {
        while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) {
            ++i;
        }
        std::size_t start = i;
        while (i < line.size() && line[i] != ' ' && line[i] != '\t') {
            ++i;
        }
        if (i == start) {
            continue;
        }
        std::string_view word = line.substr(start, i - start);
        if (word == "--dry-run") {
            cmd.dry_run = true;
        } else if (word == "--skip-gate") {
            cmd.skip_gate = true;
        } else if (word == "--local") {
            cmd.local = true;
        } else if (word.starts_with("--id=")) {
            if (!valid_command_id(word.substr(5))) {
                return "--id: 1 to 64 letters, digits, '_', '.' or '-'";
            }
            cmd.id = std::string(word.substr(5));
        } else {
            words.push_back(word);
        }
    }
    return {};
}

// The options split_words took out that this verb does not take (as bgctl offers them).
std::string check_options(const VerbSpec& spec, const Command& cmd) {
    const std::string verb(spec.words);
    if (cmd.skip_gate && !spec.gated) {
        return verb + " runs no gate; --skip-gate applies to flip, set and ramp";
    }
    if (spec.role == Role::read && (cmd.dry_run || cmd.local)) {
        return verb + " changes nothing; --dry-run and --local apply to changes";
    }
    return {};
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
    Words words;
    Command cmd;
    if (std::string error = split_words(line, words, cmd); !error.empty()) {
        return fail(error);
    }
    if (words.empty()) {
        return fail("empty command; try 'help'");
    }
    std::size_t used = 0;
    const VerbSpec* spec = match_verb(words, used);
    if (spec == nullptr) {
        std::string list;
        for (const VerbSpec& s : verb_table) {
            list += (list.empty() ? "" : ", ") + std::string(s.words);
        }
        return fail("unknown command '" + std::string(words[0]) + "'; the commands are: " + list);
    }
    cmd.verb = spec->verb;
    if (std::string error = check_options(*spec, cmd); !error.empty()) {
        return fail(error);
    }
    const Words args(words.begin() + static_cast<std::ptrdiff_t>(used), words.end());
    switch (spec->arguments) {
        case Arguments::none:
            if (!args.empty()) {
                return fail(std::string(spec->words) + " takes no arguments");
            }
            return {cmd, {}};
        case Arguments::count:
            return parse_count(std::move(cmd), args);
        case Arguments::backend:
            return parse_backend(std::move(cmd), args);
        case Arguments::weights:
            return parse_weights(std::move(cmd), args);
        case Arguments::ramp:
            return parse_ramp(std::move(cmd), args);
    }
    return fail("unknown command");
}

}  // namespace bg
