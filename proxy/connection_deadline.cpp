#include "connection_deadline.hpp"

#include <boost/asio/basic_waitable_timer.hpp>

#include "coarse_clock.hpp"
#include "late_head_answer.hpp"

namespace bg {

namespace {
using Clock = std::chrono::steady_clock;
using Timer = boost::asio::basic_waitable_timer<Clock, boost::asio::wait_traits<Clock>, Executor>;
constexpr Clock::time_point never = Clock::time_point::max();

// A socket of `target` the expiry closed and nothing has replaced (a new backend connection is
// open, so a later step on it is not this expiry's).
bool closed_by_expiry(const SessionHandle& handle, unsigned target) {
    const auto closed = [](const Socket* socket) {
        return socket != nullptr && !socket->is_open();
    };
    return ((target & ConnectionDeadline::client) != 0 && closed(handle.client)) ||
           ((target & ConnectionDeadline::upstream) != 0 && closed(handle.upstream));
}
}  // namespace

struct ConnectionDeadline::State {
    State(const Executor& executor, SessionHandle& h) : timer(executor), handle(&h) {}
    Timer timer;
    SessionHandle* handle;
    Clock::time_point deadline = never;
    Clock::time_point waiting_until = never;  // when the pending wait ends; never: none pending
    unsigned target = 0;
    bool expired = false;
    bool answer_late_head = false;
    bool late_head_is_head = false;  // the request late is a HEAD
    bool answered_late_head = false;
    bool alive = true;
    std::uint64_t generation = 0;  // a wait that was superseded ignores its completion
};

void ConnectionDeadline::on_timer(const std::shared_ptr<State>& state, std::uint64_t generation) {
    auto& s = *state;
    if (!s.alive || generation != s.generation) {
        return;
    }
    s.waiting_until = never;
    if (s.deadline == never) {
        return;
    }
    if (Clock::now() < s.deadline) {
        wait(state);  // the deadline moved on while we waited
        return;
    }
    s.expired = true;
    s.deadline = never;
    boost::system::error_code ignored;
    if ((s.target & ConnectionDeadline::client) != 0 && s.handle->client != nullptr) {
        s.answered_late_head =
            s.answer_late_head && s.handle->client->is_open() &&
            bg::answer_late_head(s.handle->client->native_handle(), s.late_head_is_head);
        s.handle->client->close(ignored);
    }
    if ((s.target & ConnectionDeadline::upstream) != 0 && s.handle->upstream != nullptr) {
        s.handle->upstream->close(ignored);
    }
}

void ConnectionDeadline::wait(const std::shared_ptr<State>& state) {
    auto& s = *state;
    s.waiting_until = s.deadline;
    s.timer.expires_at(s.deadline);  // cancels a pending wait: its generation is stale
    const std::uint64_t generation = ++s.generation;
    s.timer.async_wait(
        [state, generation](boost::system::error_code) { on_timer(state, generation); });
}

ConnectionDeadline::ConnectionDeadline(const Executor& executor, SessionHandle& handle)
    : state_(std::make_shared<State>(executor, handle)) {}

ConnectionDeadline::~ConnectionDeadline() {
    state_->alive = false;
    state_->timer.cancel();
}

void ConnectionDeadline::arm(std::chrono::milliseconds limit, Target target) {
    auto& s = *state_;
    s.deadline = CoarseClock::now() + limit;
    s.target = target;
    s.answer_late_head = false;
    // The step the expiry cut short may still have completed (its bytes came in the same turn
    // as the expiry): the next step then fails on the closed socket, and that is the timeout's
    // doing, not a peer's (a 408 or 504, never a "client gone" or a 502).
    s.expired = s.expired && closed_by_expiry(*s.handle, target);
    if (s.deadline < s.waiting_until) {
        wait(state_);
    }
}

void ConnectionDeadline::answer_late_head(bool answer, bool head_request) {
    state_->answer_late_head = answer;
    state_->late_head_is_head = head_request;
}

bool ConnectionDeadline::answered_late_head() const {
    return state_->answered_late_head;
}

void ConnectionDeadline::disarm() {
    state_->deadline = never;
}

bool ConnectionDeadline::expired() const {
    return state_->expired;
}

ConnectionDeadline::Target ConnectionDeadline::target() const {
    return static_cast<Target>(state_->target);
}

}  // namespace bg
