#pragma once
// AuditLog: one JSON line per state-changing command, accepted or refused, appended and flushed
// before the command's reply; the last records are kept in memory for `history`.

#include <boost/json/object.hpp>
#include <cstdio>
#include <deque>
#include <string>

namespace bg {

class AuditLog {
  public:
    // An empty path keeps records in memory only.
    explicit AuditLog(std::string path, std::size_t keep = 1000);
    ~AuditLog();
    AuditLog(const AuditLog&) = delete;
    AuditLog& operator=(const AuditLog&) = delete;

    bool open(std::string& error);
    // Appends and flushes; false when the write failed (the record is still kept in memory).
    bool append(const boost::json::object& record);
    // The last n records, oldest first.
    std::deque<std::string> last(std::size_t n) const;

  private:
    std::string path_;
    std::size_t keep_;
    std::FILE* file_ = nullptr;
    std::deque<std::string> recent_;
};

}  // namespace bg
