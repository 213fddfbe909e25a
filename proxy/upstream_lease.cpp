#include "upstream_lease.hpp"

#include "balancer.hpp"
#include "session_handle.hpp"

namespace bg {

UpstreamLease::~UpstreamLease() {
    drop();
}

void UpstreamLease::hold(const Backend& backend, UpstreamStream stream, bool reused) {
    drop();
    backend_ = &backend;
    stream_.emplace(std::move(stream));
    reused_ = reused;
    handle_.upstream = &stream_->socket();
    handle_.upstream_backend = backend.id;
    balancer_.on_request_start(backend.id);
}

void UpstreamLease::drop() {
    if (stream_) {
        end_registration();
        stream_.reset();  // closes it
    }
}

UpstreamStream UpstreamLease::give_back() {
    end_registration();
    UpstreamStream stream = std::move(*stream_);
    stream_.reset();
    return stream;
}

void UpstreamLease::end_registration() {
    balancer_.on_request_end(backend_->id);
    handle_.upstream = nullptr;
}

}  // namespace bg
