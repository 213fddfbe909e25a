#include "access_log.hpp"

#include "poll_until.hpp"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace bg {

AccessLogRing::AccessLogRing(std::size_t capacity) : slots_(capacity + 1) {}

bool AccessLogRing::push(std::string&& line) {
    const std::size_t tail = tail_.load(std::memory_order_relaxed);
    const std::size_t next = (tail + 1) % slots_.size();
    if (next == head_.load(std::memory_order_acquire)) {
        return false;
    }
    slots_[tail] = std::move(line);
    tail_.store(next, std::memory_order_release);
    return true;
}

bool AccessLogRing::pop(std::string& line) {
    const std::size_t head = head_.load(std::memory_order_relaxed);
    if (head == tail_.load(std::memory_order_acquire)) {
        return false;
    }
    line = std::move(slots_[head]);
    head_.store((head + 1) % slots_.size(), std::memory_order_release);
    return true;
}

AccessLog::AccessLog(std::string target, std::size_t workers, std::size_t capacity)
    : target_(std::move(target)) {
    for (std::size_t i = 0; i < workers; ++i) {
        rings_.push_back(std::make_unique<AccessLogRing>(capacity));
    }
}

AccessLog::~AccessLog() {
    stop();
    if (file_ != nullptr && file_ != stdout) {
        std::fclose(file_);
    }
}

bool AccessLog::open(std::string& error) {
    return open_file(error);
}

bool AccessLog::open_file(std::string& error) {
    if (target_ == "stdout") {
        file_ = stdout;
        return true;
    }
    std::FILE* next = std::fopen(target_.c_str(), "ae");
    if (next == nullptr) {
        error = "cannot open access log " + target_ + ": " + std::strerror(errno);
        return false;
    }
    if (file_ != nullptr && file_ != stdout) {
        std::fclose(file_);
    }
    file_ = next;
    return true;
}

void AccessLog::start() {
    writer_ = std::thread([this] { run(); });
}

bool AccessLog::stop(std::chrono::milliseconds wait) {
    if (!writer_.joinable()) {
        return true;
    }
    stopping_.store(true, std::memory_order_relaxed);
    if (wait != std::chrono::milliseconds::max() &&
        !poll_until(std::chrono::steady_clock::now() + wait, [this] { return finished_.load(); })) {
        return false;  // stuck in the file (a stalled disk): not joinable now
    }
    writer_.join();
    return true;
}

void AccessLog::submit(std::size_t index, std::string&& line) {
    if (!rings_[index]->push(std::move(line))) {
        dropped_.fetch_add(1, std::memory_order_relaxed);
    }
}

void AccessLog::run() {
    std::string line;
    for (;;) {
        if (reopen_.exchange(false, std::memory_order_relaxed)) {
            std::string error;
            if (!open_file(error)) {
                spdlog::error("{} (keeping the old file)", error);
            }
        }
        bool any = false;
        for (auto& ring : rings_) {
            while (ring->pop(line)) {
                any = true;
                line.push_back('\n');
                std::fwrite(line.data(), 1, line.size(), file_);
                written_.fetch_add(1, std::memory_order_relaxed);
            }
        }
        if (any) {
            std::fflush(file_);
        } else if (stopping_.load(std::memory_order_relaxed)) {
            finished_.store(true);
            return;
        } else {
            // Idle: a short sleep keeps the writer cheap and the lines timely.
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    }
}

}  // namespace bg
