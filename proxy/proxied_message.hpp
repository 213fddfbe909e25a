#pragma once
// The types of the messages the proxy parses and rewrites: Beast's, with fields kept flat in
// the exchange's FieldArena (flat_fields.hpp) and bodies seen in place (body_view.hpp).

#include <boost/beast/http/message.hpp>

#include "body_view.hpp"
#include "flat_fields.hpp"
#include "flat_parser.hpp"

namespace bg {

using Fields = FlatFields;
using RequestHeader = boost::beast::http::request_header<Fields>;
using ResponseHeader = boost::beast::http::response_header<Fields>;
using Request = boost::beast::http::request<BodyView, Fields>;
using RequestParser = FlatParser<true>;
using ResponseParser = FlatParser<false>;

}  // namespace bg
