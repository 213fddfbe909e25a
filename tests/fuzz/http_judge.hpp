#pragma once
// An independent reading of HTTP/1.1 bytes, for the differential harnesses: llhttp (Node.js's
// parser, strict mode, from Debian's node-llhttp) splits a byte stream into messages. Where it
// and the proxy (Beast plus the proxy's own checks) read the same bytes differently, a peer
// behind or in front of the proxy could be told one thing while the proxy acts on another.

#include <llhttp.h>

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace bg::fuzz {

struct JudgedMessage {
    std::string method;   // requests
    std::string url;      // requests
    unsigned status = 0;  // responses
    std::string body;     // with any chunked framing removed
    std::size_t end = 0;  // offset just past the message in the judged bytes
};

struct Judgement {
    std::vector<JudgedMessage> messages;  // the complete ones, in order
    llhttp_errno_t error = HPE_OK;        // why reading stopped early, if it did
    std::string reason;
    bool upgraded = false;       // stopped after a message that switches protocols
    std::size_t upgrade_at = 0;  // where the other protocol's bytes begin
    bool partial = false;        // bytes of an unfinished message remain
};

// Errors about a token's spelling (a method llhttp does not know, a target character it
// refuses) rather than about where a message ends: the proxy passes those through as the
// client wrote them, and llhttp is stricter there than RFC 9110.
inline bool is_spelling_error(llhttp_errno_t error) {
    return error == HPE_INVALID_METHOD || error == HPE_INVALID_URL ||
           error == HPE_INVALID_HEADER_TOKEN || error == HPE_INVALID_STATUS ||
           error == HPE_INVALID_VERSION;
}

namespace detail {

struct JudgeState {
    Judgement* out = nullptr;
    JudgedMessage current;
    bool responses_to_head = false;
};

inline JudgeState& state(llhttp_t* parser) {
    return *static_cast<JudgeState*>(parser->data);
}

inline const llhttp_settings_t& judge_settings() {
    static const llhttp_settings_t settings = [] {
        llhttp_settings_t s;
        llhttp_settings_init(&s);
        s.on_message_begin = [](llhttp_t* p) {
            state(p).current = {};
            return 0;
        };
        s.on_method = [](llhttp_t* p, const char* at, std::size_t n) {
            state(p).current.method.append(at, n);
            return 0;
        };
        s.on_url = [](llhttp_t* p, const char* at, std::size_t n) {
            state(p).current.url.append(at, n);
            return 0;
        };
        // 1: no body follows. llhttp leaves RFC 9112 6.3 rule 1 (HEAD, 1xx, 204, 304) to its
        // caller, as Node's HTTP client does.
        s.on_headers_complete = [](llhttp_t* p) {
            if (llhttp_get_type(p) != HTTP_RESPONSE) {
                return 0;
            }
            const int status = llhttp_get_status_code(p);
            const bool bodiless =
                (status / 100 == 1 && status != 101) || status == 204 || status == 304;
            return state(p).responses_to_head || bodiless ? 1 : 0;
        };
        s.on_body = [](llhttp_t* p, const char* at, std::size_t n) {
            state(p).current.body.append(at, n);
            return 0;
        };
        // Pausing here makes llhttp_execute return with the position just past the message.
        s.on_message_complete = [](llhttp_t* p) {
            JudgeState& st = state(p);
            st.current.status = static_cast<unsigned>(llhttp_get_status_code(p));
            st.out->messages.push_back(std::move(st.current));
            st.current = {};
            return static_cast<int>(HPE_PAUSED);
        };
        return s;
    }();
    return settings;
}

}  // namespace detail

// Reads `bytes` as a stream of requests (HTTP_REQUEST) or responses (HTTP_RESPONSE). `closed`:
// the connection ends after them (a response may be delimited by that). `responses_to_head`:
// the responses answer HEAD, so none has a body whatever its fields say.
inline Judgement judge(std::string_view bytes, llhttp_type_t type, bool closed,
                       bool responses_to_head = false) {
    Judgement out;
    detail::JudgeState st;
    st.out = &out;
    st.responses_to_head = responses_to_head;
    llhttp_t parser;
    llhttp_init(&parser, type, &detail::judge_settings());
    parser.data = &st;
    const char* at = bytes.data();
    const char* const end = bytes.data() + bytes.size();
    for (;;) {
        const llhttp_errno_t error =
            llhttp_execute(&parser, at, static_cast<std::size_t>(end - at));
        if (error == HPE_PAUSED) {
            const char* stop = llhttp_get_error_pos(&parser);
            out.messages.back().end = static_cast<std::size_t>(stop - bytes.data());
            llhttp_resume(&parser);
            at = stop;
            if (at == end) {
                break;
            }
            continue;
        }
        if (error == HPE_PAUSED_UPGRADE) {
            out.upgraded = true;
            out.upgrade_at = static_cast<std::size_t>(llhttp_get_error_pos(&parser) - bytes.data());
            if (!out.messages.empty()) {
                out.messages.back().end = out.upgrade_at;
            }
            return out;
        }
        if (error != HPE_OK) {
            out.error = error;
            out.reason = llhttp_get_error_reason(&parser);
            return out;
        }
        break;
    }
    // After the last message ended exactly at the end there is nothing for the close to end.
    if (closed && at != end) {
        const std::size_t before = out.messages.size();
        const llhttp_errno_t error = llhttp_finish(&parser);
        if (out.messages.size() > before) {
            out.messages.back().end = bytes.size();  // delimited by the close
        } else if (error != HPE_OK && error != HPE_PAUSED) {
            out.error = error;
            out.reason = llhttp_get_error_reason(&parser);
        }
    }
    // Bytes after the last complete message: the start of one that did not end.
    out.partial = (out.messages.empty() ? 0 : out.messages.back().end) < bytes.size();
    return out;
}

}  // namespace bg::fuzz
