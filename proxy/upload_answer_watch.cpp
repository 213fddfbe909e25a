#include "upload_answer_watch.hpp"

#include <sys/socket.h>

#include <array>
#include <cctype>

#include "connection_deadline.hpp"
#include "worker.hpp"

namespace bg {

bool begins_final_response(std::string_view bytes) {
    for (;;) {
        // "HTTP/1.x NNN": the status code's first digit tells an interim response.
        constexpr std::string_view prefix = "HTTP/1.";
        if (bytes.size() < prefix.size() + 5 || bytes.substr(0, prefix.size()) != prefix ||
            bytes[prefix.size() + 1] != ' ' ||
            !std::isdigit(static_cast<unsigned char>(bytes[prefix.size() + 2]))) {
            return false;
        }
        if (bytes[prefix.size() + 2] != '1') {
            return bytes[prefix.size() + 2] >= '2';
        }
        const auto end = bytes.find("\r\n\r\n");
        if (end == std::string_view::npos) {
            return false;  // an interim head not all here: what follows it is unknown
        }
        bytes.remove_prefix(end + 4);
    }
}

void UploadAnswerWatch::start(const std::uint64_t& progress) {
    progress_ = &progress;
    looked_ = false;
    answered_ = false;
    worker_.watch_upload(*this);
}

void UploadAnswerWatch::look() {
    Socket* upstream = handle_.upstream;
    if (upstream == nullptr || !upstream->is_open()) {
        return;
    }
    const bool moved = !looked_ || *progress_ != seen_;
    looked_ = true;
    seen_ = *progress_;
    // Stuck: a whole sweep interval on a write to the backend. Waiting on the client is not.
    if (moved || deadline_.target() != ConnectionDeadline::upstream) {
        return;
    }
    std::array<char, 4096> peeked;
    const ssize_t n =
        ::recv(upstream->native_handle(), peeked.data(), peeked.size(), MSG_PEEK | MSG_DONTWAIT);
    if (n > 0 && begins_final_response({peeked.data(), static_cast<std::size_t>(n)})) {
        answered_ = true;
        boost::system::error_code ignored;
        upstream->cancel(ignored);  // the pending write ends with operation_aborted
    }
}

}  // namespace bg
