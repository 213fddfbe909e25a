// The request path of ClientSession (client_session.cpp: read_request_header(),
// handle_request(), exchange() and relay_body()), composed from the same pieces in the same
// order with the same limits: client bytes in, the bytes that would go upstream out. The head's
// checks and rewrites are the session's own (upstream_request.hpp); the reading loops are
// copied from the session, which keeps them in coroutines.
//
// Input: byte 0 chooses how the client's bytes arrive (the size of each read), byte 1 the
// settings (see Setup), the rest is what the client sends on one connection, pipelined
// requests included; the client closes after it.
//
// Checked, for each request the proxy forwards:
// - llhttp reads what went upstream as exactly one request, with the proxy's method, target
//   and body bytes, and nothing after it: a second request inside the first one's body would
//   reach the backend past every check;
// - a request cut short (client gone, malformed or oversized body) never looks complete there;
// - where llhttp accepts the client's bytes too, it ends each request where the proxy did,
//   with the same body;
// - no field the proxy forwards can start a line, and a Host the client sent arrives;
// - the session's buffer stays within its bound (Beast's flat_buffer throws past it).
// With FUZZ_STRICT_CLIENT=1 in the environment, a forwarded request that llhttp refuses to
// read on the client side fails too (llhttp is stricter than RFC 9112 in places: explore with
// it, do not gate on it).

#include <algorithm>
#include <array>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "chunk_framing.hpp"
#include "config.hpp"
#include "exchange_outcome.hpp"
#include "fuzz_check.hpp"
#include "http_judge.hpp"
#include "message_head.hpp"
#include "message_reader.hpp"
#include "request_validation.hpp"
#include "upstream_request.hpp"

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using bg::fuzz::fail;
using bg::fuzz::require;
using boost::system::error_code;

using bg::fuzz::Arrivals;

// The settings byte: bit 0 the config's smallest header and chunk limits (else the defaults),
// bit 1 max_request_body = 64 (else none), bits 2-3 buffer_size (a body piece ends where a
// read does, and where the arrivals split the input), bit 4 a trusted peer, bit 5 TLS, bit 6
// an IPv6 client, bit 7 one request only.
struct Setup {
    bg::Limits limits;
    bool trusted = false;
    bool tls = false;
    std::string client_ip;
    bool pipelining = true;
};

Setup setup_from(std::uint8_t b) {
    Setup s;
    if (b & 0x01) {
        s.limits.max_request_line = 256;
        s.limits.max_request_header = 1024;
        s.limits.max_header_fields = 8;
        s.limits.max_field_size = 64;
        s.limits.max_chunk_line = 16;
        s.limits.max_trailer = 32;
    }
    if (b & 0x02) {
        s.limits.max_request_body = 64;
    }
    static constexpr std::array<std::size_t, 4> pieces{1024, 16384, 3, 100};
    s.limits.buffer_size = pieces[(b >> 2) & 3];
    s.trusted = (b & 0x10) != 0;
    s.tls = (b & 0x20) != 0;
    s.client_ip = (b & 0x40) ? "2001:db8::7" : "192.0.2.7";
    s.pipelining = (b & 0x80) == 0;
    return s;
}

// What the connection's local end is, for a Host the proxy has to supply.
const boost::asio::ip::tcp::endpoint local_server(boost::asio::ip::make_address_v4("192.0.2.1"),
                                                  8080);

// ---- one connection -----------------------------------------------------------------------

// What one request did on its way through.
struct Forwarded {
    bool sent_head = false;  // something went upstream
    bool answered = false;   // the proxy answered it itself (Max-Forwards 0): nothing went up
    bool complete = false;   // the whole request went upstream
    bool ends_connection = false;
    std::string upstream;  // the bytes written to the backend
    std::string body;      // the body as the proxy read it
    std::string method;
    std::string target;         // as forwarded (absolute-form made origin-form)
    std::string client_target;  // as the client wrote it
    std::optional<std::string> client_host;
    std::size_t client_end = 0;  // offset in the client's bytes just past this request
};

// The Via name of the shipped defaults ([server] via): forwarded requests carry it.
std::string_view default_via() {
    static const bg::Config defaults;
    return defaults.via;
}

class Session : bg::fuzz::MessageReader<true> {
  public:
    Session(const Setup& setup, Arrivals& client)
        : MessageReader(setup.limits, client, setup.limits.max_request_header), setup_(setup) {}

    // Requests until the connection would close (a refusal, the client's close, a request
    // cut short, or an upgrade).
    std::vector<Forwarded> run() {
        std::vector<Forwarded> done;
        for (bool first = true;; first = false) {
            if (!first && !setup_.pipelining) {
                break;
            }
            Forwarded f;
            if (!read_request_header()) {
                break;
            }
            handle_request(f);
            f.client_end = peer_.delivered() - buffer_.size();
            const bool go_on = f.complete && !f.ends_connection;
            if (f.sent_head || f.answered) {
                done.push_back(std::move(f));
            }
            if (!go_on) {
                break;
            }
        }
        return done;
    }

  private:
    std::string_view buffered() const {
        return {static_cast<const char*>(buffer_.data().data()), buffer_.size()};
    }

    std::size_t skip_leading_empty_lines() {
        std::size_t skipped = 0;
        while (buffered().starts_with("\r\n")) {
            buffer_.consume(2);
            skipped += 2;
        }
        return skipped;
    }

    bool read_request_header() {
        if (buffer_.size() == 0) {
            buffer_.shrink_to_fit();  // release_idle_memory(): the next read sizes follow
        }
        new_parser();
        chunks_ = bg::ChunkHeaderGuard{limits_.max_chunk_line, limits_.max_trailer};
        parser_->on_chunk_header(chunks_);
        parser_->header_limit(static_cast<std::uint32_t>(limits_.max_request_header + 1));
        if (limits_.max_request_body > 0) {
            parser_->body_limit(limits_.max_request_body);
        } else {
            parser_->body_limit(boost::none);
        }
        parser_->eager(false);
        if (buffer_.size() == 0) {
            std::array<char, 256> first_bytes;
            const std::size_t n = peer_.read(asio::buffer(first_bytes));
            if (n == 0) {
                return false;
            }
            auto into = buffer_.prepare(read_chunk());
            std::memcpy(into.data(), first_bytes.data(), n);
            buffer_.commit(n);
        }
        const bg::HeaderLimits header_limits{limits_.max_request_line, limits_.max_request_header,
                                             limits_.max_header_fields, limits_.max_field_size};
        std::size_t checked = 0;  // bytes already seen to hold no line end
        for (;;) {
            const std::size_t skipped = skip_leading_empty_lines();
            checked = checked > skipped ? checked - skipped : 0;
            const std::string_view bytes = buffered();
            // Scanned again only when a line has ended, or to refuse a head as too long.
            bg::RawHeaderScan scan;
            if (bytes.find('\n', checked) != std::string_view::npos ||
                bytes.size() >= limits_.max_request_line) {
                scan = bg::scan_raw_header(bytes, header_limits);
            }
            checked = bytes.size();
            if (scan.verdict == bg::RawHeaderVerdict::complete) {
                require(scan.header_end <= bytes.size() &&
                            bytes.substr(0, scan.header_end).ends_with("\r\n\r\n"),
                        "a complete header ends with its blank line");
                const bg::StartLineVersion version = bg::normalize_request_version(
                    {static_cast<char*>(buffer_.data().data()), bytes.find("\r\n")});
                if (version == bg::StartLineVersion::other_major) {
                    return false;  // 505
                }
                error_code ec;
                const std::size_t used =
                    parser_->put(asio::buffer(bytes.data(), scan.header_end), ec);
                buffer_.consume(used);
                return !ec && parser_->is_header_done();  // else 413 or 400
            }
            if (scan.verdict != bg::RawHeaderVerdict::incomplete) {
                return false;  // 414, 431 or 400
            }
            if (!read_into_buffer(read_room())) {
                return false;
            }
        }
    }

    void handle_request(Forwarded& f) {
        auto& request = parser_->get();
        f.client_target = std::string(request.target());
        if (auto host = request.find(http::field::host); host != request.end()) {
            f.client_host = std::string(host->value());
        }
        if (bg::check_request_head(*parser_, limits_.max_request_body)) {
            return;  // 400, 405, 413, 417 or 501
        }
        const bg::RequestFacts facts = bg::request_facts(*parser_, {"websocket"});
        if (bg::apply_max_forwards(request)) {
            // Answered by the proxy (answer_here()): the connection goes on with no body left.
            f.answered = true;
            f.complete = parser_->is_done();
            f.ends_connection = !facts.keep_alive;
            return;
        }
        if (bg::rewrite_for_upstream(*parser_, facts,
                                     {setup_.client_ip, setup_.tls, setup_.trusted, local_server,
                                      bg::UnderscoreFields::drop, default_via()})) {
            return;  // 431
        }
        check_fields(request, f);
        f.method = std::string(request.method_string());
        f.target = std::string(request.target());

        // exchange(): the head goes at once when no body byte is at hand, else with the first.
        bg::write_request_head(request, head_);
        f.sent_head = true;
        if (parser_->is_done() || buffer_.size() == 0) {
            f.upstream += head_;
            head_.clear();
        }
        if (!parser_->is_done() || !head_.empty()) {
            if (!relay_body(f.upstream, f.body, request.chunked())) {
                f.ends_connection = true;
                return;
            }
        }
        f.complete = true;
        // The backend is taken to answer 200 with a Content-Length; an upgrade may switch.
        f.ends_connection = !facts.keep_alive || facts.upgrade;
    }

    // Nothing forwarded can end a line early or name a second Host.
    static void check_fields(const bg::Request& request, const Forwarded& f) {
        const auto clean = [](std::string_view s) {
            return s.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
        };
        require(clean(request.method_string()) && clean(request.target()),
                "the request line has no CR, LF or NUL");
        std::size_t hosts = 0;
        for (const auto& field : request) {
            require(clean(field.name_string()) && clean(field.value()),
                    "a forwarded field has no CR, LF or NUL");
            hosts += field.name() == http::field::host;
        }
        require(hosts == 1, "a forwarded request has exactly one Host");
        if (f.client_host && f.client_target.starts_with('/')) {
            require(request[http::field::host] == *f.client_host,
                    "the client's Host is the one forwarded", *f.client_host);
        }
    }

    const Setup& setup_;
};

bool strict_client() {
    static const bool strict = [] {
        const char* v = std::getenv("FUZZ_STRICT_CLIENT");
        return v != nullptr && std::string_view(v) == "1";
    }();
    return strict;
}

void check_upstream(const Forwarded& f) {
    if (f.answered) {
        return;
    }
    const bg::fuzz::Judgement j = bg::fuzz::judge(f.upstream, HTTP_REQUEST, false);
    if (!f.complete) {
        require(j.messages.empty(), "a request cut short does not look complete upstream",
                f.upstream);
        return;
    }
    if (j.error != HPE_OK && j.messages.empty() && bg::fuzz::is_spelling_error(j.error)) {
        return;  // llhttp refuses a token the client wrote; nothing to compare
    }
    require(j.error == HPE_OK, "llhttp reads the forwarded request", j.reason + "\n" + f.upstream);
    require(j.messages.size() == 1 && !j.partial, "the forwarded bytes are exactly one request",
            f.upstream);
    const bg::fuzz::JudgedMessage& m = j.messages.front();
    require(m.method == f.method, "llhttp sees the forwarded method", m.method);
    require(m.url == f.target, "llhttp sees the forwarded target", m.url);
    require(m.body == f.body, "llhttp reads the body the proxy read", f.upstream);
}

// Where llhttp reads the client's own bytes, it must end each request where the proxy did.
void check_client_side(std::string_view client, const std::vector<Forwarded>& forwarded) {
    const bg::fuzz::Judgement j = bg::fuzz::judge(client, HTTP_REQUEST, false);
    for (std::size_t i = 0; i < forwarded.size(); ++i) {
        const Forwarded& f = forwarded[i];
        if (!f.complete) {
            return;
        }
        if (i >= j.messages.size()) {
            if (strict_client() && !j.upgraded &&
                (j.error == HPE_OK || !bg::fuzz::is_spelling_error(j.error))) {
                fail("the proxy forwarded a request llhttp refuses or does not see end", j.reason);
            }
            return;
        }
        const bg::fuzz::JudgedMessage& m = j.messages[i];
        require(m.end == f.client_end, "llhttp and the proxy end a client request at one place",
                std::to_string(m.end) + " vs " + std::to_string(f.client_end));
        require(m.body == f.body, "llhttp and the proxy read the same request body");
        require(m.url == f.client_target, "llhttp and the proxy read the same target");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) {
        return 0;
    }
    const std::string_view client(reinterpret_cast<const char*>(data) + 2, size - 2);
    const Setup setup = setup_from(data[1]);
    Arrivals arrivals(client, data[0]);
    Session session(setup, arrivals);
    const std::vector<Forwarded> forwarded = session.run();
    for (const Forwarded& f : forwarded) {
        check_upstream(f);
    }
    check_client_side(client, forwarded);
    return 0;
}
