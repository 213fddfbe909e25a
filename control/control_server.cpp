#include "control_server.hpp"

#include <grp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/json/serialize.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "access.hpp"
#include "command.hpp"
#include "connection_slots.hpp"

namespace bg {

namespace asio = boost::asio;
namespace json = boost::json;
using local = asio::local::stream_protocol;

namespace {

constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);
// Replies and events queued for one connection.
using Outbox = asio::experimental::channel<void(boost::system::error_code, std::string)>;

bool changes_state_line(std::string_view line) {
    const ParsedCommand parsed = parse_command(line);
    return !parsed.command || changes_state(parsed.command->verb);
}

// The end of input is either a hang-up or a half-close (`echo flip | socat - UNIX-CONNECT:...`
// shuts its side for writing, then waits for the reply, as with HAProxy's runtime API): only
// a peer gone both ways makes a Unix socket report POLLHUP.
bool peer_gone(int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR)) != 0;
}

// While a command waits for its answer: a client that hangs up cancels it, if it has not
// started applying (Switchboard::cancel). A client that sends more is not watched further.
void cancel_if_client_leaves(local::socket& socket, Switchboard& switchboard, const Caller& caller,
                             std::string id, std::shared_ptr<bool> answered) {
    socket.async_wait(
        local::socket::wait_read, [&switchboard, caller, fd = socket.native_handle(),
                                   id = std::move(id), answered](boost::system::error_code ec) {
            if (ec || *answered) {
                return;
            }
            char byte = 0;
            const ssize_t n = ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
            if ((n == 0 && peer_gone(fd)) || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
                switchboard.cancel(caller, id, "the client closed the connection");
            }
        });
}

// Streams events to a `watch` client until it goes away (a read then fails).
asio::awaitable<void> stream_events(local::socket& socket, Switchboard& switchboard,
                                    std::shared_ptr<Outbox> outbox) {
    const std::uint64_t watcher = switchboard.subscribe([outbox](const json::object& event) {
        outbox->try_send(boost::system::error_code{}, json::serialize(event) + "\n");
    });
    auto closed = std::make_shared<bool>(false);
    asio::co_spawn(
        socket.get_executor(),
        [&socket, outbox, closed]() -> asio::awaitable<void> {
            char sink[256];
            for (;;) {
                auto [e, k] = co_await socket.async_read_some(asio::buffer(sink), nothrow);
                if (e) {
                    break;
                }
            }
            *closed = true;
            outbox->close();
        },
        asio::detached);
    for (;;) {
        auto [e, event] = co_await outbox->async_receive(nothrow);
        if (e || *closed) {
            break;
        }
        auto [we, wn] = co_await asio::async_write(socket, asio::buffer(event), nothrow);
        if (we) {
            break;
        }
    }
    switchboard.unsubscribe(watcher);
    boost::system::error_code ignored;
    socket.close(ignored);
    // Let the reader see the close before the socket goes away.
    while (!*closed) {
        asio::steady_timer wait(socket.get_executor(), std::chrono::milliseconds(1));
        co_await wait.async_wait(nothrow);
    }
}

// Over max_connections with no connection idle to make room within idle_timeout (or as many
// newcomers already waiting): the client is told why, and the connection closed.
asio::awaitable<void> turn_away(local::socket& socket, std::size_t limit) {
    std::string reply = json::serialize(
        json::object{{"ok", false},
                     {"error", "too many control connections (limit " + std::to_string(limit) +
                                   ", [control] max_connections), each running a command or "
                                   "watching, and none came free in time; nothing changed"}});
    reply.push_back('\n');
    co_await asio::async_write(socket, asio::buffer(reply), nothrow);
}

asio::awaitable<void> serve(local::socket socket, ControlConfig config, Switchboard& switchboard,
                            std::shared_ptr<ConnectionSlots> slots,
                            std::shared_ptr<std::size_t> replies_due) {
    std::string input;  // read, not yet run
    // A newcomer finding every slot running a change or watching waits its turn, as long as a
    // connection may stay without a command. (Built outside the co_await: GCC 12 miscompiles
    // temporaries there.)
    ConnectionSlots::Connection connection;
    connection.close = [&socket] {
        boost::system::error_code ignored;
        socket.close(ignored);
    };
    connection.has_request = [&socket, &input] {
        return ConnectionSlots::request_pending(socket.native_handle(), input, "\n");
    };
    const ConnectionSlots::Handle slot =
        co_await slots->take_in_turn(connection, config.idle_timeout);
    if (!slot) {
        co_await turn_away(socket, config.max_connections);
        co_return;
    }
    struct Leave {
        std::shared_ptr<ConnectionSlots> slots;
        ConnectionSlots::Handle slot;
        ~Leave() { slots->release(slot); }
    } leave{slots, slot};
    const Caller caller = identify_peer(socket.native_handle(), config);
    auto outbox = std::make_shared<Outbox>(socket.get_executor(), 1024);
    asio::steady_timer idle(socket.get_executor());
    // Each wait is numbered: a wait that expired as its read or write completed is already
    // queued, and cancel() no longer stops it; it must not close the socket afterwards (the
    // coroutine may be gone by then).
    auto idle_wait = std::make_shared<std::uint64_t>(0);
    // Waiting for a command, or for its client to read a reply (its slot may be taken either
    // way), and closed after idle_timeout unless stop_idle() comes first.
    auto wait_idle = [&](bool answering) {
        if (answering) {
            slots->answering(slot);
        } else {
            slots->idle(slot);
        }
        idle.expires_after(config.idle_timeout);
        idle.async_wait([&socket, idle_wait, mine = ++*idle_wait](boost::system::error_code ec) {
            if (!ec && *idle_wait == mine) {
                boost::system::error_code ignored;
                socket.close(ignored);
            }
        });
    };
    auto stop_idle = [&] {
        ++*idle_wait;
        idle.cancel();
    };
    for (;;) {
        // A connection that sends no command for idle_timeout is closed: it holds a slot.
        wait_idle(false);
        auto [ec, n] = co_await asio::async_read_until(
            socket, asio::dynamic_buffer(input, config.max_line), '\n', nothrow);
        stop_idle();
        if (ec == asio::error::not_found) {
            // A line longer than the limit: say so and hang up; nothing was run.
            std::string reply = json::serialize(json::object{
                {"ok", false},
                {"error", "command line longer than " + std::to_string(config.max_line) +
                              " bytes; nothing changed"}});
            reply.push_back('\n');
            input.clear();    // what it sent is dropped
            wait_idle(true);  // as any reply: closable, and timed, while it waits on the client
            co_await asio::async_write(socket, asio::buffer(reply), nothrow);
            stop_idle();
            break;
        }
        if (ec) {
            break;
        }
        std::string line = input.substr(0, n - 1);
        input.erase(0, n);
        if (changes_state_line(line)) {
            // A change in flight holds its slot; a read (status, history) leaves it idle, so
            // a client pipelining reads never fills the house against an operator's command.
            ConnectionSlots::busy(*slot);
        }
        auto answered = std::make_shared<bool>(false);
        ++*replies_due;  // until its reply is written (below), however long it takes to come
        const std::string id =
            switchboard.execute(caller, line, [outbox, answered](const json::object& reply) {
                *answered = true;
                outbox->try_send(boost::system::error_code{}, json::serialize(reply) + "\n");
            });
        if (!*answered && input.empty()) {
            cancel_if_client_leaves(socket, switchboard, caller, id, answered);
        }
        auto [rec, reply] = co_await outbox->async_receive(nothrow);
        *answered = true;
        boost::system::error_code ignored;
        socket.cancel(ignored);  // the wait for a hang-up, if any
        if (rec) {
            --*replies_due;
            break;
        }
        bool watching = reply.find("\"watching\":true") != std::string::npos;
        if (watching && !slots->watch(*slot)) {
            watching = false;  // refused: written as any reply, its slot closable meanwhile
            reply = json::serialize(
                        json::object{{"ok", false},
                                     {"error", "too many watch streams (limit " +
                                                   std::to_string(config.max_watchers) +
                                                   ", [control] max_watchers); nothing changed"}}) +
                    "\n";
        }
        if (!watching) {
            // A client that does not read its replies (a pipelined flood of status, history
            // 1000) holds no slot against an operator: while the reply waits on the client, the
            // slot may be taken, and after idle_timeout without progress the connection closes.
            wait_idle(true);
        }
        auto [wec, wn] = co_await asio::async_write(socket, asio::buffer(reply), nothrow);
        stop_idle();
        --*replies_due;
        if (wec) {
            break;
        }
        if (watching) {
            co_await stream_events(socket, switchboard, outbox);
            co_return;
        }
    }
}

}  // namespace

ControlServer::ControlServer(asio::io_context& io, const ControlConfig& config,
                             Switchboard& switchboard)
    : io_(io),
      config_(config),
      switchboard_(switchboard),
      acceptor_(io),
      accept_pause_(io, "control socket"),
      slots_(std::make_shared<ConnectionSlots>(config.max_connections, config.max_watchers)),
      replies_due_(std::make_shared<std::size_t>(0)),
      flush_timer_(io) {}

ControlServer::~ControlServer() {
    close();
}

bool ControlServer::open(std::string& error) {
    namespace fs = std::filesystem;
    const fs::path path(config_.socket);
    std::error_code fs_error;
    if (path.has_parent_path()) {
        fs::create_directories(path.parent_path(), fs_error);
    }
    // A socket file left by a process that is gone is replaced; one a live process answers on,
    // or anything else at the path, is not.
    struct stat st {};
    if (::lstat(config_.socket.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            error = "control socket path " + config_.socket + " exists and is not a socket";
            return false;
        }
        local::socket probe(io_);
        boost::system::error_code connect_error;
        probe.connect(local::endpoint(config_.socket), connect_error);
        if (!connect_error) {
            error = "another process is listening on the control socket " + config_.socket;
            return false;
        }
        ::unlink(config_.socket.c_str());
    }
    boost::system::error_code ec;
    acceptor_.open(local(), ec);
    if (!ec) {
        // Created with its final permissions: no moment when anyone may connect (chmod after
        // bind left a window with the umask's mode).
        const mode_t previous = ::umask(~config_.socket_mode & 0777);
        acceptor_.bind(local::endpoint(config_.socket), ec);
        ::umask(previous);
    }
    if (!ec && ::lstat(config_.socket.c_str(), &st) == 0) {
        bound_ = {st.st_dev, st.st_ino};
    }
    if (!ec) {
        acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    }
    if (ec) {
        error = "cannot listen on control socket " + config_.socket + ": " + ec.message();
        return false;
    }
    if (::chmod(config_.socket.c_str(), config_.socket_mode) != 0) {
        error = "cannot set mode of control socket " + config_.socket + ": " + std::strerror(errno);
        return false;
    }
    if (!config_.socket_group.empty()) {
        group* g = ::getgrnam(config_.socket_group.c_str());
        if (g == nullptr) {
            error = "control.socket_group: no group named '" + config_.socket_group + "'";
            return false;
        }
        if (::chown(config_.socket.c_str(), static_cast<uid_t>(-1), g->gr_gid) != 0) {
            error = "cannot give control socket to group " + config_.socket_group + ": " +
                    std::strerror(errno);
            return false;
        }
    }
    return true;
}

void ControlServer::start() {
    accept();
}

void ControlServer::close() {
    if (acceptor_.is_open()) {
        boost::system::error_code ignored;
        acceptor_.close(ignored);
        accept_pause_.cancel();
        // Only our own socket file: a newer process may have replaced it at the same path.
        struct stat st {};
        if (::lstat(config_.socket.c_str(), &st) == 0 && bound_ && bound_->first == st.st_dev &&
            bound_->second == st.st_ino) {
            ::unlink(config_.socket.c_str());
        }
    }
}

void ControlServer::when_replies_written(std::chrono::milliseconds limit,
                                         std::function<void()> then) {
    wait_for_replies(std::chrono::steady_clock::now() + limit, std::move(then));
}

void ControlServer::wait_for_replies(std::chrono::steady_clock::time_point deadline,
                                     std::function<void()> then) {
    // Polled: the count is shared with every control session's coroutine, none of which knows
    // it was the last. One deadline, however late each poll's timer fires.
    if (*replies_due_ == 0 || std::chrono::steady_clock::now() >= deadline) {
        then();
        return;
    }
    flush_timer_.expires_after(std::chrono::milliseconds(5));
    flush_timer_.async_wait(
        [this, deadline, then = std::move(then)](boost::system::error_code) mutable {
            wait_for_replies(deadline, std::move(then));
        });
}

void ControlServer::accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, local::socket socket) {
        if (ec == asio::error::operation_aborted || !acceptor_.is_open()) {
            return;
        }
        if (accept_pause_.pause_after(ec, switchboard_.config()->timeouts.accept_pause,
                                      [this] { accept(); })) {
            return;  // out of descriptors: accepting again at once would spin
        }
        if (!ec) {
            asio::co_spawn(io_,
                           serve(std::move(socket), config_, switchboard_, slots_, replies_due_),
                           asio::detached);
        }
        accept();
    });
}

}  // namespace bg
