#pragma once
// EtcdClient: etcd's v3 API, spoken through its HTTP/JSON gateway (/v3/kv/range, /v3/kv/txn,
// /v3/watch, /v3/lease/*) with Beast and Boost.JSON, both dependencies already. The other road,
// gRPC, needs etcd's .proto files (Debian packages none for C++) compiled by protoc and
// libgrpc++: vendored code and a code generator in the build, for a client that makes a few
// calls a second. The gateway is part of every etcd 3.4+ server and its JSON is the protobuf's.
//
// Every call goes to the endpoint that last answered, and on any failure to the next ones in
// turn: one call fails only when no endpoint answers it. Control thread (any one executor).

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "config.hpp"

namespace bg {

struct EtcdKeyValue {
    std::string key;
    std::string value;
    std::int64_t mod_revision = 0;
    std::int64_t create_revision = 0;
    std::int64_t lease = 0;
};

struct EtcdRange {
    std::string error;          // empty: the call succeeded
    std::int64_t revision = 0;  // the store's revision when it answered
    std::vector<EtcdKeyValue> kvs;
};

struct EtcdTxn {
    std::string error;
    bool succeeded = false;               // false with no error: the compare failed
    std::int64_t revision = 0;            // after the put, when it succeeded
    std::optional<EtcdKeyValue> current;  // the key as it is, when the compare failed
    // With an error: the request reached etcd before the answer was lost (a member that failed
    // or timed out mid-request), so it may have applied.
    bool maybe_applied = false;
};

struct EtcdLease {
    std::string error;
    std::int64_t id = 0;
    std::int64_t ttl = 0;  // seconds; 0 after a keepalive: the lease is gone
};

struct EtcdWatchEvent {
    bool deleted = false;
    EtcdKeyValue kv;  // a deleted key has only its key and mod_revision
};

// Why a watch stream ended.
struct EtcdWatchEnd {
    std::string error;                  // empty: cancelled by the caller
    std::int64_t compacted_before = 0;  // > 0: the start revision is compacted; read afresh
    std::int64_t next_revision = 0;     // where to resume
};

// Lets the owner of a watch end it (e.g. at shutdown). Control thread.
class EtcdWatchHandle {
  public:
    void cancel();
    bool cancelled() const { return cancelled_; }

  private:
    friend class EtcdClient;
    std::function<void()> cancel_;
    bool cancelled_ = false;
};

class EtcdClient {
  public:
    EtcdClient(std::vector<HostPort> endpoints, Duration request_timeout,
               std::shared_ptr<const BackendTlsContext> tls = nullptr);

    // The key, or with `prefix` every key that starts with it.
    boost::asio::awaitable<EtcdRange> range(std::string key, bool prefix = false);
    // Puts `value` only if the key's mod_revision is still `expected` (0: the key is absent).
    // A retried put that had in fact landed is recognised (the key holds `value`): succeeded.
    boost::asio::awaitable<EtcdTxn> put_if(std::string key, std::string value,
                                           std::int64_t expected, std::int64_t lease = 0);
    boost::asio::awaitable<EtcdTxn> put(std::string key, std::string value, std::int64_t lease = 0);
    // Takes `key` only while nobody holds it (create_revision 0), under `lease`.
    boost::asio::awaitable<EtcdTxn> create(std::string key, std::string value, std::int64_t lease);
    boost::asio::awaitable<EtcdTxn> erase(std::string key);
    boost::asio::awaitable<EtcdLease> grant(std::chrono::seconds ttl);
    boost::asio::awaitable<EtcdLease> keepalive(std::int64_t id);
    boost::asio::awaitable<EtcdLease> revoke(std::int64_t id);
    // Streams the events on keys under `prefix` from `start_revision` to `on_events` (with the
    // revision of each batch) until the stream ends, fails or `handle` cancels it.
    boost::asio::awaitable<EtcdWatchEnd> watch(
        std::string prefix, std::int64_t start_revision,
        std::function<void(std::int64_t, const std::vector<EtcdWatchEvent>&)> on_events,
        std::shared_ptr<EtcdWatchHandle> handle);

    // "127.0.0.1:2379": the endpoint calls go to first.
    std::string current_endpoint() const;

  private:
    struct Answer {
        std::string error;
        boost::json::object body;
        bool delivered = false;  // with an error: the request was sent whole to an endpoint
    };
    // One JSON POST: to the current endpoint, then to each other one until one answers.
    boost::asio::awaitable<Answer> call(const char* path, const boost::json::object& body);
    template <class Stream>
    boost::asio::awaitable<Answer> exchange(Stream& stream, const HostPort& endpoint,
                                            const char* path, const std::string& body);
    template <class Stream>
    boost::asio::awaitable<EtcdWatchEnd> stream_watch(
        Stream& stream, const HostPort& endpoint, const std::string& request,
        std::int64_t start_revision,
        const std::function<void(std::int64_t, const std::vector<EtcdWatchEvent>&)>& on_events);
    boost::asio::awaitable<EtcdTxn> txn(boost::json::object request, const std::string& key,
                                        const std::string& value);

    std::vector<HostPort> endpoints_;
    Duration timeout_;
    std::shared_ptr<const BackendTlsContext> tls_;
    std::atomic<std::size_t> current_{0};
};

// etcd's JSON carries bytes as base64 and 64-bit integers as strings.
std::string base64_encode(std::string_view bytes);
std::optional<std::string> base64_decode(std::string_view text);
// The first key after every key starting with `prefix` (etcd's range_end for a prefix).
std::string prefix_end(std::string prefix);

}  // namespace bg
