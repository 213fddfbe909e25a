#pragma once
// The control verbs, once: the words that name each, the arguments it takes, the role it needs,
// whether the [[gate]] runs before it, and its help. The proxy's parser, its help and refusals,
// and bgctl's subcommands are all generated from this table. Data only: bgctl includes it
// without linking the proxy.

#include <cstdint>
#include <string_view>

#include "role.hpp"

namespace bg {

enum class Verb : std::uint8_t {
    status,
    history,
    watch,
    help,
    set,
    flip,
    rollback,
    promote,
    clear,
    ramp,
    ramp_pause,
    ramp_resume,
    ramp_abort,
    drain,
    maint,
    ready,
    reload,
};

// Which parser reads a verb's arguments.
enum class Arguments : std::uint8_t { none, count, backend, weights, ramp };

struct VerbSpec {
    Verb verb;
    std::string_view words;  // "ramp pause": what is typed
    std::string_view label;  // "ramp_pause": metrics, audit kinds and JSON
    Arguments arguments;
    std::string_view args;     // bgctl's name for the positional arguments, or empty
    std::string_view usage;    // the synopsis a refusal quotes
    std::string_view summary;  // one line of help
    std::string_view example;
    Role role;
    bool gated;  // the [[gate]] smoke checks run first on a colour it gives traffic to
};

// clang-format off
inline constexpr VerbSpec verb_table[] = {
    {Verb::status, "status", "status", Arguments::none, "", "status",
     "show weights, roles, backends, in-flight requests, the ramp and the canary verdict",
     "bgctl status", Role::read, false},
    {Verb::history, "history", "history", Arguments::count, "N", "history [N] [--id=ID]",
     "show the last N audit records (default 20), or those of one command id",
     "bgctl history 50   or   bgctl history --id=4f2a9c1e", Role::read, false},
    {Verb::watch, "watch", "watch", Arguments::none, "", "watch",
     "stream switches, ramp steps, health transitions, ejections and reverts as they happen",
     "bgctl watch", Role::read, false},
    {Verb::help, "help", "help", Arguments::none, "", "help",
     "the control protocol's own summary", "bgctl help", Role::read, false},
    {Verb::set, "set", "set", Arguments::weights, "WEIGHTS",
     "set blue=W green=W | set green=W (percentages summing to 100)",
     "set the split in percent (two decimals at most); one colour gets the rest",
     "bgctl set blue=90 green=10   or   bgctl set green=12.5", Role::operate, true},
    {Verb::flip, "flip", "flip", Arguments::none, "", "flip",
     "send all new traffic to the other colour; the old one stays as the fallback",
     "bgctl flip", Role::operate, true},
    {Verb::rollback, "rollback", "rollback", Arguments::none, "", "rollback",
     "send all traffic back to the stable (last known good) colour, ending any ramp and "
     "cancelling commands waiting on the gate",
     "bgctl rollback", Role::operate, false},
    {Verb::promote, "promote", "promote", Arguments::none, "", "promote",
     "declare the colour taking all traffic the stable one", "bgctl promote", Role::operate,
     false},
    {Verb::clear, "clear", "clear", Arguments::none, "", "clear",
     "clear the failed mark the rollout guard put on a colour (traffic does not move)",
     "bgctl clear", Role::operate, false},
    {Verb::ramp, "ramp", "ramp", Arguments::ramp, "ARGS",
     "ramp COLOUR to=P step=P every=DURATION",
     "shift traffic step by step; or ramp pause|resume|abort",
     "bgctl ramp green to=100 step=10 every=30s", Role::operate, true},
    {Verb::ramp_pause, "ramp pause", "ramp_pause", Arguments::none, "", "ramp pause",
     "hold the ramp at its current step", "bgctl ramp pause", Role::operate, false},
    {Verb::ramp_resume, "ramp resume", "ramp_resume", Arguments::none, "", "ramp resume",
     "continue a paused ramp", "bgctl ramp resume", Role::operate, false},
    {Verb::ramp_abort, "ramp abort", "ramp_abort", Arguments::none, "", "ramp abort",
     "end the ramp; weights stay where it left them", "bgctl ramp abort", Role::operate, false},
    {Verb::drain, "drain", "drain", Arguments::backend, "BACKEND", "drain BACKEND",
     "stop new requests to a backend; in-flight ones finish", "bgctl drain blue-1",
     Role::operate, false},
    {Verb::maint, "maint", "maint", Arguments::backend, "BACKEND", "maint BACKEND",
     "take a backend out entirely (maintenance)", "bgctl maint blue-1", Role::operate, false},
    {Verb::ready, "ready", "ready", Arguments::backend, "BACKEND", "ready BACKEND",
     "put a drained or maintained backend back in service", "bgctl ready blue-1",
     Role::operate, false},
    {Verb::reload, "reload", "reload", Arguments::none, "", "reload",
     "re-read the config file (flags given at start still apply): apply it whole or refuse it "
     "with its errors",
     "bgctl reload", Role::admin, false},
};
// clang-format on

constexpr const VerbSpec& spec_of(Verb verb) {
    for (const VerbSpec& spec : verb_table) {
        if (spec.verb == verb) {
            return spec;
        }
    }
    return verb_table[0];  // unreachable: every Verb has an entry (checked below)
}

constexpr bool every_verb_has_one_entry() {
    std::size_t i = 0;
    for (const VerbSpec& spec : verb_table) {
        if (static_cast<std::size_t>(spec.verb) != i++) {
            return false;
        }
    }
    return i == static_cast<std::size_t>(Verb::reload) + 1;
}
static_assert(every_verb_has_one_entry(), "verb_table: one entry per Verb, in enum order");

}  // namespace bg
