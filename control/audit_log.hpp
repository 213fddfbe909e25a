#pragma once
// AuditLog: one JSON line per state-changing command, accepted, refused or cancelled, appended
// and flushed before the command's reply; the last records are kept in memory for `history`.
// Bounded: each entry's text fields are capped (with their length said), non-ASCII bytes a
// client sent are escaped so every line is valid UTF-8, and the file is rotated by size.

#include <boost/json/object.hpp>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <string>

namespace bg {

struct AuditLimits {
    std::uint64_t max_size = 10 << 20;  // bytes before the file is rotated
    unsigned keep_files = 5;            // rotated files kept: PATH.1 (newest) .. PATH.N
    std::size_t field_max = 1024;       // a longer text field is cut here
    std::size_t keep_records = 1000;    // in memory, for `history`
};

class AuditLog {
  public:
    // An empty path keeps records in memory only.
    explicit AuditLog(std::string path, AuditLimits limits = {});
    ~AuditLog();
    AuditLog(const AuditLog&) = delete;
    AuditLog& operator=(const AuditLog&) = delete;

    bool open(std::string& error);
    // SIGUSR1: logrotate moved the file; records go to a new one at the path.
    bool reopen(std::string& error);
    // Appends and flushes; false when the write failed (the record is still kept in memory).
    bool append(boost::json::object record);
    // The last n records, oldest first.
    std::deque<std::string> last(std::size_t n) const;

  private:
    bool open_file(std::string& error);
    void rotate();

    std::string path_;
    AuditLimits limits_;
    std::FILE* file_ = nullptr;
    std::uint64_t size_ = 0;  // of the current file
    std::deque<std::string> recent_;
};

// The record as written: every string made valid UTF-8 (bytes outside printable ASCII become
// \xNN text), and each top-level text field over `field_max` bytes cut, with "<field>_length".
boost::json::object bounded_record(boost::json::object record, std::size_t field_max);

}  // namespace bg
