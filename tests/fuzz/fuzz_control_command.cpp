// parse_command on any line a control socket peer could send. Checked:
// - a line gives a command or a reason, never both, never neither;
// - a command is within its documented ranges (weights summing to 100%, ramp steps above 0,
//   every >= 100ms, history 1..1000, one printable backend word);
// - line endings and extra blanks change nothing;
// - the command written back in the protocol's own syntax (format_percent for weights) parses
//   to the same command, so what bgctl and the audit log print can be sent again.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "command.hpp"
#include "fuzz_check.hpp"
#include "routing_state.hpp"

namespace {

using bg::fuzz::require;

bool same_command(const bg::Command& a, const bg::Command& b) {
    if (a.verb != b.verb || a.dry_run != b.dry_run || a.skip_gate != b.skip_gate) {
        return false;
    }
    switch (a.verb) {
        case bg::Verb::set:
            return a.blue_bp == b.blue_bp && a.green_bp == b.green_bp;
        case bg::Verb::ramp:
            return a.colour == b.colour && a.to_bp == b.to_bp && a.step_bp == b.step_bp &&
                   a.every == b.every;
        case bg::Verb::drain:
        case bg::Verb::maint:
        case bg::Verb::ready:
            return a.backend == b.backend;
        case bg::Verb::history:
            return a.count == b.count;
        default:
            return true;
    }
}

bool same_result(const bg::ParsedCommand& a, const bg::ParsedCommand& b) {
    if (a.command.has_value() != b.command.has_value()) {
        return false;
    }
    return a.command ? same_command(*a.command, *b.command) : a.error == b.error;
}

// The command in the protocol's syntax.
std::string write_back(const bg::Command& c) {
    std::string line = bg::verb_name(c.verb);
    switch (c.verb) {
        case bg::Verb::set:
            line += " blue=" + bg::format_percent(*c.blue_bp) +
                    " green=" + bg::format_percent(*c.green_bp);
            break;
        case bg::Verb::ramp:
            line += std::string(" ") + bg::to_string(c.colour) +
                    " to=" + bg::format_percent(c.to_bp) +
                    " step=" + bg::format_percent(c.step_bp) +
                    " every=" + std::to_string(c.every.count()) + "ms";
            break;
        case bg::Verb::drain:
        case bg::Verb::maint:
        case bg::Verb::ready:
            line += " " + c.backend;
            break;
        case bg::Verb::history:
            line += " " + std::to_string(c.count);
            break;
        default:
            break;
    }
    if (c.dry_run) {
        line += " --dry-run";
    }
    if (c.skip_gate) {
        line += " --skip-gate";
    }
    return line;
}

void check_ranges(const bg::Command& c) {
    switch (c.verb) {
        case bg::Verb::set:
            require(c.blue_bp && c.green_bp, "set names both weights");
            require(
                *c.blue_bp <= 10000 && *c.green_bp <= 10000 && *c.blue_bp + *c.green_bp == 10000,
                "set weights are 0..100% and sum to 100%");
            break;
        case bg::Verb::ramp:
            require(c.to_bp <= 10000, "ramp to= is at most 100%");
            require(c.step_bp > 0 && c.step_bp <= 10000, "ramp step= is above 0, at most 100%");
            require(c.every.count() >= 100, "ramp every= is at least 100ms");
            break;
        case bg::Verb::drain:
        case bg::Verb::maint:
        case bg::Verb::ready:
            require(!c.backend.empty(), "a backend is named");
            for (const char ch : c.backend) {
                const auto u = static_cast<unsigned char>(ch);
                require(u > 0x20 && u < 0x7f, "a backend name is one printable word", c.backend);
            }
            break;
        case bg::Verb::history:
            require(c.count >= 1 && c.count <= 1000, "history N is 1..1000");
            break;
        default:
            break;
    }
    // Every verb has a name and a role.
    require(std::string_view(bg::verb_name(c.verb)) != "?", "every verb has a name");
    require(bg::required_role(c.verb) != bg::Role::none, "every verb needs some role");
    require(bg::changes_state(c.verb) == (bg::required_role(c.verb) != bg::Role::read),
            "state-changing verbs are exactly those above read");
}

// The same words with doubled blanks, a tab, and leading/trailing blanks.
std::string respaced(std::string_view line) {
    std::string out = " \t";
    for (const char c : line) {
        out.push_back(c);
        if (c == ' ') {
            out.push_back('\t');
        }
    }
    out += "  ";
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view line(reinterpret_cast<const char*>(data), size);
    const bg::ParsedCommand parsed = bg::parse_command(line);
    require(parsed.command.has_value() != !parsed.error.empty(),
            "a line gives a command or a reason, not both or neither");

    require(same_result(parsed, bg::parse_command(std::string(line) + "\n")),
            "a trailing LF changes nothing");
    require(same_result(parsed, bg::parse_command(std::string(line) + "\r\n")),
            "a trailing CRLF changes nothing");
    if (line.find_first_of("\r\n") == std::string_view::npos) {
        const bg::ParsedCommand spaced = bg::parse_command(respaced(line));
        require(spaced.command.has_value() == parsed.command.has_value() &&
                    (!parsed.command || same_command(*parsed.command, *spaced.command)),
                "extra blanks between words change nothing");
    }

    if (parsed.command) {
        check_ranges(*parsed.command);
        const std::string again = write_back(*parsed.command);
        const bg::ParsedCommand reparsed = bg::parse_command(again);
        require(reparsed.command.has_value() && same_command(*parsed.command, *reparsed.command),
                "a command written back parses to itself", again + " -> " + reparsed.error);
    }
    return 0;
}
