#pragma once
// UploadAnswerWatch: notices a backend that answered a request before taking all of its body
// and then neither reads the rest nor closes (a 413 or 401 sent early). The upload would wait
// on it until the write timeout and the client would get a 504, its answer lost.
//
// While a request body goes to a plain backend connection, the worker's sweep (every
// timeouts.client_close_check, with ClientCloseWatch's) looks at the upload: if it is waiting
// on the backend and has not moved since the sweep before, and the backend's bytes waiting to be
// read begin a final response, the pending write is cancelled and that response is the answer
// (RequestExchange::answered_early). An upload the backend still takes is never cut, whatever
// it has answered. Under TLS the waiting bytes cannot be read without taking them, so a TLS
// backend connection is not watched. Worker thread only.

#include <boost/intrusive/list_hook.hpp>
#include <cstdint>
#include <string_view>

#include "session_handle.hpp"

namespace bg {

class ConnectionDeadline;
class Worker;

// Whether `bytes` (the start of what a backend sent) begin a final response: a status line of
// 200 or more, after any complete interim (1xx) heads.
bool begins_final_response(std::string_view bytes);

class UploadAnswerWatch : public boost::intrusive::list_base_hook<
                              boost::intrusive::link_mode<boost::intrusive::auto_unlink>> {
  public:
    UploadAnswerWatch(Worker& worker, SessionHandle& handle, const ConnectionDeadline& deadline)
        : worker_(worker), handle_(handle), deadline_(deadline) {}
    UploadAnswerWatch(const UploadAnswerWatch&) = delete;
    UploadAnswerWatch& operator=(const UploadAnswerWatch&) = delete;

    // Watches an upload to the handle's backend connection; `progress` counts the body bytes
    // taken from the client so far, and does not move while a write to the backend is stuck.
    void start(const std::uint64_t& progress);
    // Harmless when not watching (the hook unlinks itself on destruction too).
    void stop() { unlink(); }
    // The sweep cancelled the upload: the backend had answered and stopped taking it.
    bool answered() const { return answered_; }

    // The sweep's look (Worker::sweep_in_flight).
    void look();

  private:
    Worker& worker_;
    SessionHandle& handle_;
    const ConnectionDeadline& deadline_;
    const std::uint64_t* progress_ = nullptr;
    std::uint64_t seen_ = 0;  // progress at the sweep before
    bool looked_ = false;     // seen_ is set
    bool answered_ = false;
};

}  // namespace bg
