#include "chunk_framing.hpp"

#include <algorithm>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/error.hpp>

namespace bg {

namespace {
// Whether a chunk-size line (its CRLF excluded) ends inside a quoted extension value: Beast's
// parser then reads on past the CRLF for the closing quote, holding the body (and its backend
// connection) until a limit or a timeout, where a quoted-string can hold no CR or LF
// (RFC 9110 5.6.4): an outside probe's `5;a="x` line got no answer for client_body's 60 s.
bool ends_in_open_quote(std::string_view line) {
    bool quoted = false;
    for (std::size_t i = 0; i < line.size(); ++i) {
        if (quoted && line[i] == '\\') {
            ++i;
        } else if (line[i] == '"') {
            quoted = !quoted;
        }
    }
    return quoted;
}
}  // namespace

ChunkFraming check_pending_chunk_framing(std::string_view pending, std::size_t max_chunk_line,
                                         std::size_t max_trailer) {
    // Beast parses the CRLF that ends a chunk's data together with the next chunk-size line.
    if (pending.starts_with("\r\n")) {
        pending.remove_prefix(2);
    }
    for (auto lf = pending.find('\n'); lf != std::string_view::npos;
         lf = pending.find('\n', lf + 1)) {
        if (lf == 0 || pending[lf - 1] != '\r') {
            return ChunkFraming::bare_lf;
        }
    }
    // A CR with a byte after it that is not LF (the trailer's `\r\r\n` waited as well).
    for (auto cr = pending.find('\r'); cr != std::string_view::npos && cr + 1 < pending.size();
         cr = pending.find('\r', cr + 1)) {
        if (pending[cr + 1] != '\n') {
            return ChunkFraming::bare_lf;
        }
    }
    const auto eol = pending.find("\r\n");
    if (eol == std::string_view::npos) {
        return pending.size() > max_chunk_line ? ChunkFraming::chunk_line_too_long
                                               : ChunkFraming::within_limits;
    }
    if (ends_in_open_quote(pending.substr(0, eol))) {
        return ChunkFraming::control_byte;
    }
    // A complete chunk-size line is held back only when it is the last chunk's, waiting for
    // the end of the trailer section that follows it.
    if (eol > max_chunk_line) {
        return ChunkFraming::chunk_line_too_long;
    }
    return pending.size() - eol - 2 > max_trailer ? ChunkFraming::trailer_too_long
                                                  : ChunkFraming::within_limits;
}

namespace {
bool hex_digit(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

bool control_byte(char c) {
    const auto u = static_cast<unsigned char>(c);
    return (u < 0x20 && c != '\t') || u == 0x7f;
}

// A CR not before an LF, or an LF not after a CR.
bool has_bare_line_break(std::string_view text) {
    for (std::size_t i = 0; i < text.size(); ++i) {
        if ((text[i] == '\r' && (i + 1 == text.size() || text[i + 1] != '\n')) ||
            (text[i] == '\n' && (i == 0 || text[i - 1] != '\r'))) {
            return true;
        }
    }
    return false;
}

// The fields Beast's parser acts on wherever they appear (basic_parser::do_field).
bool framing_field(std::string_view name) {
    for (const std::string_view known :
         {"content-length", "transfer-encoding", "connection", "proxy-connection", "upgrade"}) {
        if (boost::beast::iequals(name, known)) {
            return true;
        }
    }
    return false;
}

// Renames each framing field of a trailer section (its lines up to the empty one) to as many
// 'x's: still a valid token, so the section parses as before, and the field is inert.
void defuse_trailer_fields(char* section, std::size_t length) {
    char* line = section;
    char* const end = section + length;
    while (line < end) {
        const std::string_view rest(line, static_cast<std::size_t>(end - line));
        const std::size_t eol = std::min(rest.find("\r\n"), rest.size());
        const std::size_t colon = rest.substr(0, eol).find(':');
        if (colon != std::string_view::npos && framing_field(rest.substr(0, colon))) {
            std::fill_n(line, colon, 'x');
        }
        line += eol + 2;
    }
}
}  // namespace

void ChunkHeaderGuard::operator()(std::uint64_t size, std::string_view extensions,
                                  boost::system::error_code& ec) {
    // The line: the size's digits (any number of leading zeros: Beast takes them), which end
    // where the extensions start, then the extensions.
    std::size_t digits = 16;  // the most a size without leading zeros has
    if (input_begin != nullptr && extensions.data() != nullptr) {
        digits = 0;
        for (const char* p = extensions.data(); p > input_begin && hex_digit(p[-1]); --p) {
            ++digits;
        }
    }
    if (digits + extensions.size() > max_chunk_line) {
        over = ChunkFraming::chunk_line_too_long;
        ec = boost::beast::http::error::bad_chunk_extension;
        return;
    }
    // Beast takes any byte but '"' and '\\' inside a quoted extension, a bare LF too: a front
    // end that ends the line there reads a different message (a request smuggled past it).
    if (std::any_of(extensions.begin(), extensions.end(), control_byte)) {
        over = ChunkFraming::control_byte;
        ec = boost::beast::http::error::bad_chunk_extension;
        return;
    }
    if (size != 0 || input_end == nullptr || extensions.data() == nullptr) {
        return;
    }
    // The last chunk: its line ends 2 bytes after its extensions, and the trailer section,
    // complete in the input (Beast found its end before calling), runs to the empty line.
    char* const trailer = input_begin + (extensions.data() - input_begin) + extensions.size() + 2;
    if (trailer > input_end) {
        return;
    }
    const std::string_view rest(trailer, static_cast<std::size_t>(input_end - trailer));
    const std::size_t length = rest.starts_with("\r\n") ? 0 : rest.find("\r\n\r\n");
    if (length == std::string_view::npos) {
        return;
    }
    if (length > max_trailer) {
        over = ChunkFraming::trailer_too_long;
        ec = boost::beast::http::error::header_limit;
        return;
    }
    if (has_bare_line_break(rest.substr(0, length))) {
        over = ChunkFraming::bare_lf;
        ec = boost::beast::http::error::bad_line_ending;
        return;
    }
    defuse_trailer_fields(trailer, length);
}

}  // namespace bg
