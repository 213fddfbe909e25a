#pragma once
// StateStore: where routing state survives restarts. The Switchboard sees only this interface,
// so a fleet can later share one state through a store with compare-and-swap and watch (etcd)
// without the Switchboard knowing.

#include <optional>
#include <string>

#include "routing_state.hpp"

namespace bg {

struct StoreLoad {
    std::optional<RoutingState> state;  // nothing stored yet when empty and error is empty
    std::string error;                  // unreadable or corrupt: never a silent reset
};

class StateStore {
  public:
    virtual ~StateStore() = default;
    virtual StoreLoad load() = 0;
    // Stores `next` only if the stored version is still `expected_version` (0: nothing stored).
    // Durable when it returns true; on false, `error` says why and nothing changed.
    virtual bool save(const RoutingState& next, std::uint64_t expected_version,
                      std::string& error) = 0;
};

// A JSON file, replaced atomically: write a temporary file, fsync it, rename it over the old one,
// fsync the directory. A crash at any point leaves either the old or the new state.
class FileStateStore final : public StateStore {
  public:
    explicit FileStateStore(std::string path);
    StoreLoad load() override;
    bool save(const RoutingState& next, std::uint64_t expected_version,
              std::string& error) override;

  private:
    std::string path_;
    std::optional<std::uint64_t> stored_version_;  // what this process last read or wrote
};

// State that lives as long as the process: the quick start without --state-file.
class MemoryStateStore final : public StateStore {
  public:
    StoreLoad load() override { return {}; }
    bool save(const RoutingState& next, std::uint64_t expected_version,
              std::string& error) override {
        if (version_ != 0 && version_ != expected_version) {
            error = "state changed underneath";
            return false;
        }
        version_ = next.version;
        return true;
    }

  private:
    std::uint64_t version_ = 0;
};

}  // namespace bg
