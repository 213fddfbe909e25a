// The response path of ClientSession (client_session.cpp: the response loop of exchange(),
// parse_response_head(), relay_response() and relay_body()), composed from the same pieces in
// the same order with the same limits: backend bytes in, the bytes the client gets out.
//
// Input: byte 0 chooses how the backend's bytes arrive (see Arrivals), byte 1 the request
// they answer and the limits (see Setup), the rest is what the backend sends; it closes after.
//
// Checked:
// - llhttp reads what the client gets as the relayed interim responses, then one final
//   response with the proxy's status and body, and nothing after it (but a tunnel after a 101);
//   self-delimited whenever the proxy keeps the client connection open;
// - a response cut short never looks complete to the client (except the one case HTTP/1.0
//   cannot express: a body delimited by the close);
// - where llhttp accepts the backend's bytes too, it reads the same final response and body,
//   and a connection the proxy would pool has nothing left of that response.

#include <algorithm>
#include <array>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/parser.hpp>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "chunk_framing.hpp"
#include "config.hpp"
#include "forwarding_headers.hpp"
#include "fuzz_check.hpp"
#include "http_judge.hpp"
#include "message_head.hpp"
#include "message_reader.hpp"
#include "request_validation.hpp"
#include "upstream_response.hpp"

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using bg::fuzz::fail;
using bg::fuzz::require;
using boost::system::error_code;

using bg::fuzz::Arrivals;

// The settings byte: bit 0 a HEAD request, bit 1 an HTTP/1.0 client, bit 2 an upgrade request,
// bits 3-4 buffer_size (a body piece ends where a read does, and where the arrivals split the
// input), bit 5 a client that asked to close, bit 6 the config's
// smallest header and chunk limits (else the defaults), bit 7 a client that sent Expect:
// 100-continue (the proxy answers it itself, so a backend's 100 is not relayed then).
struct Setup {
    bg::Limits limits;
    bool head = false;
    unsigned client_version = 11;
    bool upgrade = false;
    bool client_keep_alive = true;
    bool expect_continue = false;
};

Setup setup_from(std::uint8_t b) {
    Setup s;
    s.head = (b & 0x01) != 0;
    s.client_version = (b & 0x02) ? 10 : 11;
    s.upgrade = (b & 0x04) != 0 && s.client_version >= 11;
    static constexpr std::array<std::size_t, 4> pieces{1024, 16384, 3, 100};
    s.limits.buffer_size = pieces[(b >> 3) & 3];
    s.client_keep_alive = (b & 0x20) == 0;
    s.expect_continue = (b & 0x80) != 0 && s.client_version >= 11;
    if (b & 0x40) {
        s.limits.max_response_header = 1024;
        s.limits.max_header_fields = 8;
        s.limits.max_field_size = 64;
        s.limits.max_chunk_line = 16;
        s.limits.max_trailer = 32;
    }
    return s;
}

// What the client got.
struct Relayed {
    std::string client;              // the bytes written to the client
    std::vector<unsigned> interims;  // statuses of the interim responses passed on
    std::size_t interims_read = 0;   // interim responses read from the backend
    bool final_read = false;         // a final response head was accepted
    unsigned status = 0;
    bool complete = false;         // its body went out whole
    bool keep_alive = false;       // the client connection stays open for another request
    bool close_delimited = false;  // the client learns the end from the close
    bool switching = false;        // a tunnel follows the head
    std::size_t head_end = 0;      // offset in `client` just past the final head
    bool pooled = false;           // the backend connection would go back to the pool
    std::size_t backend_end = 0;   // offset in the backend's bytes just past the response
    std::string body;              // the final body as the proxy read it
};

class Exchange : bg::fuzz::MessageReader<false> {
  public:
    Exchange(const Setup& setup, Arrivals& backend)
        : MessageReader(setup.limits, backend, setup.limits.max_response_header), setup_(setup) {}

    Relayed run() {
        Relayed r;
        if (!read_final_head(r)) {
            return r;
        }
        r.final_read = true;
        relay_response(r);
        return r;
    }

  private:
    // The response loop of exchange(): interim responses, then the final head.
    bool read_final_head(Relayed& r) {
        const bg::HeaderLimits header_limits{limits_.max_response_header,
                                             limits_.max_response_header, limits_.max_header_fields,
                                             limits_.max_field_size};
        for (;;) {
            new_parser();
            chunks_ = bg::ChunkHeaderGuard{limits_.max_chunk_line, limits_.max_trailer};
            parser_->on_chunk_header(chunks_);
            parser_->header_limit(static_cast<std::uint32_t>(limits_.max_response_header));
            parser_->body_limit(boost::none);
            if (setup_.head) {
                parser_->skip(true);
            }
            std::size_t checked = 0;
            HeadRead read;
            while ((read = parse_head(checked, header_limits)) == HeadRead::need_more) {
                if (buffer_.size() + read_chunk() > buffer_.max_size()) {
                    break;
                }
                if (!read_into_buffer(read_room())) {
                    break;
                }
            }
            if (read != HeadRead::done) {
                return false;  // 502
            }
            auto& response = parser_->get();
            const unsigned status = response.result_int();
            if (status == 101 && !setup_.upgrade) {
                return false;  // 502: a switch nobody asked for
            }
            if (status >= 200 || status == 101) {
                return true;
            }
            ++r.interims_read;
            if (setup_.client_version >= 11 && (status != 100 || !setup_.expect_continue) &&
                r.interims.size() < setup_.limits.max_interim_responses) {
                bg::rewrite_interim_head(response.base());
                bg::write_response_head(response.base(), head_);
                r.client += head_;
                r.interims.push_back(status);
                head_.clear();
            }
        }
    }

    using HeadRead = bg::HeadRead;

    HeadRead parse_head(std::size_t& checked, const bg::HeaderLimits& header_limits) {
        bg::ResponseRefusal refusal;
        return bg::parse_response_head(buffer_, *parser_, header_limits, checked, refusal);
    }

    void relay_response(Relayed& r) {
        auto& response = parser_->get();
        const unsigned status = response.result_int();
        const bool upstream_keep_alive = parser_->keep_alive();
        bg::RequestFacts facts;
        facts.version = setup_.client_version;
        facts.head = setup_.head;
        facts.upgrade = setup_.upgrade;
        const bg::ResponsePlan plan =
            bg::rewrite_response_head(*parser_, facts, setup_.client_keep_alive);
        const bool switching = plan.switching;
        const bool no_body = plan.no_body;
        const bool until_close = plan.until_close;
        const bool chunked = plan.chunked;
        const bool keep_alive = plan.keep_alive;
        // Re-framed, but for an HTTP/1.0 client: the close tells the end.
        r.close_delimited = !no_body && (parser_->chunked() || until_close) && !chunked;
        bg::write_response_head(response.base(), head_);
        r.status = status;
        r.switching = switching;
        r.head_end = r.client.size() + head_.size();
        if (no_body || (buffer_.size() == 0 && !parser_->is_done())) {
            r.client += head_;
            head_.clear();
        }
        if (switching) {
            // tunnel(): what arrived behind the head, then everything else, as it is.
            r.client.append(static_cast<const char*>(buffer_.data().data()), buffer_.size());
            r.client += peer_.rest();
            return;
        }
        bool complete = no_body;
        if (!no_body) {
            if (!relay_body(r.client, r.body, chunked)) {
                r.backend_end = peer_.delivered() - buffer_.size();
                return;  // the client connection closes
            }
            complete = parser_->is_done();
        }
        r.complete = complete;
        r.keep_alive = keep_alive && complete;
        r.backend_end = peer_.delivered() - buffer_.size();
        r.pooled = complete && upstream_keep_alive && !until_close && buffer_.size() == 0;
    }

    const Setup& setup_;
};

void check_client_side(const Setup& setup, const Relayed& r) {
    if (!r.final_read) {
        // A 502 follows (the proxy's own response); what went before must be interims only.
        const bg::fuzz::Judgement j = bg::fuzz::judge(r.client, HTTP_RESPONSE, false);
        require(j.error == HPE_OK && !j.partial && j.messages.size() == r.interims.size(),
                "before a refused response the client got whole interim responses only", r.client);
        return;
    }
    const bool closes = !r.keep_alive;
    const bg::fuzz::Judgement j = bg::fuzz::judge(r.client, HTTP_RESPONSE, closes, setup.head);
    const std::size_t final_index = r.interims.size();
    if (!r.complete && !r.switching) {
        if (r.close_delimited) {
            return;  // HTTP/1.0 has no way to say a close-delimited body was cut
        }
        require(j.messages.size() <= final_index,
                "a response cut short does not look complete to the client", r.client);
        return;
    }
    if (j.error != HPE_OK && bg::fuzz::is_spelling_error(j.error)) {
        return;  // llhttp refuses a token the backend wrote (a reason phrase, say)
    }
    require(j.error == HPE_OK, "llhttp reads what the client got", j.reason + "\n" + r.client);
    require(j.messages.size() == final_index + 1,
            "the client gets the interim responses and one final response", r.client);
    for (std::size_t i = 0; i < final_index; ++i) {
        require(j.messages[i].status == r.interims[i], "interim statuses arrive as sent");
    }
    const bg::fuzz::JudgedMessage& m = j.messages[final_index];
    require(m.status == r.status, "the client reads the backend's status");
    if (r.switching) {
        // llhttp 8.1 (Debian's) does not pause on a 101 response as it does on an upgrade
        // request, so where the tunnel starts is checked on the proxy's side: the 101's head
        // ends where the proxy said, and what follows is the backend's bytes as they came.
        require(r.head_end >= 4 && r.head_end <= r.client.size() &&
                    r.client.compare(r.head_end - 4, 4, "\r\n\r\n") == 0,
                "a tunnel starts right after the 101", r.client);
        return;
    }
    require(!j.partial, "nothing follows the final response", r.client);
    require(m.body == r.body, "the client reads the body the proxy read", r.client);
    if (r.keep_alive) {
        require(m.end == r.client.size(), "a response on a kept connection ends by its own framing",
                r.client);
    }
}

// A Transfer-Encoding line whose value ends in whitespace ("chunked\t"). RFC 9110 5.5: a
// field value excludes trailing whitespace, so it is chunked (as Beast and HAProxy read it);
// llhttp 8.1 reads such a body to the close instead. The proxy frames what it sends itself,
// so no hop after it sees the difference: no comparison of bodies for it.
bool te_value_ends_in_whitespace(std::string_view bytes) {
    const std::size_t head_end = bytes.find("\r\n\r\n");
    const std::string_view head = bytes.substr(0, head_end);
    for (std::size_t at = head.find("\r\n"); at != std::string_view::npos;
         at = head.find("\r\n", at + 2)) {
        const std::string_view line = head.substr(at + 2, head.find("\r\n", at + 2) - at - 2);
        constexpr std::string_view name = "transfer-encoding:";
        if (line.size() > name.size() && boost::beast::iequals(line.substr(0, name.size()), name) &&
            (line.back() == ' ' || line.back() == '\t')) {
            return true;
        }
    }
    return false;
}

// Where llhttp reads the backend's bytes too, it sees the same response.
void check_backend_side(const Setup& setup, std::string_view backend, const Relayed& r) {
    if (!r.final_read || r.switching) {
        return;
    }
    const bg::fuzz::Judgement j = bg::fuzz::judge(backend, HTTP_RESPONSE, true, setup.head);
    const std::size_t final_index = r.interims_read;
    if (j.messages.size() <= final_index) {
        return;  // llhttp refuses or does not finish what the proxy took
    }
    const bg::fuzz::JudgedMessage& m = j.messages[final_index];
    require(m.status == r.status, "llhttp and the proxy read the same final status");
    if (r.complete && !te_value_ends_in_whitespace(backend)) {
        require(m.body == r.body, "llhttp and the proxy read the same response body",
                "llhttp: [" + m.body + "]\nproxy:  [" + r.body + "]");
        require(m.end == r.backend_end,
                "llhttp and the proxy end the backend's response at one place",
                std::to_string(m.end) + " vs " + std::to_string(r.backend_end));
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) {
        return 0;
    }
    const std::string_view backend(reinterpret_cast<const char*>(data) + 2, size - 2);
    const Setup setup = setup_from(data[1]);
    Arrivals arrivals(backend, data[0]);
    Exchange exchange(setup, arrivals);
    const Relayed relayed = exchange.run();
    check_client_side(setup, relayed);
    check_backend_side(setup, backend, relayed);
    return 0;
}
