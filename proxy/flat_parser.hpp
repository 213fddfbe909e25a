#pragma once
// FlatParser: Beast's HTTP/1 parser (basic_parser: all of its checks) filling a message whose
// fields are FlatFields in an exchange's arena, with a BodyView body. It is Beast's
// http::parser with the field container swapped, which http::parser does not allow (it takes
// basic_fields only); the chunk-header callback is a plain reference rather than a
// std::function.

#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/message.hpp>
#include <cstdint>
#include <string_view>
#include <tuple>
#include <utility>

#include "body_view.hpp"
#include "flat_fields.hpp"

namespace bg {

template <bool isRequest>
class FlatParser : public boost::beast::http::basic_parser<isRequest> {
  public:
    using value_type = boost::beast::http::message<isRequest, BodyView, FlatFields>;

    // The message's fields live in `arena` (nullptr: in an arena of their own).
    explicit FlatParser(FieldArena* arena = nullptr)
        : message_(std::piecewise_construct, std::make_tuple(), std::make_tuple(arena)),
          reader_(message_.base(), message_.body()) {}
    FlatParser(const FlatParser&) = delete;
    FlatParser& operator=(const FlatParser&) = delete;

    value_type& get() { return message_; }
    const value_type& get() const { return message_; }

    // `guard(size, extensions, ec)` sees every chunk header; it must outlive the parser.
    template <class Callback>
    void on_chunk_header(Callback& guard) {
        chunk_guard_ = &guard;
        call_chunk_guard_ = [](void* g, std::uint64_t size, std::string_view extensions,
                               boost::system::error_code& ec) {
            (*static_cast<Callback*>(g))(size, extensions, ec);
        };
    }

  private:
    using field = boost::beast::http::field;
    using verb = boost::beast::http::verb;
    using error_code = boost::system::error_code;
    using string_view = boost::beast::string_view;

    void on_request_impl(verb method, string_view method_string, string_view target, int version,
                         error_code& ec) override {
        ec = {};
        if constexpr (isRequest) {
            message_.target(target);
            if (method != verb::unknown) {
                message_.method(method);
            } else {
                message_.method_string(method_string);
            }
            message_.version(static_cast<unsigned>(version));
        }
    }

    void on_response_impl(int code, string_view reason, int version, error_code& ec) override {
        ec = {};
        if constexpr (!isRequest) {
            message_.result(static_cast<unsigned>(code));
            message_.version(static_cast<unsigned>(version));
            message_.reason(reason);
        }
    }

    void on_field_impl(field name, string_view name_string, string_view value,
                       error_code& ec) override {
        ec = {};
        message_.insert(name, name_string, value);
    }

    void on_header_impl(error_code& ec) override { ec = {}; }

    void on_body_init_impl(const boost::optional<std::uint64_t>& length, error_code& ec) override {
        reader_.init(length, ec);
    }

    std::size_t on_body_impl(string_view body, error_code& ec) override {
        return reader_.put(boost::asio::const_buffer(body.data(), body.size()), ec);
    }

    void on_chunk_header_impl(std::uint64_t size, string_view extensions, error_code& ec) override {
        ec = {};
        if (chunk_guard_ != nullptr) {
            call_chunk_guard_(chunk_guard_, size, extensions, ec);
        }
    }

    std::size_t on_chunk_body_impl(std::uint64_t, string_view body, error_code& ec) override {
        return reader_.put(boost::asio::const_buffer(body.data(), body.size()), ec);
    }

    void on_finish_impl(error_code& ec) override { reader_.finish(ec); }

    value_type message_;
    BodyView::reader reader_;
    void* chunk_guard_ = nullptr;
    void (*call_chunk_guard_)(void*, std::uint64_t, std::string_view,
                              boost::system::error_code&) = nullptr;
};

}  // namespace bg
