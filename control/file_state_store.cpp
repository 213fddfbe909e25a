#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "state_store.hpp"

namespace bg {

FileStateStore::FileStateStore(std::string path) : path_(std::move(path)) {}

StoreLoad FileStateStore::load() {
    StoreLoad result;
    std::ifstream in(path_, std::ios::binary);
    if (!in) {
        if (errno == ENOENT) {
            stored_version_ = 0;
            return result;  // nothing stored yet
        }
        result.error = "cannot read state file " + path_ + ": " + std::strerror(errno);
        return result;
    }
    std::ostringstream text;
    text << in.rdbuf();
    boost::system::error_code ec;
    boost::json::value json = boost::json::parse(text.str(), ec);
    if (ec) {
        result.error = "state file " + path_ + " is not valid JSON (" + ec.message() +
                       "); fix or remove it to start from the config";
        return result;
    }
    std::string why;
    result.state = routing_state_from_json(json, why);
    if (!result.state) {
        result.error = "state file " + path_ + " is corrupt: " + why +
                       "; fix or remove it to start from the config";
        return result;
    }
    stored_version_ = result.state->version;
    if (const auto* mark =
            json.is_object() ? json.as_object().if_contains("fleet_unwritten") : nullptr;
        mark != nullptr && mark->is_object()) {
        const auto& m = mark->as_object();
        const auto* version = m.if_contains("base_version");
        const auto* revision = m.if_contains("base_revision");
        const auto* rollback = m.if_contains("rollback");
        if (version == nullptr || revision == nullptr || !version->is_number() ||
            !revision->is_number()) {
            result.state.reset();
            result.error = "state file " + path_ + " is corrupt: a bad fleet_unwritten mark" +
                           "; fix or remove it to start from the config";
            return result;
        }
        UnwrittenWayBack way;
        way.base.version = version->to_number<std::uint64_t>();
        way.base.revision = revision->to_number<std::int64_t>();
        way.rollback = rollback != nullptr && rollback->is_bool() && rollback->as_bool();
        result.unwritten = way;
    }
    return result;
}

namespace {

bool write_all(int fd, const std::string& data) {
    std::size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return false;
        }
        done += static_cast<std::size_t>(n);
    }
    return true;
}

}  // namespace

SaveOutcome FileStateStore::save(const RoutingState& next, StoredVersion expected,
                                 const std::atomic<bool>* given_up) {
    if (stored_version_ && *stored_version_ != expected.version && !expected.whatever_stored) {
        SaveOutcome refused;
        refused.conflict = true;
        refused.error = "state changed underneath (stored version " +
                        std::to_string(*stored_version_) + ", expected " +
                        std::to_string(expected.version) + ")";
        return refused;
    }
    return overwrite(next, given_up);
}

SaveOutcome FileStateStore::overwrite(const RoutingState& next, const std::atomic<bool>* given_up,
                                      const std::optional<UnwrittenWayBack>& unwritten) {
    SaveOutcome outcome;
    std::string& error = outcome.error;
    namespace fs = std::filesystem;
    const fs::path target(path_);
    const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
    std::error_code fs_error;
    fs::create_directories(dir, fs_error);
    const std::string temp = path_ + ".tmp";
    boost::json::object json = to_json(next);
    if (unwritten) {
        json["fleet_unwritten"] = boost::json::object{{"base_version", unwritten->base.version},
                                                      {"base_revision", unwritten->base.revision},
                                                      {"rollback", unwritten->rollback}};
    }
    const std::string data = boost::json::serialize(json) + "\n";

    int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) {
        error = "cannot write state file " + temp + ": " + std::strerror(errno);
        return outcome;
    }
    bool ok = write_all(fd, data) && ::fsync(fd) == 0;
    int saved = errno;
    ::close(fd);
    if (!ok) {
        ::unlink(temp.c_str());
        error = "cannot write state file " + temp + ": " + std::strerror(saved);
        return outcome;
    }
    // The stall is in the open, the write or the fsync; the rename is what makes a save count.
    // One given up on was answered as failed (a change refused, withdrawn): it must not land.
    if (given_up != nullptr && given_up->load()) {
        ::unlink(temp.c_str());
        error = "given up on after control.disk_timeout; not stored";
        return outcome;
    }
    if (::rename(temp.c_str(), path_.c_str()) != 0) {
        saved = errno;
        ::unlink(temp.c_str());
        error = "cannot replace state file " + path_ + ": " + std::strerror(saved);
        return outcome;
    }
    // The rename is durable only once the directory entry is.
    // Failing that, the new file is in place all the same (a restart reads it, the next save
    // replaces it), so this is no refusal: the change must not be withdrawn from the workers
    // while the disk holds it. It is said, not hidden.
    int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0 || ::fsync(dir_fd) != 0) {
        outcome.warning = "the state file " + path_ +
                          " was replaced but its directory could not be synced (" +
                          std::strerror(errno) + "): a power loss may bring back the state before";
    }
    if (dir_fd >= 0) {
        ::close(dir_fd);
    }
    stored_version_ = next.version;
    outcome.ok = true;
    outcome.revision = next.revision;
    return outcome;
}

}  // namespace bg
