#include "late_head_answer.hpp"

#include <sys/socket.h>

#include <array>
#include <cstdio>
#include <string_view>

#include "http_date.hpp"

namespace bg {

bool answer_late_head(int fd, bool head_request) {
    // At most a few reads: a client flooding bytes gets its reset, and no answer.
    std::array<char, 4096> unread;
    for (int i = 0; i < 4 && ::recv(fd, unread.data(), unread.size(), MSG_DONTWAIT) > 0; ++i) {
    }
    constexpr std::string_view body = "408 Request Timeout: request head not received in time\n";
    const std::string_view date = http_date_now();
    std::array<char, 320> answer;
    const int n = std::snprintf(answer.data(), answer.size(),
                                "HTTP/1.1 408 Request Timeout\r\nDate: %.*s\r\n"
                                "Content-Type: text/plain\r\nX-BG-Error: request head not "
                                "received in time\r\nContent-Length: %zu\r\n"
                                "Connection: close\r\n\r\n%.*s",
                                static_cast<int>(date.size()), date.data(), body.size(),
                                head_request ? 0 : static_cast<int>(body.size()), body.data());
    if (n <= 0 || static_cast<std::size_t>(n) >= answer.size()) {
        return false;
    }
    return ::send(fd, answer.data(), static_cast<std::size_t>(n), MSG_DONTWAIT | MSG_NOSIGNAL) == n;
}

}  // namespace bg
