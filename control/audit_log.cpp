#include "audit_log.hpp"

#include <unistd.h>

#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

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

AuditLog::AuditLog(std::string path, AuditLimits limits)
    : path_(std::move(path)), limits_(limits) {}

AuditLog::~AuditLog() {
    if (file_ != nullptr) {
        std::fclose(file_);
    }
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
    return open_file(error);
}

bool AuditLog::open_file(std::string& error) {
    file_ = std::fopen(path_.c_str(), "ae");
    if (file_ == nullptr) {
        error = "cannot open audit log " + path_ + ": " + std::strerror(errno);
        return false;
    }
    std::error_code ec;
    const auto size = std::filesystem::file_size(path_, ec);
    size_ = ec ? 0 : size;
    return true;
}

bool AuditLog::reopen(std::string& error) {
    if (path_.empty()) {
        return true;
    }
    if (file_ != nullptr) {
        std::fclose(file_);
        file_ = nullptr;
    }
    return open_file(error);
}

// PATH -> PATH.1 -> PATH.2 ... PATH.keep; the oldest beyond keep is removed.
void AuditLog::rotate() {
    std::fclose(file_);
    file_ = nullptr;
    std::error_code ignored;
    namespace fs = std::filesystem;
    if (limits_.keep_files == 0) {
        fs::remove(path_, ignored);
    } else {
        fs::remove(path_ + "." + std::to_string(limits_.keep_files), ignored);
        for (unsigned k = limits_.keep_files; k > 1; --k) {
            fs::rename(path_ + "." + std::to_string(k - 1), path_ + "." + std::to_string(k),
                       ignored);
        }
        fs::rename(path_, path_ + ".1", ignored);
    }
    std::string error;
    open_file(error);
}

bool AuditLog::append(json::object record) {
    std::string line = json::serialize(bounded_record(std::move(record), limits_.field_max));
    recent_.push_back(line);
    if (recent_.size() > limits_.keep_records) {
        recent_.pop_front();
    }
    if (path_.empty()) {
        return true;
    }
    line.push_back('\n');
    if (file_ != nullptr && size_ > 0 && size_ + line.size() > limits_.max_size) {
        rotate();
    }
    std::string error;
    if (file_ == nullptr && !open_file(error)) {
        return false;  // said in the reply; the next record tries to open it again
    }
    const bool ok =
        std::fwrite(line.data(), 1, line.size(), file_) == line.size() && std::fflush(file_) == 0;
    size_ += ok ? line.size() : 0;
    return ok;
}

std::deque<std::string> AuditLog::last(std::size_t n) const {
    std::deque<std::string> out;
    std::size_t start = recent_.size() > n ? recent_.size() - n : 0;
    for (std::size_t i = start; i < recent_.size(); ++i) {
        out.push_back(recent_[i]);
    }
    return out;
}

}  // namespace bg
