#include "worker_stats.hpp"

namespace bg {

const char* to_string(LimitBreach breach) {
    switch (breach) {
        case LimitBreach::request_line:
            return "request_line";
        case LimitBreach::request_header:
            return "request_header";
        case LimitBreach::header_fields:
            return "header_fields";
        case LimitBreach::field_size:
            return "field_size";
        case LimitBreach::chunk_line:
            return "chunk_line";
        case LimitBreach::trailer:
            return "trailer";
        case LimitBreach::request_body:
            return "request_body";
        case LimitBreach::body_rate:
            return "body_rate";
        case LimitBreach::response_header:
            return "response_header";
        case LimitBreach::response_fields:
            return "response_fields";
        case LimitBreach::response_chunk_line:
            return "response_chunk_line";
        case LimitBreach::response_trailer:
            return "response_trailer";
    }
    return "unknown";
}

}  // namespace bg
