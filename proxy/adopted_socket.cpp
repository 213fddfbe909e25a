#include "adopted_socket.hpp"

#include <boost/asio/detail/socket_ops.hpp>

namespace bg {

namespace {

// asio keeps what it knows of a socket in its implementation's state bits, which no public
// call sets without the syscall this avoids; they are reached as a derived class may (through a
// pointer to the protected member).
struct SocketState : Socket {
    static auto& of(Socket& socket) {
        return (socket.*(&SocketState::impl_)).get_implementation().state_;
    }
};

}  // namespace

Socket adopt_socket(boost::asio::io_context& io, bool v6, int descriptor,
                    boost::system::error_code& ec) {
    namespace ops = boost::asio::detail::socket_ops;
    Socket socket(io);
    socket.assign(v6 ? boost::asio::ip::tcp::v6() : boost::asio::ip::tcp::v4(), descriptor, ec);
    if (!ec) {
        auto& state = SocketState::of(socket);
        state =
            static_cast<ops::state_type>((state | ops::internal_non_blocking) & ~ops::possible_dup);
    }
    return socket;
}

}  // namespace bg
