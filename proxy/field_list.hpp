#pragma once
// A field value that is a list (RFC 9110 5.6.1, "#element"): its members, comma-separated,
// each without the optional whitespace around it; empty members are allowed and skipped.

#include <string_view>

namespace bg {

// Calls `visit` with each non-empty member, in order, until it returns false.
template <class Visit>
void for_each_list_member(std::string_view list, Visit&& visit) {
    while (!list.empty()) {
        const auto comma = list.find(',');
        std::string_view member = list.substr(0, comma);
        list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
        while (!member.empty() && (member.front() == ' ' || member.front() == '\t')) {
            member.remove_prefix(1);
        }
        while (!member.empty() && (member.back() == ' ' || member.back() == '\t')) {
            member.remove_suffix(1);
        }
        if (!member.empty() && !visit(member)) {
            return;
        }
    }
}

}  // namespace bg
