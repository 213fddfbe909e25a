#include "request_validation.hpp"

#include <cctype>

#include <algorithm>
#include <bit>
#include <boost/beast/core/string.hpp>
#include <boost/url/parse.hpp>
#include <cstring>

#include "field_list.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace bg {

namespace http = boost::beast::http;

namespace {

// The first CR, LF or NUL in [p, end), or end: the bytes that end a line or refuse it. Sixteen
// bytes per step with SSE2 (x86-64's baseline): one pass per line where three memchr calls
// (line end, NUL, CR) cost 5% of a proxied request's instructions, mostly in call overhead on
// lines of a few dozen bytes.
const char* first_line_stop(const char* p, const char* end) {
#if defined(__SSE2__)
    const __m128i cr = _mm_set1_epi8('\r');
    const __m128i lf = _mm_set1_epi8('\n');
    const __m128i nul = _mm_setzero_si128();
    for (; end - p >= 16; p += 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        const __m128i hits = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)), _mm_cmpeq_epi8(v, nul));
        if (const int mask = _mm_movemask_epi8(hits); mask != 0) {
            return p + std::countr_zero(static_cast<unsigned>(mask));
        }
    }
#endif
    for (; p < end; ++p) {
        if (*p == '\r' || *p == '\n' || *p == '\0') {
            return p;
        }
    }
    return end;
}

}  // namespace

// A line at a time, up to its first CR, LF or NUL: the verdict is the one the first offending
// byte gives, as a byte-by-byte reading would (the unit tests hold that reading and compare).
RawHeaderScan scan_raw_header(std::string_view bytes, const HeaderLimits& limits) {
    const char* const data = bytes.data();
    const std::size_t n = bytes.size();
    std::size_t line_start = 0;
    std::size_t fields = 0;
    bool in_request_line = true;
    for (;;) {
        // The first position this line may not reach, and what reaching it means (at the same
        // position the start-line bound wins over the head's, the head's over a field's). The
        // line bounds do not count the line's CRLF: "a request line longer than 8192 bytes".
        std::size_t limit = limits.max_header;
        RawHeaderVerdict over = RawHeaderVerdict::header_too_long;
        if (in_request_line && limits.max_start_line + 2 <= limit) {
            limit = limits.max_start_line + 2;
            over = RawHeaderVerdict::request_line_too_long;
        } else if (!in_request_line && line_start + limits.max_field_size + 2 < limit) {
            limit = line_start + limits.max_field_size + 2;
            over = RawHeaderVerdict::field_too_long;
        }
        const std::size_t stop = std::min(n, std::max(limit, line_start));
        const auto at =
            static_cast<std::size_t>(first_line_stop(data + line_start, data + stop) - data);
        if (at == stop) {
            return {stop < n ? over : RawHeaderVerdict::incomplete};
        }
        if (data[at] == '\0') {
            return {RawHeaderVerdict::nul_byte};
        }
        if (data[at] == '\n') {
            return {RawHeaderVerdict::bare_lf};  // no CR before it: that would have stopped first
        }
        // A CR: the line's end if an LF follows, within the line's bound.
        if (at + 1 == n) {
            return {RawHeaderVerdict::incomplete};  // the last byte so far
        }
        if (data[at + 1] != '\n') {
            return {RawHeaderVerdict::bare_cr};
        }
        const std::size_t end = at + 1;  // the LF
        if (end >= stop) {
            return {over};  // the LF lies past the bound
        }
        if (end + 1 - line_start == 2 && !in_request_line) {
            return {RawHeaderVerdict::complete, end + 1};  // the blank line
        }
        if (!in_request_line && ++fields > limits.max_fields) {
            return {RawHeaderVerdict::too_many_fields};
        }
        in_request_line = false;
        line_start = end + 1;
        if (line_start < n && (data[line_start] == ' ' || data[line_start] == '\t')) {
            return {RawHeaderVerdict::obs_fold};
        }
    }
}

namespace {

// "HTTP/d.d" at `version`: 1.x above 1.1 becomes 1.1.
StartLineVersion normalize_version(std::span<char> version) {
    const auto digit = [](char c) { return c >= '0' && c <= '9'; };
    if (version.size() != 8 || std::string_view(version.data(), 5) != "HTTP/" ||
        !digit(version[5]) || version[6] != '.' || !digit(version[7])) {
        return StartLineVersion::unreadable;
    }
    if (version[5] != '1') {
        return StartLineVersion::other_major;
    }
    if (version[7] > '1') {
        version[7] = '1';
    }
    return StartLineVersion::http1;
}

}  // namespace

StartLineVersion normalize_request_version(std::span<char> request_line) {
    if (request_line.size() < 8) {
        return StartLineVersion::unreadable;
    }
    return normalize_version(request_line.last(8));
}

StartLineVersion normalize_response_version(std::span<char> status_line) {
    if (status_line.size() < 8) {
        return StartLineVersion::unreadable;
    }
    return normalize_version(status_line.first(8));
}

bool valid_port(std::string_view port) {
    port.remove_prefix(std::min(port.find_first_not_of('0'), port.size()));  // "000080" is 80
    if (port.size() > 5) {
        return false;
    }
    unsigned value = 0;
    for (const char c : port) {
        if (c < '0' || c > '9') {
            return false;
        }
        value = value * 10 + static_cast<unsigned>(c - '0');
    }
    return value <= 65535;
}

namespace {

// The common Host, "name.example:8080" or "10.0.0.1": letters, digits, dots and dashes, then
// an optional port. Valid without the full authority grammar (which costs ~1% of a request).
bool plain_host(std::string_view host) {
    const auto colon = host.find(':');
    const std::string_view name = host.substr(0, colon);
    if (name.empty()) {
        return false;
    }
    for (const char c : name) {
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-') {
            return false;
        }
    }
    if (colon == std::string_view::npos) {
        return true;
    }
    const std::string_view port = host.substr(colon + 1);
    return !port.empty() && valid_port(port);
}

bool all_digits(std::string_view s) {
    return !s.empty() &&
           std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// A length the proxy can count to (and splice(2) can take): below 2^63. Beast's parser reads
// up to 2^64 - 1; past 2^63 the body would fail mid-way, after its head went on.
bool representable_length(std::string_view digits) {
    constexpr std::string_view largest = "9223372036854775807";
    const auto first = digits.find_first_not_of('0');
    if (first == std::string_view::npos) {
        return true;
    }
    digits.remove_prefix(first);
    return digits.size() < largest.size() || (digits.size() == largest.size() && digits <= largest);
}

// "gzip, chunked": chunked once, last, after other codings. The body's length is known (RFC 9112
// 6.3), so what is wrong is only a coding the proxy does not implement: 501, not 400 (6.1).
bool chunked_after_other_codings(std::string_view value) {
    std::size_t members = 0;
    std::size_t chunked = 0;
    bool last_chunked = false;
    for_each_list_member(value, [&](std::string_view member) {
        ++members;
        last_chunked = boost::beast::iequals(member, "chunked");
        chunked += last_chunked ? 1 : 0;
        return true;
    });
    return members > 1 && chunked == 1 && last_chunked;
}

}  // namespace

std::string_view framing_problem(const RequestHeader& header) {
    std::size_t hosts = 0;
    std::size_t lengths = 0;
    std::size_t codings = 0;
    std::string_view host;
    for (const auto& field : header) {
        switch (field.name()) {
            case http::field::host:
                ++hosts;
                host = field.value();
                break;
            case http::field::content_length:
                ++lengths;
                if (!all_digits(field.value())) {
                    return "invalid Content-Length";
                }
                if (!representable_length(field.value())) {
                    return "Content-Length too large";
                }
                break;
            case http::field::transfer_encoding:
                ++codings;
                if (!boost::beast::iequals(field.value(), "chunked") &&
                    !chunked_after_other_codings(field.value())) {
                    return "Transfer-Encoding not ending in a single chunked";
                }
                break;
            default:
                break;
        }
    }
    if (lengths > 0 && codings > 0) {
        return "both Content-Length and Transfer-Encoding";
    }
    if (lengths > 1) {
        return "more than one Content-Length";
    }
    if (codings > 1) {
        return "more than one Transfer-Encoding";
    }
    if (codings > 0 && header.version() < 11) {
        return "Transfer-Encoding in an HTTP/1.0 request";
    }
    if (hosts > 1) {
        return "more than one Host";
    }
    if (hosts == 0 && header.version() >= 11) {
        return "missing Host";
    }
    if (hosts == 1 && !plain_host(host)) {
        // An authority, without userinfo (RFC 9110 7.2: Host = uri-host [ ":" port ]). An empty
        // host (an empty field, or ":80") is an http URI with none, which RFC 9110 4.2.1 says to
        // reject (nginx does; RFC 9112 3.2's empty Host is for schemes without an authority).
        const auto authority = boost::urls::parse_authority(host);
        if (!authority || authority->has_userinfo() || authority->host().empty() ||
            !valid_port(authority->port())) {
            return "invalid Host";
        }
    }
    return {};
}

std::string_view unimplemented_coding(const RequestHeader& header) {
    const auto field = header.find(http::field::transfer_encoding);
    if (field != header.end() && !boost::beast::iequals(field->value(), "chunked")) {
        return "unsupported transfer coding before chunked (only chunked is implemented)";
    }
    return {};
}

namespace {

// RFC 9110 7.8: Upgrade = #protocol, protocol = token ["/" token]; at least one.
bool protocol_list(std::string_view value) {
    const auto tchar = [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) ||
               std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
    };
    bool any = false;
    bool valid = true;
    for_each_list_member(value, [&](std::string_view item) {
        const auto slash = item.find('/');
        const std::string_view name = item.substr(0, slash);
        const std::string_view version =
            slash == std::string_view::npos ? std::string_view("x") : item.substr(slash + 1);
        valid = !name.empty() && !version.empty() && std::all_of(name.begin(), name.end(), tchar) &&
                std::all_of(version.begin(), version.end(), tchar);
        any = true;
        return valid;
    });
    return any && valid;
}

}  // namespace

std::string_view response_framing_problem(const ResponseHeader& header) {
    const unsigned status = header.result_int();
    if (status < 100 || status > 599) {
        return "status out of range";
    }
    std::size_t lengths = 0;
    std::size_t codings = 0;
    bool upgrade = false;
    for (const auto& field : header) {
        switch (field.name()) {
            case http::field::content_length:
                ++lengths;
                if (!representable_length(field.value())) {
                    return "Content-Length too large";
                }
                break;
            case http::field::transfer_encoding:
                ++codings;
                if (!boost::beast::iequals(field.value(), "chunked")) {
                    return "Transfer-Encoding other than chunked";
                }
                break;
            case http::field::upgrade:
                // One field naming the protocol(s): what a client reads the switch by.
                if (upgrade || !protocol_list(field.value())) {
                    return "invalid Upgrade";
                }
                upgrade = true;
                break;
            default:
                break;
        }
    }
    if (codings > 1) {
        return "more than one Transfer-Encoding";
    }
    if (codings > 0 && lengths > 0) {
        return "both Content-Length and Transfer-Encoding";
    }
    if (codings > 0 && header.version() < 11) {
        // RFC 9112 6.1: faulty framing; what the backend meant to end the body with is unknown,
        // so the connection could not be used again either.
        return "Transfer-Encoding in an HTTP/1.0 response";
    }
    if (status == 101 && !upgrade) {
        return "101 without Upgrade";
    }
    return {};
}

}  // namespace bg
