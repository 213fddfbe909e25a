#include "audit_log.hpp"

#include <unistd.h>

#include <boost/json/serialize.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace bg {

AuditLog::AuditLog(std::string path, std::size_t keep) : path_(std::move(path)), keep_(keep) {}

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
    // Earlier records feed `history` across restarts.
    {
        std::ifstream in(path_);
        std::string line;
        while (std::getline(in, line)) {
            if (!line.empty()) {
                recent_.push_back(line);
                if (recent_.size() > keep_) {
                    recent_.pop_front();
                }
            }
        }
    }
    file_ = std::fopen(path_.c_str(), "ae");
    if (file_ == nullptr) {
        error = "cannot open audit log " + path_ + ": " + std::strerror(errno);
        return false;
    }
    return true;
}

bool AuditLog::append(const boost::json::object& record) {
    std::string line = boost::json::serialize(record);
    recent_.push_back(line);
    if (recent_.size() > keep_) {
        recent_.pop_front();
    }
    if (file_ == nullptr) {
        return path_.empty();
    }
    line.push_back('\n');
    bool ok =
        std::fwrite(line.data(), 1, line.size(), file_) == line.size() && std::fflush(file_) == 0;
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
