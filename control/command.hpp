#pragma once
// The control protocol's commands: one line each, parsed here into a Command or a message that
// says what was wrong. Read-only and state-changing verbs are kept apart (required_role).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "config.hpp"
#include "routing_table.hpp"
#include "verb_table.hpp"

namespace bg {

// From verb_table: the words typed, and the label metrics and audit kinds use.
const char* verb_name(Verb verb);
const char* verb_label(Verb verb);
Role required_role(Verb verb);
bool changes_state(Verb verb);

struct Command {
    Verb verb = Verb::status;
    bool dry_run = false;
    bool skip_gate = false;  // audited: the line carries it
    bool local = false;      // in a fleet with its store away: this instance only (audited)
    std::optional<std::uint32_t> blue_bp;      // set
    std::optional<std::uint32_t> green_bp;     // set
    Colour colour = Colour::green;             // ramp
    std::uint32_t to_bp = 10000;               // ramp
    std::uint32_t step_bp = 1000;              // ramp
    Duration every{std::chrono::seconds(30)};  // ramp
    std::string backend;                       // drain, maint, ready
    std::size_t count = 20;                    // history
    std::string id;  // --id=ID: the caller's name for this command, in its reply and audit
};

// A command id as the protocol takes it: 1 to 64 of [A-Za-z0-9_.-].
bool valid_command_id(std::string_view id);

struct ParsedCommand {
    std::optional<Command> command;
    std::string error;  // set when command is empty
};

ParsedCommand parse_command(std::string_view line);

// The protocol's help text, from verb_table: every command with its usage.
const std::string& protocol_help();

}  // namespace bg
