#pragma once
// The concrete I/O types of the data path. Everything a worker runs is bound to its own
// io_context's executor type rather than the type-erased any_io_executor: each async step
// then costs no executor copies through a virtual table (perf showed ~8% of a request there).

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/basic_socket_acceptor.hpp>
#include <boost/asio/basic_stream_socket.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace bg {

using Executor = boost::asio::io_context::executor_type;
using Socket = boost::asio::basic_stream_socket<boost::asio::ip::tcp, Executor>;
using Acceptor = boost::asio::basic_socket_acceptor<boost::asio::ip::tcp, Executor>;

template <class T>
using Task = boost::asio::awaitable<T, Executor>;

// Errors are values on the data path: every async step returns its error_code. Deferred, so
// that `co_await op(..., nothrow)` runs the operation in the awaiting coroutine's frame: with
// use_awaitable each operation made a coroutine frame of its own (3 of a proxied request's 16).
inline constexpr auto nothrow = boost::asio::as_tuple(boost::asio::deferred);

}  // namespace bg
