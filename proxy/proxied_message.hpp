#pragma once
// The types of the messages the proxy parses and rewrites: Beast's, with fields from the
// exchange's FieldArena (field_arena.hpp) and bodies seen in place (body_view.hpp).

#include <boost/beast/http/fields.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>

#include "body_view.hpp"
#include "field_arena.hpp"

namespace bg {

using Fields = boost::beast::http::basic_fields<FieldAllocator<char>>;
using RequestHeader = boost::beast::http::request_header<Fields>;
using ResponseHeader = boost::beast::http::response_header<Fields>;
using Request = boost::beast::http::request<BodyView, Fields>;
using RequestParser = boost::beast::http::request_parser<BodyView, FieldAllocator<char>>;
using ResponseParser = boost::beast::http::response_parser<BodyView, FieldAllocator<char>>;

}  // namespace bg
