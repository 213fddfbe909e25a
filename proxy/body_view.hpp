#pragma once
// BodyView: the body type of the proxy's parsers. A relayed body is never stored: the parser
// says where its next piece lies in the read buffer it was given (the bytes as received, left
// in place), and the relay writes them from there. Beast's buffer_body copied every piece out
// of the read buffer first: one memcpy of every body byte, and a piece buffer per exchange.
// One piece per put(): a second piece in the same input (the next chunk) waits, as with a full
// buffer_body, with error::need_buffer.
//
// The piece is valid until the read buffer is next prepared for a read: the relay writes it
// before reading again (body_relay.hpp).

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/optional/optional.hpp>
#include <cstddef>
#include <cstdint>

namespace bg {

struct BodyView {
    struct value_type {
        const char* data = nullptr;  // the piece the last put() found, inside the read buffer
        std::size_t size = 0;        // its length; 0: none yet (reset it before each put())
    };

    class reader {
      public:
        template <bool isRequest, class Fields>
        reader(boost::beast::http::header<isRequest, Fields>&, value_type& body) : body_(body) {}

        void init(const boost::optional<std::uint64_t>&, boost::system::error_code& ec) { ec = {}; }

        template <class ConstBufferSequence>
        std::size_t put(const ConstBufferSequence& buffers, boost::system::error_code& ec) {
            if (body_.size > 0) {
                ec = boost::beast::http::error::need_buffer;
                return 0;
            }
            // Beast hands its body callback one contiguous buffer (a flat_buffer's data).
            const boost::asio::const_buffer piece = *boost::asio::buffer_sequence_begin(buffers);
            body_.data = static_cast<const char*>(piece.data());
            body_.size = piece.size();
            ec = {};
            return piece.size();
        }

        void finish(boost::system::error_code& ec) { ec = {}; }

      private:
        value_type& body_;
    };
};

}  // namespace bg
