#include "message_head.hpp"

namespace bg {

namespace http = boost::beast::http;

namespace {

void append_version(unsigned version, std::string& out) {
    out.append("HTTP/");
    out.push_back(static_cast<char>('0' + version / 10));
    out.push_back('.');
    out.push_back(static_cast<char>('0' + version % 10));
}

void append_fields(const Fields& fields, std::string& out) {
    for (const auto& field : fields) {
        out.append(field.name_string());
        out.append(": ");
        out.append(field.value());
        out.append("\r\n");
    }
    out.append("\r\n");
}

}  // namespace

void write_request_head(const RequestHeader& header, std::string& out) {
    out.clear();
    out.append(header.method_string());
    out.push_back(' ');
    out.append(header.target());
    out.push_back(' ');
    append_version(header.version(), out);
    out.append("\r\n");
    append_fields(header, out);
}

void write_response_head(const ResponseHeader& header, std::string& out) {
    out.clear();
    append_version(header.version(), out);
    out.push_back(' ');
    const unsigned code = header.result_int();
    out.push_back(static_cast<char>('0' + code / 100 % 10));
    out.push_back(static_cast<char>('0' + code / 10 % 10));
    out.push_back(static_cast<char>('0' + code % 10));
    out.push_back(' ');
    auto reason = header.reason();
    if (reason.empty() && http::int_to_status(code) != http::status::unknown) {
        reason = http::obsolete_reason(header.result());
    }
    out.append(reason);
    out.append("\r\n");
    append_fields(header, out);
}

ChunkPrefix::ChunkPrefix(std::size_t size) {
    static constexpr char digits[] = "0123456789abcdef";
    char reversed[16];
    std::size_t n = 0;
    do {
        reversed[n++] = digits[size & 0xf];
        size >>= 4;
    } while (size != 0);
    while (n > 0) {
        bytes_[length_++] = reversed[--n];
    }
    bytes_[length_++] = '\r';
    bytes_[length_++] = '\n';
}

}  // namespace bg
