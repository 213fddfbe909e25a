#pragma once
// AccessLog: one JSON line per request, written off the data path. Each worker owns a bounded
// single-producer ring; one writer thread drains them all. A full ring drops the line and
// counts it: the proxy never blocks on its log. SIGUSR1 reopens the file (logrotate).

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace bg {

// One worker's queue of finished lines. Worker thread pushes; writer thread pops.
class AccessLogRing {
  public:
    explicit AccessLogRing(std::size_t capacity);
    bool push(std::string&& line);  // false when full
    bool pop(std::string& line);

  private:
    std::vector<std::string> slots_;
    alignas(64) std::atomic<std::size_t> head_{0};  // next to pop (writer)
    alignas(64) std::atomic<std::size_t> tail_{0};  // next to push (worker)
};

class AccessLog {
  public:
    // target: "stdout" or a file path. One ring per worker, `capacity` lines each.
    AccessLog(std::string target, std::size_t workers, std::size_t capacity);
    ~AccessLog();
    AccessLog(const AccessLog&) = delete;
    AccessLog& operator=(const AccessLog&) = delete;

    bool open(std::string& error);
    void start();
    // Writes what is queued, then ends the writer thread; false (the thread left running) when
    // it has not ended within `wait`, stuck in the file.
    bool stop(std::chrono::milliseconds wait = std::chrono::milliseconds::max());
    void reopen() { reopen_.store(true, std::memory_order_relaxed); }  // any thread

    // Worker `index`'s thread only.
    void submit(std::size_t index, std::string&& line);
    std::uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
    std::uint64_t written() const { return written_.load(std::memory_order_relaxed); }

  private:
    void run();
    bool open_file(std::string& error);

    std::string target_;
    std::vector<std::unique_ptr<AccessLogRing>> rings_;
    std::FILE* file_ = nullptr;
    std::thread writer_;
    std::atomic<bool> stopping_{false};
    std::atomic<bool> finished_{false};  // the writer wrote all and ended
    std::atomic<bool> reopen_{false};
    std::atomic<std::uint64_t> dropped_{0};
    std::atomic<std::uint64_t> written_{0};
};

}  // namespace bg
