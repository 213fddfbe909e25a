#include <doctest/doctest.h>

#include <string_view>

#include "upload_answer_watch.hpp"

using bg::begins_final_response;

TEST_CASE("a backend's bytes that begin a final response are an answer") {
    CHECK(begins_final_response("HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n"));
    CHECK(begins_final_response("HTTP/1.1 200 OK\r\n"));  // the rest of the head may follow
    CHECK(begins_final_response("HTTP/1.0 401 "));
    CHECK(begins_final_response("HTTP/1.1 500"));
}

TEST_CASE("interim responses are skipped, and only a final one after them counts") {
    CHECK(begins_final_response("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Too Large\r\n\r\n"));
    CHECK(begins_final_response(
        "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"
        "HTTP/1.1 200 OK\r\n\r\n"));
    CHECK_FALSE(begins_final_response("HTTP/1.1 100 Continue\r\n\r\n"));
    CHECK_FALSE(begins_final_response("HTTP/1.1 100 Continue\r\n"));  // its end not yet here
    CHECK_FALSE(begins_final_response("HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 2"));
}

TEST_CASE("bytes that are not yet, or not at all, a status line are no answer") {
    CHECK_FALSE(begins_final_response(""));
    CHECK_FALSE(begins_final_response("HTTP/1.1 4"));
    CHECK_FALSE(begins_final_response("HTTP/2 200 OK\r\n"));
    CHECK_FALSE(begins_final_response("HTTP/1.1 abc\r\n"));
    CHECK_FALSE(begins_final_response("HTTP/1.1 099 Odd\r\n"));
    CHECK_FALSE(begins_final_response("garbage that is not HTTP\r\n"));
}
