#include "access.hpp"

#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

namespace bg {

std::string Caller::describe() const {
    return "uid " + std::to_string(uid) + " pid " + std::to_string(pid);
}

namespace {

// The gids of the uid's groups: its primary gid and every supplementary group.
std::vector<gid_t> groups_of(std::uint32_t uid, std::uint32_t gid) {
    std::vector<gid_t> gids{static_cast<gid_t>(gid)};
    passwd pw{};
    passwd* found = nullptr;
    std::vector<char> buffer(16384);
    if (getpwuid_r(uid, &pw, buffer.data(), buffer.size(), &found) == 0 && found != nullptr) {
        int n = 64;
        std::vector<gid_t> list(static_cast<std::size_t>(n));
        if (getgrouplist(pw.pw_name, pw.pw_gid, list.data(), &n) < 0) {
            list.resize(static_cast<std::size_t>(n));
            getgrouplist(pw.pw_name, pw.pw_gid, list.data(), &n);
        }
        list.resize(static_cast<std::size_t>(std::max(n, 0)));
        gids.insert(gids.end(), list.begin(), list.end());
    }
    return gids;
}

bool member(const RoleMembers& members, std::uint32_t uid, const std::vector<gid_t>& gids) {
    if (std::find(members.uids.begin(), members.uids.end(), uid) != members.uids.end()) {
        return true;
    }
    for (const auto& name : members.groups) {
        group gr{};
        group* found = nullptr;
        std::vector<char> buffer(16384);
        if (getgrnam_r(name.c_str(), &gr, buffer.data(), buffer.size(), &found) == 0 &&
            found != nullptr && std::find(gids.begin(), gids.end(), gr.gr_gid) != gids.end()) {
            return true;
        }
    }
    return false;
}

}  // namespace

Role resolve_role(const ControlConfig& config, std::uint32_t uid, std::uint32_t gid) {
    if (uid == static_cast<std::uint32_t>(::geteuid())) {
        return Role::admin;
    }
    auto gids = groups_of(uid, gid);
    if (member(config.admin, uid, gids)) {
        return Role::admin;
    }
    if (member(config.operate, uid, gids)) {
        return Role::operate;
    }
    if (member(config.read, uid, gids)) {
        return Role::read;
    }
    return config.default_role;
}

Caller identify_peer(int fd, const ControlConfig& config) {
    Caller caller;
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        caller.role = Role::none;
        return caller;
    }
    caller.uid = cred.uid;
    caller.gid = cred.gid;
    caller.pid = cred.pid;
    caller.role = resolve_role(config, cred.uid, cred.gid);
    return caller;
}

}  // namespace bg
