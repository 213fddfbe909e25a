#pragma once
// Who is on the other end of the control socket, and what they may do.

#include <sys/types.h>

#include <string>

#include "config.hpp"

namespace bg {

struct Caller {
    std::uint32_t uid = 0;
    std::uint32_t gid = 0;
    std::int32_t pid = 0;
    Role role = Role::none;
    std::string describe() const;  // "uid 1000 pid 4242"
};

// The highest role the uid or any of its groups has; the process's own uid is always admin.
Role resolve_role(const ControlConfig& config, std::uint32_t uid, std::uint32_t gid);

// The peer of a connected UNIX socket (SO_PEERCRED), with its role.
Caller identify_peer(int fd, const ControlConfig& config);

}  // namespace bg
