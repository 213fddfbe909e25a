#pragma once
// AuditLog: one JSON line per state-changing command, accepted, refused or cancelled, appended
// and flushed before the command's reply (or the reply says it is not written yet); the last
// records are kept in memory for `history`.
// Bounded: each entry's text fields are capped (with their length said), non-ASCII bytes a
// client sent are escaped so every line is valid UTF-8, and the file is rotated by size.

#include <boost/json/object.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>

namespace bg {

struct AuditLimits {
    std::uint64_t max_size = 10 << 20;  // bytes before the file is rotated
    unsigned keep_files = 5;            // rotated files kept: PATH.1 (newest) .. PATH.N
    std::size_t field_max = 1024;       // a longer text field is cut here
    std::size_t keep_records = 1000;    // in memory, for `history`
    // How long append waits for its record to be written before it answers "not yet".
    std::chrono::milliseconds write_wait{100};
};

// Writes happen on a thread of the log's own, so a stalled disk or mount (or a FIFO at the
// path) never holds the control thread: a record not written within write_wait is answered
// "not written yet", and while the writer stays stuck later records queue (at most max_size
// bytes of them; past that they are dropped, counted and said) without waiting.
class AuditLog {
  public:
    // An empty path keeps records in memory only.
    explicit AuditLog(std::string path, AuditLimits limits = {});
    // finish(write_wait).
    ~AuditLog();
    AuditLog(const AuditLog&) = delete;
    AuditLog& operator=(const AuditLog&) = delete;

    // At start, before any append: reads the records `history` shows and opens the file.
    bool open(std::string& error);
    // SIGUSR1: logrotate moved the file; later records go to a new one at the path (done by
    // the writer, in order with the records; a failure is logged).
    void reopen();
    // Queues the record and waits up to write_wait for it to be written and flushed: false
    // when it failed or is not written by then (the record is kept in memory, and still
    // written once the writer can, unless the backlog is full).
    bool append(boost::json::object record);
    // The last n records, oldest first.
    std::deque<std::string> last(std::size_t n) const;
    // Lets the writer finish the queued records for up to `wait`; false (the writer left
    // behind, stuck in the disk) when it has not. No append after it.
    bool finish(std::chrono::milliseconds wait);
    // Records dropped because the writer was stuck with a full backlog.
    std::uint64_t dropped() const;

  private:
    struct Writer;  // shared with the writer thread, which may outlive this object

    std::string path_;
    AuditLimits limits_;
    std::deque<std::string> recent_;
    std::shared_ptr<Writer> writer_;
};

// The record as written: every string made valid UTF-8 (bytes outside printable ASCII become
// \xNN text), and each top-level text field over `field_max` bytes cut, with "<field>_length".
boost::json::object bounded_record(boost::json::object record, std::size_t field_max);

}  // namespace bg
