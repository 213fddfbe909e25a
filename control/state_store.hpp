#pragma once
// StateStore: where routing state survives restarts. The Switchboard sees only this interface,
// so a fleet can later share one state through a store with compare-and-swap and watch (etcd)
// without the Switchboard knowing.

#include <atomic>
#include <optional>
#include <string>

#include "routing_state.hpp"

namespace bg {

// Which stored state a change replaces: its version, and in a fleet its revision.
struct StoredVersion {
    std::uint64_t version = 0;  // 0: nothing stored
    std::int64_t revision = 0;
    // Outside a fleet, after a save given up on (disk_timeout) that may or may not have
    // landed: replace whatever is stored.
    bool whatever_stored = false;
};

// In a fleet's state file (its cache): the state is this instance's own way back (a guard's
// revert, a rollback, a failover) that the fleet's store has not taken yet, staged on the
// fleet's state `base`. A restart serves it and writes it to the fleet, not the fleet's.
struct UnwrittenWayBack {
    StoredVersion base;
    bool rollback = false;  // an operator's rollback (staged again as one if the fleet moved)
};

struct StoreLoad {
    std::optional<RoutingState> state;          // nothing stored yet when empty and error is empty
    std::string error;                          // unreadable or corrupt: never a silent reset
    std::optional<UnwrittenWayBack> unwritten;  // a fleet's cache only
};

struct SaveOutcome {
    bool ok = false;            // durable (in a fleet: committed) when true
    std::string error;          // why not; nothing changed
    bool conflict = false;      // another change was stored first
    bool unreachable = false;   // the store could not be reached (a fleet's etcd)
    bool uncertain = false;     // unreachable after the request was sent: it may have been stored
    std::int64_t revision = 0;  // in a fleet: the revision that now holds the state
    std::optional<RoutingState> current;  // on a conflict, what is stored, when known
    // Stored, but not as durably as promised (a failed directory fsync after the rename: the
    // file is the new state, which a power loss may still undo). Said in the reply.
    std::string warning;
};

class StateStore {
  public:
    virtual ~StateStore() = default;
    virtual StoreLoad load() = 0;
    // Stores `next` only if what is stored is still `expected`. Any thread, one call at a time.
    // `given_up`, when given, is set by another thread once the caller stopped waiting (a
    // stalled disk): a file store then leaves what it holds as it was, if it still can.
    virtual SaveOutcome save(const RoutingState& next, StoredVersion expected,
                             const std::atomic<bool>* given_up = nullptr) = 0;
    // Shared by a fleet: a change is live only once the store has it, and others' changes
    // arrive from the store (FleetStore).
    virtual bool shared() const { return false; }
};

// A JSON file, replaced atomically: write a temporary file, fsync it, rename it over the old one,
// fsync the directory. A crash at any point leaves either the old or the new state.
class FileStateStore final : public StateStore {
  public:
    explicit FileStateStore(std::string path);
    StoreLoad load() override;
    SaveOutcome save(const RoutingState& next, StoredVersion expected,
                     const std::atomic<bool>* given_up = nullptr) override;
    // Writes `state` whatever is stored: the fleet's local cache of its last state (with
    // `unwritten`: one of its own the fleet has not taken yet).
    SaveOutcome overwrite(const RoutingState& state, const std::atomic<bool>* given_up = nullptr,
                          const std::optional<UnwrittenWayBack>& unwritten = std::nullopt);

  private:
    std::string path_;
    std::optional<std::uint64_t> stored_version_;  // what this process last read or wrote
};

// State that lives as long as the process: the quick start without --state-file.
class MemoryStateStore final : public StateStore {
  public:
    StoreLoad load() override { return {}; }
    SaveOutcome save(const RoutingState& next, StoredVersion expected,
                     const std::atomic<bool>* = nullptr) override {
        SaveOutcome outcome;
        if (version_ != 0 && version_ != expected.version && !expected.whatever_stored) {
            outcome.error = "state changed underneath";
            outcome.conflict = true;
            return outcome;
        }
        version_ = next.version;
        outcome.ok = true;
        return outcome;
    }

  private:
    std::uint64_t version_ = 0;
};

}  // namespace bg
