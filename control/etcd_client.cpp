#include "etcd_client.hpp"

#include <openssl/evp.h>

#include <algorithm>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "backend_tls_context.hpp"

namespace bg {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;

namespace {

void probe_while_quiet(tcp::socket& socket, Duration every) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(every).count();
    const int seconds = static_cast<int>(std::clamp<long long>((ms + 999) / 1000, 1, 3600));
    const int on = 1;
    const int probes = 3;
    const int fd = socket.native_handle();
    ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &seconds, sizeof seconds);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &seconds, sizeof seconds);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
}

constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t max_answer = 16 << 20;

// The gateway writes int64 as strings ("42") and leaves out zero values.
std::int64_t int_field(const json::object& object, std::string_view key) {
    const json::value* v = object.if_contains(key);
    if (v == nullptr) {
        return 0;
    }
    if (v->is_int64()) {
        return v->as_int64();
    }
    if (v->is_uint64()) {
        return static_cast<std::int64_t>(v->as_uint64());
    }
    if (v->is_string()) {
        try {
            return std::stoll(std::string(v->as_string()));
        } catch (const std::exception&) {
            return 0;
        }
    }
    return 0;
}

std::string bytes_field(const json::object& object, std::string_view key) {
    const json::value* v = object.if_contains(key);
    if (v == nullptr || !v->is_string()) {
        return {};
    }
    return base64_decode(std::string_view(v->as_string())).value_or(std::string{});
}

const json::object* object_field(const json::object& object, std::string_view key) {
    const json::value* v = object.if_contains(key);
    return v != nullptr && v->is_object() ? &v->as_object() : nullptr;
}

EtcdKeyValue key_value(const json::object& kv) {
    return EtcdKeyValue{bytes_field(kv, "key"), bytes_field(kv, "value"),
                        int_field(kv, "mod_revision"), int_field(kv, "create_revision"),
                        int_field(kv, "lease")};
}

std::int64_t header_revision(const json::object& body) {
    const json::object* header = object_field(body, "header");
    return header != nullptr ? int_field(*header, "revision") : 0;
}

// What a failed gateway answer says: {"error": "etcdserver: no leader", "code": 14, ...}.
std::string error_of(unsigned status, const std::string& body) {
    boost::system::error_code ec;
    json::value parsed = json::parse(body, ec);
    if (!ec && parsed.is_object()) {
        if (const json::value* message = parsed.as_object().if_contains("error");
            message != nullptr && message->is_string()) {
            return std::string(message->as_string());
        }
    }
    return "HTTP " + std::to_string(status);
}

std::string connect_error(const boost::system::error_code& ec, Duration timeout) {
    return ec == beast::error::timeout
               ? "no answer within " + std::to_string(timeout.count()) + "ms"
               : ec.message();
}

// The TCP connect and the TLS handshake of one connection: an error message, or "".
asio::awaitable<std::string> connect(beast::tcp_stream& stream, const HostPort& endpoint,
                                     Duration timeout) {
    boost::system::error_code ec;
    tcp::endpoint to(asio::ip::make_address(endpoint.ip, ec), endpoint.port);
    std::tie(ec) = co_await stream.async_connect(to, nothrow);
    co_return ec ? "connect: " + connect_error(ec, timeout) : std::string{};
}

asio::awaitable<std::string> handshake(asio::ssl::stream<beast::tcp_stream&>& tls,
                                       const BackendTlsContext& context, const HostPort& endpoint) {
    std::string why;
    if (!context.prepare(tls.native_handle(), endpoint, why)) {
        co_return "tls: " + why;
    }
    auto [ec] = co_await tls.async_handshake(asio::ssl::stream_base::client, nothrow);
    co_return ec ? "tls: " + BackendTlsContext::handshake_error(tls.native_handle(), ec.message())
                 : std::string{};
}

}  // namespace

std::string base64_encode(std::string_view bytes) {
    std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
    const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                  reinterpret_cast<const unsigned char*>(bytes.data()),
                                  static_cast<int>(bytes.size()));
    out.resize(static_cast<std::size_t>(n));
    return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
    if (text.size() % 4 != 0) {
        return std::nullopt;
    }
    std::string out(3 * text.size() / 4 + 1, '\0');
    const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                  reinterpret_cast<const unsigned char*>(text.data()),
                                  static_cast<int>(text.size()));
    if (n < 0) {
        return std::nullopt;
    }
    // EVP_DecodeBlock counts the padding as zero bytes.
    std::size_t size = static_cast<std::size_t>(n);
    for (std::size_t i = text.size(); i > 0 && text[i - 1] == '=' && size > 0; --i) {
        --size;
    }
    out.resize(size);
    return out;
}

std::string prefix_end(std::string prefix) {
    while (!prefix.empty()) {
        if (static_cast<unsigned char>(prefix.back()) < 0xff) {
            prefix.back() = static_cast<char>(prefix.back() + 1);
            return prefix;
        }
        prefix.pop_back();
    }
    return std::string(1, '\0');  // every key
}

void EtcdWatchHandle::cancel() {
    cancelled_ = true;
    if (cancel_) {
        cancel_();
    }
}

EtcdClient::EtcdClient(std::vector<HostPort> endpoints, Duration request_timeout,
                       std::shared_ptr<const BackendTlsContext> tls)
    : endpoints_(std::move(endpoints)), timeout_(request_timeout), tls_(std::move(tls)) {}

std::string EtcdClient::current_endpoint() const {
    return endpoints_.empty() ? std::string{} : endpoints_[current_ % endpoints_.size()].text;
}

template <class Stream>
asio::awaitable<EtcdClient::Answer> EtcdClient::exchange(Stream& stream, const HostPort& endpoint,
                                                         const char* path,
                                                         const std::string& body) {
    http::request<http::string_body> request{http::verb::post, path, 11};
    request.set(http::field::host, endpoint.text);
    request.set(http::field::content_type, "application/json");
    request.set(http::field::connection, "close");
    request.body() = body;
    request.prepare_payload();
    auto [wec, wn] = co_await http::async_write(stream, request, nothrow);
    if (wec) {
        co_return Answer{"send: " + connect_error(wec, timeout_), {}, false};
    }
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(max_answer);
    // From here on etcd has the request: an error does not say it was not applied (etcd's own
    // "request timed out" may still commit).
    auto [rec, rn] = co_await http::async_read(stream, buffer, parser, nothrow);
    if (rec) {
        co_return Answer{"read: " + connect_error(rec, timeout_), {}, true};
    }
    const auto& response = parser.get();
    if (response.result() != http::status::ok) {
        co_return Answer{error_of(response.result_int(), response.body()), {}, true};
    }
    boost::system::error_code ec;
    json::value parsed = json::parse(response.body(), ec);
    if (ec || !parsed.is_object()) {
        co_return Answer{"an answer that is not a JSON object", {}, true};
    }
    co_return Answer{{}, std::move(parsed.as_object()), true};
}

asio::awaitable<EtcdClient::Answer> EtcdClient::call(const char* path, const json::object& body) {
    const std::string text = json::serialize(body);
    auto executor = co_await asio::this_coro::executor;
    std::string errors;
    bool delivered = false;
    const std::size_t first = current_;
    for (std::size_t i = 0; i < endpoints_.size(); ++i) {
        const std::size_t index = (first + i) % endpoints_.size();
        const HostPort& endpoint = endpoints_[index];
        Answer answer;
        beast::tcp_stream stream(executor);
        stream.expires_after(timeout_);
        answer.error = co_await connect(stream, endpoint, timeout_);
        if (answer.error.empty() && tls_) {
            asio::ssl::stream<beast::tcp_stream&> tls(stream, tls_->context());
            answer.error = co_await handshake(tls, *tls_, endpoint);
            if (answer.error.empty()) {
                answer = co_await exchange(tls, endpoint, path, text);
            }
        } else if (answer.error.empty()) {
            answer = co_await exchange(stream, endpoint, path, text);
        }
        if (answer.error.empty()) {
            current_ = index;
            co_return answer;
        }
        errors += (errors.empty() ? "" : "; ") + endpoint.text + ": " + answer.error;
        delivered = delivered || answer.delivered;
    }
    co_return Answer{"etcd unreachable (" + errors + ")", {}, delivered};
}

asio::awaitable<EtcdRange> EtcdClient::range(std::string key, bool prefix) {
    json::object request{{"key", base64_encode(key)}};
    if (prefix) {
        request["range_end"] = base64_encode(prefix_end(key));
    }
    Answer answer = co_await call("/v3/kv/range", request);
    EtcdRange result;
    result.error = std::move(answer.error);
    result.revision = header_revision(answer.body);
    if (const json::value* kvs = answer.body.if_contains("kvs"); kvs && kvs->is_array()) {
        for (const json::value& kv : kvs->as_array()) {
            if (kv.is_object()) {
                result.kvs.push_back(key_value(kv.as_object()));
            }
        }
    }
    co_return result;
}

// A transaction whose failure branch reads the key back, so a refusal says what is there.
asio::awaitable<EtcdTxn> EtcdClient::txn(json::object request, const std::string& key,
                                         const std::string& value) {
    request["failure"] =
        json::array{json::object{{"request_range", json::object{{"key", base64_encode(key)}}}}};
    Answer answer = co_await call("/v3/kv/txn", request);
    EtcdTxn result;
    result.error = std::move(answer.error);
    if (!result.error.empty()) {
        result.maybe_applied = answer.delivered;
        co_return result;
    }
    result.revision = header_revision(answer.body);
    const json::value* succeeded = answer.body.if_contains("succeeded");
    result.succeeded = succeeded != nullptr && succeeded->is_bool() && succeeded->as_bool();
    if (result.succeeded) {
        co_return result;
    }
    const json::value* responses = answer.body.if_contains("responses");
    if (responses != nullptr && responses->is_array() && !responses->as_array().empty() &&
        responses->as_array()[0].is_object()) {
        if (const json::object* read =
                object_field(responses->as_array()[0].as_object(), "response_range")) {
            if (const json::value* kvs = read->if_contains("kvs"); kvs && kvs->is_array() &&
                                                                   !kvs->as_array().empty() &&
                                                                   kvs->as_array()[0].is_object()) {
                result.current = key_value(kvs->as_array()[0].as_object());
            }
        }
    }
    // A put that landed on an earlier try (its answer lost with a failing member) is a success.
    if (!value.empty() && result.current && result.current->value == value) {
        result.succeeded = true;
        result.revision = result.current->mod_revision;
    }
    co_return result;
}

namespace {

json::object put_request(const std::string& key, const std::string& value, std::int64_t lease) {
    json::object put{{"key", base64_encode(key)}, {"value", base64_encode(value)}};
    if (lease != 0) {
        put["lease"] = std::to_string(lease);
    }
    return json::object{{"request_put", std::move(put)}};
}

}  // namespace

asio::awaitable<EtcdTxn> EtcdClient::put_if(std::string key, std::string value,
                                            std::int64_t expected, std::int64_t lease) {
    json::object compare{{"key", base64_encode(key)},
                         {"target", "MOD"},
                         {"result", "EQUAL"},
                         {"mod_revision", std::to_string(expected)}};
    json::object request{{"compare", json::array{std::move(compare)}},
                         {"success", json::array{put_request(key, value, lease)}}};
    co_return co_await txn(std::move(request), key, value);
}

asio::awaitable<EtcdTxn> EtcdClient::put(std::string key, std::string value, std::int64_t lease) {
    json::object request{{"success", json::array{put_request(key, value, lease)}}};
    co_return co_await txn(std::move(request), key, {});
}

asio::awaitable<EtcdTxn> EtcdClient::create(std::string key, std::string value,
                                            std::int64_t lease) {
    json::object compare{{"key", base64_encode(key)},
                         {"target", "CREATE"},
                         {"result", "EQUAL"},
                         {"create_revision", "0"}};
    json::object request{{"compare", json::array{std::move(compare)}},
                         {"success", json::array{put_request(key, value, lease)}}};
    co_return co_await txn(std::move(request), key, {});
}

asio::awaitable<EtcdTxn> EtcdClient::erase(std::string key) {
    json::object request{
        {"success", json::array{json::object{
                        {"request_delete_range", json::object{{"key", base64_encode(key)}}}}}}};
    co_return co_await txn(std::move(request), key, {});
}

asio::awaitable<EtcdLease> EtcdClient::grant(std::chrono::seconds ttl) {
    // (Built outside the co_await: GCC 12 miscompiles braced temporaries there.)
    const json::object request{{"TTL", ttl.count()}};
    Answer answer = co_await call("/v3/lease/grant", request);
    EtcdLease lease;
    lease.error = std::move(answer.error);
    if (lease.error.empty()) {
        if (const json::value* why = answer.body.if_contains("error");
            why && why->is_string() && !why->as_string().empty()) {
            lease.error = std::string(why->as_string());
        }
    }
    lease.id = int_field(answer.body, "ID");
    lease.ttl = int_field(answer.body, "TTL");
    co_return lease;
}

asio::awaitable<EtcdLease> EtcdClient::keepalive(std::int64_t id) {
    // A streaming call: one request in, its one result out ({"result": {...}}).
    const json::object request{{"ID", std::to_string(id)}};
    Answer answer = co_await call("/v3/lease/keepalive", request);
    EtcdLease lease;
    lease.error = std::move(answer.error);
    lease.id = id;
    if (const json::object* result = object_field(answer.body, "result")) {
        lease.ttl = int_field(*result, "TTL");
    } else if (lease.error.empty()) {
        lease.error = "keepalive: no result";
    }
    co_return lease;
}

asio::awaitable<EtcdLease> EtcdClient::revoke(std::int64_t id) {
    const json::object request{{"ID", std::to_string(id)}};
    Answer answer = co_await call("/v3/lease/revoke", request);
    co_return EtcdLease{std::move(answer.error), id, 0};
}

template <class Stream>
asio::awaitable<EtcdWatchEnd> EtcdClient::stream_watch(
    Stream& stream, const HostPort& endpoint, const std::string& request_body,
    std::int64_t start_revision,
    const std::function<void(std::int64_t, const std::vector<EtcdWatchEvent>&)>& on_events) {
    EtcdWatchEnd end;
    end.next_revision = start_revision;
    http::request<http::string_body> request{http::verb::post, "/v3/watch", 11};
    request.set(http::field::host, endpoint.text);
    request.set(http::field::content_type, "application/json");
    // etcd cancels the watch when its member loses the leader, instead of going quiet.
    request.set("Grpc-Metadata-hasleader", "true");
    request.body() = request_body;
    request.prepare_payload();
    auto [wec, wn] = co_await http::async_write(stream, request, nothrow);
    if (wec) {
        end.error = "send: " + wec.message();
        co_return end;
    }
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(boost::none);
    auto [hec, hn] = co_await http::async_read_header(stream, buffer, parser, nothrow);
    if (hec) {
        end.error = "read: " + connect_error(hec, timeout_);
        co_return end;
    }
    if (parser.get().result() != http::status::ok) {
        end.error = "HTTP " + std::to_string(parser.get().result_int());
        co_return end;
    }
    beast::get_lowest_layer(stream).expires_never();  // a watch is quiet until something changes
    // A member that goes silent without closing (its machine died, a partition) would leave the
    // watch open and quiet for good, and this instance deaf to the fleet: TCP keepalive probes
    // end it within about 4 x request_timeout, and the watch resumes on another member.
    probe_while_quiet(beast::get_lowest_layer(stream).socket(), timeout_);
    // The stream is one JSON object per line: {"result": {...}}.
    std::string pending;
    bool over = false;
    auto take_line = [&](std::string_view line) {
        boost::system::error_code ec;
        json::value parsed = json::parse(line, ec);
        const json::object* result =
            !ec && parsed.is_object() ? object_field(parsed.as_object(), "result") : nullptr;
        if (result == nullptr) {
            end.error = "a watch message that is not {\"result\": ...}";
            over = true;
            return;
        }
        if (const json::value* cancelled = result->if_contains("canceled");
            cancelled && cancelled->is_bool() && cancelled->as_bool()) {
            end.compacted_before = int_field(*result, "compact_revision");
            const std::string reason = [&] {
                const json::value* r = result->if_contains("cancel_reason");
                return r && r->is_string() ? std::string(r->as_string()) : std::string{};
            }();
            end.error = end.compacted_before > 0 ? "compacted" : "cancelled by etcd: " + reason;
            over = true;
            return;
        }
        const json::value* events = result->if_contains("events");
        if (events == nullptr || !events->is_array()) {
            return;  // created, or a progress notification
        }
        std::vector<EtcdWatchEvent> batch;
        for (const json::value& e : events->as_array()) {
            if (!e.is_object()) {
                continue;
            }
            const json::object* kv = object_field(e.as_object(), "kv");
            if (kv == nullptr) {
                continue;
            }
            const json::value* type = e.as_object().if_contains("type");
            EtcdWatchEvent event;
            event.deleted = type && type->is_string() && type->as_string() == "DELETE";
            event.kv = key_value(*kv);
            end.next_revision = std::max(end.next_revision, event.kv.mod_revision + 1);
            batch.push_back(std::move(event));
        }
        on_events(header_revision(*result), batch);
    };
    auto on_body = [&](std::uint64_t, beast::string_view body, boost::system::error_code&) {
        pending.append(body.data(), body.size());
        std::size_t start = 0;
        for (std::size_t nl; !over && (nl = pending.find('\n', start)) != std::string::npos;
             start = nl + 1) {
            if (nl > start) {
                take_line(std::string_view(pending).substr(start, nl - start));
            }
        }
        pending.erase(0, start);
        return body.size();
    };
    parser.on_chunk_body(on_body);
    while (!over && !parser.is_done()) {
        auto [ec, n] = co_await http::async_read_some(stream, buffer, parser, nothrow);
        if (ec) {
            if (ec != asio::error::operation_aborted) {
                end.error = "watch stream: " + ec.message();
            }
            break;
        }
    }
    if (!over && end.error.empty() && parser.is_done()) {
        end.error = "etcd ended the watch stream";
    }
    co_return end;
}

asio::awaitable<EtcdWatchEnd> EtcdClient::watch(
    std::string prefix, std::int64_t start_revision,
    std::function<void(std::int64_t, const std::vector<EtcdWatchEvent>&)> on_events,
    std::shared_ptr<EtcdWatchHandle> handle) {
    json::object create{{"key", base64_encode(prefix)},
                        {"range_end", base64_encode(prefix_end(prefix))},
                        {"start_revision", std::to_string(start_revision)}};
    const std::string body = json::serialize(json::object{{"create_request", std::move(create)}});
    auto executor = co_await asio::this_coro::executor;
    EtcdWatchEnd end;
    end.next_revision = start_revision;
    const std::size_t index = current_ % endpoints_.size();
    const HostPort& endpoint = endpoints_[index];
    beast::tcp_stream stream(executor);
    stream.expires_after(timeout_);
    // A close, not a cancel: a cancel is lost on a read whose completion is queued already,
    // and the next read would wait on (the watch going on through the exit's drain).
    handle->cancel_ = [&stream] {
        boost::system::error_code ignored;
        stream.socket().close(ignored);
    };
    end.error = co_await connect(stream, endpoint, timeout_);
    if (handle->cancelled()) {
        // (cancelled while connecting, or before: it goes no further)
    } else if (!end.error.empty()) {
        end.error = endpoint.text + ": " + end.error;
    } else if (tls_) {
        asio::ssl::stream<beast::tcp_stream&> tls(stream, tls_->context());
        end.error = co_await handshake(tls, *tls_, endpoint);
        if (end.error.empty()) {
            end = co_await stream_watch(tls, endpoint, body, start_revision, on_events);
        }
    } else {
        end = co_await stream_watch(stream, endpoint, body, start_revision, on_events);
    }
    handle->cancel_ = nullptr;
    if (handle->cancelled()) {
        end.error.clear();
    } else if (!end.error.empty() && end.compacted_before == 0) {
        // The next try goes to the next member.
        current_ = (index + 1) % endpoints_.size();
    }
    co_return end;
}

}  // namespace bg
