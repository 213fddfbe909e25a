#include "audit_log.hpp"

#include <unistd.h>

#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>
#include <utility>

#include <spdlog/spdlog.h>

namespace bg {

namespace json = boost::json;

namespace {

// Commands are printable ASCII by protocol; anything else a client sent is shown, not trusted.
bool needs_escape(std::string_view s) {
    for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x7f || (u < 0x20 && c != '\t')) {
            return true;
        }
    }
    return false;
}

std::string escape_bytes(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x7f || (u < 0x20 && c != '\t')) {
            char hex[5];
            std::snprintf(hex, sizeof hex, "\\x%02x", u);
            out += hex;
        } else {
            out.push_back(c);
        }
    }
    return out;
}

void escape_strings(json::value& v) {
    if (v.is_string()) {
        if (needs_escape(v.as_string())) {
            v = escape_bytes(v.as_string());
        }
    } else if (v.is_object()) {
        for (auto& field : v.as_object()) {
            escape_strings(field.value());
        }
    } else if (v.is_array()) {
        for (auto& item : v.as_array()) {
            escape_strings(item);
        }
    }
}

}  // namespace

json::object bounded_record(json::object record, std::size_t field_max) {
    json::object lengths;
    for (auto& field : record) {
        json::value& v = field.value();
        if (v.is_string() && v.as_string().size() > field_max) {
            lengths[std::string(field.key()) + "_length"] = v.as_string().size();
            v = std::string(v.as_string().subview(0, field_max)) + "...";
        }
        escape_strings(v);
    }
    for (auto& length : lengths) {
        record[length.key()] = length.value();
    }
    return record;
}

// The file and the queue to it. The writer thread owns the file; the rest is under `lock`.
struct AuditLog::Writer {
    Writer(std::string file_path, AuditLimits file_limits)
        : path(std::move(file_path)), limits(file_limits) {}

    const std::string path;
    const AuditLimits limits;
    std::FILE* file = nullptr;  // the writer thread's (before it starts: open's)
    std::uint64_t size = 0;     // of the current file

    std::mutex lock;
    std::condition_variable work;     // the writer waits on it for lines, a reopen or the end
    std::condition_variable written;  // append and the destructor wait on it
    std::deque<std::string> queue;
    std::size_t queued_bytes = 0;
    std::uint64_t queued = 0;        // sequence number of the last line queued
    std::uint64_t done = 0;          // of the last line the writer handled
    std::uint64_t failed = 0;        // of the last line it could not write
    bool reopen_asked = false;       // ordered with the lines: taken with the batch before it
    std::uint64_t reopen_after = 0;  // the line after which it was asked
    bool stuck = false;              // an append gave up waiting; cleared when caught up
    bool stopping = false;
    bool finished = false;
    std::uint64_t dropped = 0;
    bool drop_said = false;  // logged in this stall

    bool open_file(std::string& error);
    void rotate();
    bool write_line(const std::string& line);
    void run();
};

bool AuditLog::Writer::open_file(std::string& error) {
    file = std::fopen(path.c_str(), "ae");
    if (file == nullptr) {
        error = "cannot open audit log " + path + ": " + std::strerror(errno);
        return false;
    }
    std::error_code ec;
    const auto bytes = std::filesystem::file_size(path, ec);
    size = ec ? 0 : bytes;
    return true;
}

// PATH -> PATH.1 -> PATH.2 ... PATH.keep; the oldest beyond keep is removed.
void AuditLog::Writer::rotate() {
    std::fclose(file);
    file = nullptr;
    std::error_code ignored;
    namespace fs = std::filesystem;
    if (limits.keep_files == 0) {
        fs::remove(path, ignored);
    } else {
        fs::remove(path + "." + std::to_string(limits.keep_files), ignored);
        for (unsigned k = limits.keep_files; k > 1; --k) {
            fs::rename(path + "." + std::to_string(k - 1), path + "." + std::to_string(k), ignored);
        }
        fs::rename(path, path + ".1", ignored);
    }
    std::string error;
    open_file(error);
}

bool AuditLog::Writer::write_line(const std::string& line) {
    if (file != nullptr && size > 0 && size + line.size() > limits.max_size) {
        rotate();
    }
    std::string error;
    if (file == nullptr && !open_file(error)) {
        return false;  // said in the reply; the next record tries to open it again
    }
    const bool ok =
        std::fwrite(line.data(), 1, line.size(), file) == line.size() && std::fflush(file) == 0;
    size += ok ? line.size() : 0;
    return ok;
}

void AuditLog::Writer::run() {
    std::unique_lock guard(lock);
    for (;;) {
        work.wait(guard, [this] { return !queue.empty() || reopen_asked || stopping; });
        if (queue.empty() && !reopen_asked) {
            break;  // stopping, and everything is written
        }
        // A reopen asked after line N comes after line N and before N + 1.
        const std::uint64_t first = done + 1;
        std::size_t take = queue.size();
        bool reopen_now = false;
        if (reopen_asked && reopen_after < first + take) {
            take = static_cast<std::size_t>(reopen_after + 1 - first);
            reopen_now = true;
        }
        std::deque<std::string> batch;
        for (std::size_t i = 0; i < take; ++i) {
            queued_bytes -= queue.front().size();
            batch.push_back(std::move(queue.front()));
            queue.pop_front();
        }
        if (reopen_now) {
            reopen_asked = false;
        }
        guard.unlock();
        std::uint64_t last_failed = 0;
        for (std::size_t i = 0; i < batch.size(); ++i) {
            if (!write_line(batch[i])) {
                last_failed = first + i;
            }
        }
        if (reopen_now) {
            if (file != nullptr) {
                std::fclose(file);
                file = nullptr;
            }
            std::string error;
            if (!open_file(error)) {
                spdlog::error("SIGUSR1: {}", error);
            }
        }
        guard.lock();
        done = first + batch.size() - 1;
        failed = last_failed != 0 ? last_failed : failed;
        if (queue.empty()) {
            stuck = false;
            drop_said = false;
        }
        written.notify_all();
    }
    if (file != nullptr) {
        std::fclose(file);
        file = nullptr;
    }
    finished = true;
    written.notify_all();
}

AuditLog::AuditLog(std::string path, AuditLimits limits) : path_(std::move(path)), limits_(limits) {
    if (!path_.empty()) {
        writer_ = std::make_shared<Writer>(path_, limits_);
        std::thread([writer = writer_] { writer->run(); }).detach();
    }
}

AuditLog::~AuditLog() {
    finish(limits_.write_wait);
}

bool AuditLog::finish(std::chrono::milliseconds wait) {
    if (writer_ == nullptr) {
        return true;
    }
    std::unique_lock guard(writer_->lock);
    if (writer_->finished) {
        return true;
    }
    writer_->stopping = true;
    writer_->work.notify_one();
    // Detached: if it is stuck in the disk it finishes (or not) on its own, owning its state.
    if (!writer_->written.wait_for(guard, wait, [this] { return writer_->finished; })) {
        spdlog::error(
            "the audit log's writer is stuck: records from line {} on are not "
            "written to {}",
            writer_->done + 1, path_);
        return false;
    }
    return true;
}

bool AuditLog::open(std::string& error) {
    if (path_.empty()) {
        return true;
    }
    std::error_code ignored;
    std::filesystem::path p(path_);
    if (p.has_parent_path()) {
        std::filesystem::create_directories(p.parent_path(), ignored);
    }
    // Earlier records feed `history` across restarts (the file is bounded by rotation).
    {
        std::ifstream in(path_);
        std::string line;
        while (std::getline(in, line)) {
            if (!line.empty()) {
                recent_.push_back(line);
                if (recent_.size() > limits_.keep_records) {
                    recent_.pop_front();
                }
            }
        }
    }
    // Before any record: the writer touches the file only for one.
    std::lock_guard guard(writer_->lock);
    return writer_->open_file(error);
}

void AuditLog::reopen() {
    if (writer_ == nullptr) {
        return;
    }
    std::lock_guard guard(writer_->lock);
    writer_->reopen_asked = true;
    writer_->reopen_after = writer_->queued;
    writer_->work.notify_one();
}

bool AuditLog::append(json::object record) {
    std::string line = json::serialize(bounded_record(std::move(record), limits_.field_max));
    recent_.push_back(line);
    if (recent_.size() > limits_.keep_records) {
        recent_.pop_front();
    }
    if (writer_ == nullptr) {
        return true;
    }
    line.push_back('\n');
    Writer& w = *writer_;
    std::unique_lock guard(w.lock);
    if (!w.queue.empty() && w.queued_bytes + line.size() > limits_.max_size) {
        // Stuck for a whole file's worth of records: the rest are kept in memory only.
        ++w.dropped;
        if (!std::exchange(w.drop_said, true)) {
            spdlog::error(
                "the audit log's writer is stuck with {} bytes queued: records are "
                "dropped from {} (kept for history only) until it catches up",
                w.queued_bytes, path_);
        }
        return false;
    }
    w.queued_bytes += line.size();
    w.queue.push_back(std::move(line));
    const std::uint64_t mine = ++w.queued;
    w.work.notify_one();
    if (w.stuck) {
        return false;  // queued behind records it has not written yet: no wait
    }
    if (!w.written.wait_for(guard, limits_.write_wait, [&w, mine] { return w.done >= mine; })) {
        w.stuck = true;
        spdlog::error(
            "the audit log's writer has not written a record for {} ms: {} stalled? "
            "Records queue in memory meanwhile",
            limits_.write_wait.count(), path_);
        return false;
    }
    return w.failed < mine;
}

std::deque<std::string> AuditLog::last(std::size_t n) const {
    std::deque<std::string> out;
    std::size_t start = recent_.size() > n ? recent_.size() - n : 0;
    for (std::size_t i = start; i < recent_.size(); ++i) {
        out.push_back(recent_[i]);
    }
    return out;
}

std::uint64_t AuditLog::dropped() const {
    if (writer_ == nullptr) {
        return 0;
    }
    std::lock_guard guard(writer_->lock);
    return writer_->dropped;
}

}  // namespace bg
