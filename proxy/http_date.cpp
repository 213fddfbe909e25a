#include "http_date.hpp"

#include <ctime>

namespace bg {

std::string_view http_date_now() {
    thread_local std::time_t formatted_at = -1;
    thread_local char text[32];
    thread_local std::size_t length = 0;
    const std::time_t now = std::time(nullptr);
    if (now != formatted_at) {
        std::tm utc{};
        gmtime_r(&now, &utc);
        length = std::strftime(text, sizeof(text), "%a, %d %b %Y %H:%M:%S GMT", &utc);
        formatted_at = now;
    }
    return {text, length};
}

}  // namespace bg
