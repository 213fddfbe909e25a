#include "pending_input.hpp"

#include <sys/socket.h>

#include <cerrno>
#include <string_view>

namespace bg {

FirstByte peek_first_byte(int descriptor) {
    if (descriptor < 0) {
        return {FirstByte::ended};
    }
    unsigned char byte = 0;
    const ssize_t n = ::recv(descriptor, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 1) {
        return {FirstByte::sent, byte};
    }
    const bool nothing_yet = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    return {nothing_yet ? FirstByte::none_yet : FirstByte::ended};
}

bool request_is_head(int descriptor) {
    char method[5] = {};
    return descriptor >= 0 &&
           ::recv(descriptor, method, sizeof method, MSG_PEEK | MSG_DONTWAIT) == sizeof method &&
           std::string_view(method, sizeof method) == "HEAD ";
}

bool input_waiting(int descriptor) {
    return peek_first_byte(descriptor).kind == FirstByte::sent;
}

}  // namespace bg
