#include "pending_input.hpp"

#include <sys/socket.h>

namespace bg {

bool input_waiting(int descriptor) {
    char byte = 0;
    return descriptor >= 0 && ::recv(descriptor, &byte, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

bool plain_http_first(int descriptor) {
    char byte = 0;
    return descriptor >= 0 && ::recv(descriptor, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 1 &&
           byte >= 'A' && byte <= 'Z';
}

}  // namespace bg
