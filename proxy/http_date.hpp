#pragma once
// The Date field's value now (RFC 9110 6.6.1, IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"),
// formatted once a second per thread: what the proxy puts on its own responses and adds to a
// backend's response that came without one (RFC 9110 6.6.1: a recipient with a clock adds it).

#include <string_view>

namespace bg {

std::string_view http_date_now();

}  // namespace bg
