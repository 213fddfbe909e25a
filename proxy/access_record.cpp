#include "access_record.hpp"

#include <cstdio>
#include <ctime>

namespace bg {

namespace {

void append_escaped(std::string& out, const std::string& text) {
    out.push_back('"');
    for (char c : text) {
        switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            default:
                if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
                    char hex[8];
                    std::snprintf(hex, sizeof(hex), "\\u%04x", static_cast<unsigned char>(c));
                    out += hex;
                } else {
                    out.push_back(c);
                }
        }
    }
    out.push_back('"');
}

}  // namespace

std::string to_json_line(const AccessRecord& r) {
    std::string out;
    out.reserve(256 + r.path.size());
    std::time_t seconds = static_cast<std::time_t>(r.start_unix_ms / 1000);
    std::tm tm{};
    gmtime_r(&seconds, &tm);
    char time[48];
    std::snprintf(time, sizeof(time), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<int>(r.start_unix_ms % 1000));
    char numbers[256];
    out += "{\"time\":\"";
    out += time;
    out += "\",\"client\":";
    append_escaped(out, r.client);
    out += ",\"method\":";
    append_escaped(out, r.method);
    out += ",\"path\":";
    append_escaped(out, r.path);
    std::snprintf(numbers, sizeof(numbers),
                  ",\"status\":%u,\"bytes_in\":%llu,\"bytes_out\":%llu,\"duration_ms\":%.3f,"
                  "\"upstream_ms\":%.3f,\"retries\":%u,\"version\":%llu",
                  r.status, static_cast<unsigned long long>(r.bytes_in),
                  static_cast<unsigned long long>(r.bytes_out), r.duration_ms, r.upstream_ms,
                  r.retries, static_cast<unsigned long long>(r.version));
    out += numbers;
    out += ",\"colour\":";
    append_escaped(out, r.colour);
    out += ",\"backend\":";
    append_escaped(out, r.backend);
    if (!r.error.empty()) {
        out += ",\"error\":";
        append_escaped(out, r.error);
    }
    out.push_back('}');
    return out;
}

}  // namespace bg
