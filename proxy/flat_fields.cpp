#include "flat_fields.hpp"

#include <algorithm>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/rfc7230.hpp>
#include <charconv>
#include <cstring>
#include <string>
#include <utility>

namespace bg {

namespace http = boost::beast::http;

namespace {

constexpr std::uint32_t first_capacity = 16;  // most heads have fewer fields

bool same_name(const FlatFields::value_type& field, http::field code, std::string_view name) {
    return code != http::field::unknown ? field.name() == code
                                        : field.name() == http::field::unknown &&
                                              boost::beast::iequals(field.name_string(), name);
}

// Connection's options but close and keep-alive (case-blind), joined again.
std::string other_connection_options(std::string_view list) {
    std::string kept;
    for (const auto token : http::token_list{list}) {
        if (!boost::beast::iequals(token, "close") && !boost::beast::iequals(token, "keep-alive")) {
            kept.append(kept.empty() ? "" : ", ").append(token.data(), token.size());
        }
    }
    return kept;
}

}  // namespace

FlatFields::FlatFields(const FlatFields& other) : arena_(nullptr) {
    copy_from(other);
}

FlatFields& FlatFields::operator=(const FlatFields& other) {
    if (this != &other) {
        clear();
        copy_from(other);
    }
    return *this;
}

FlatFields::FlatFields(FlatFields&& other) noexcept : arena_(nullptr) {
    take(other);
}

FlatFields& FlatFields::operator=(FlatFields&& other) noexcept {
    if (this != &other) {
        take(other);
    }
    return *this;
}

void FlatFields::take(FlatFields& other) noexcept {
    arena_ = other.arena_;
    own_ = std::move(other.own_);
    if (own_) {
        other.arena_ = nullptr;  // the arena came along: the moved-from object makes a new one
    }
    items_ = std::exchange(other.items_, nullptr);
    size_ = std::exchange(other.size_, 0);
    capacity_ = std::exchange(other.capacity_, 0);
    method_ = std::exchange(other.method_, {});
    target_ = std::exchange(other.target_, {});
    reason_ = std::exchange(other.reason_, {});
}

FlatFields::~FlatFields() = default;

void FlatFields::copy_from(const FlatFields& other) {
    for (const auto& field : other) {
        insert(field.name(), field.name_string(), field.value());
    }
    method_ = copy(other.method_);
    target_ = copy(other.target_);
    reason_ = copy(other.reason_);
}

FieldArena& FlatFields::arena() {
    if (arena_ == nullptr) {
        own_ = std::make_unique<FieldArena>();
        arena_ = own_.get();
    }
    return *arena_;
}

std::string_view FlatFields::copy(std::string_view bytes) {
    if (bytes.empty()) {
        return {};
    }
    auto* at = static_cast<char*>(arena().allocate(bytes.size()));
    std::memcpy(at, bytes.data(), bytes.size());
    return {at, bytes.size()};
}

void FlatFields::grow() {
    const std::uint32_t grown = capacity_ == 0 ? first_capacity : 2 * capacity_;
    auto* items = static_cast<value_type*>(arena().allocate(grown * sizeof(value_type)));
    std::uninitialized_copy_n(items_, size_, items);
    items_ = items;  // the old array stays in the arena until it resets
    capacity_ = grown;
}

FlatFields::const_iterator FlatFields::find(http::field name) const {
    return std::find_if(begin(), end(), [name](const value_type& f) { return f.name() == name; });
}

FlatFields::const_iterator FlatFields::find(std::string_view name) const {
    const http::field code = http::string_to_field(name);
    return std::find_if(begin(), end(),
                        [&](const value_type& f) { return same_name(f, code, name); });
}

std::size_t FlatFields::count(http::field name) const {
    return static_cast<std::size_t>(
        std::count_if(begin(), end(), [name](const value_type& f) { return f.name() == name; }));
}

std::size_t FlatFields::count(std::string_view name) const {
    const http::field code = http::string_to_field(name);
    return static_cast<std::size_t>(std::count_if(
        begin(), end(), [&](const value_type& f) { return same_name(f, code, name); }));
}

std::string_view FlatFields::operator[](http::field name) const {
    const auto it = find(name);
    return it == end() ? std::string_view{} : it->value();
}

std::string_view FlatFields::operator[](std::string_view name) const {
    const auto it = find(name);
    return it == end() ? std::string_view{} : it->value();
}

void FlatFields::insert(http::field name, std::string_view value) {
    insert(name, http::to_string(name), value);
}

void FlatFields::insert(std::string_view name, std::string_view value) {
    insert(http::string_to_field(name), name, value);
}

void FlatFields::insert(http::field code, std::string_view name, std::string_view value) {
    // Name and value in one piece of the arena, copied before the array may grow.
    auto* bytes = static_cast<char*>(arena().allocate(name.size() + value.size()));
    std::memcpy(bytes, name.data(), name.size());
    if (!value.empty()) {
        std::memcpy(bytes + name.size(), value.data(), value.size());
    }
    value_type* field = slot();
    field->code_ = code;
    field->name_ = bytes;
    field->name_size_ = static_cast<std::uint32_t>(name.size());
    field->value_ = bytes + name.size();
    field->value_size_ = static_cast<std::uint32_t>(value.size());
}

void FlatFields::set(http::field name, std::string_view value) {
    erase(name);
    insert(name, value);
}

void FlatFields::set(std::string_view name, std::string_view value) {
    // The value may lie in a field about to go: the arena keeps its bytes until it resets.
    erase(name);
    insert(name, value);
}

std::size_t FlatFields::erase(http::field name) {
    return erase_if([name](const value_type& f) { return f.name() == name; });
}

std::size_t FlatFields::erase(std::string_view name) {
    const http::field code = http::string_to_field(name);
    return erase_if([&](const value_type& f) { return same_name(f, code, name); });
}

FlatFields::const_iterator FlatFields::erase(const_iterator field) {
    auto* at = items_ + (field - items_);
    std::copy(at + 1, items_ + size_, at);
    --size_;
    return at;
}

void FlatFields::clear() {
    size_ = 0;
}

bool FlatFields::get_chunked_impl() const {
    // As basic_fields: chunked is the last coding of the first Transfer-Encoding field.
    const http::token_list codings{(*this)[http::field::transfer_encoding]};
    bool last_chunked = false;
    for (const auto coding : codings) {
        last_chunked = boost::beast::iequals(coding, "chunked");
    }
    return last_chunked;
}

bool FlatFields::get_keep_alive_impl(unsigned version) const {
    const auto it = find(http::field::connection);
    if (version < 11) {
        return it != end() && http::token_list{it->value()}.exists("keep-alive");
    }
    return it == end() || !http::token_list{it->value()}.exists("close");
}

bool FlatFields::has_content_length_impl() const {
    return find(http::field::content_length) != end();
}

void FlatFields::set_chunked_impl(bool chunked) {
    const std::string_view codings = (*this)[http::field::transfer_encoding];
    if (chunked) {
        if (codings.empty()) {
            set(http::field::transfer_encoding, "chunked");
        } else if (!get_chunked_impl()) {
            set(http::field::transfer_encoding, std::string(codings) + ", chunked");
        }
        return;
    }
    if (get_chunked_impl()) {
        // The last coding out (basic_fields likewise drops only the last): each coding is kept
        // once the next one shows it was not the last.
        std::string kept;
        std::string_view previous;
        for (const auto coding : http::token_list{codings}) {
            if (!previous.empty()) {
                kept.append(kept.empty() ? "" : ", ").append(previous);
            }
            previous = {coding.data(), coding.size()};
        }
        if (kept.empty()) {
            erase(http::field::transfer_encoding);
        } else {
            set(http::field::transfer_encoding, kept);
        }
    }
}

void FlatFields::set_content_length_impl(const boost::optional<std::uint64_t>& length) {
    if (!length) {
        erase(http::field::content_length);
        return;
    }
    char digits[24];
    const auto written = std::to_chars(digits, digits + sizeof digits, *length);
    set(http::field::content_length, std::string_view(digits, written.ptr - digits));
}

void FlatFields::set_keep_alive_impl(unsigned version, bool keep_alive) {
    std::string tokens = other_connection_options((*this)[http::field::connection]);
    const std::string_view wanted =
        version < 11 ? (keep_alive ? "keep-alive" : "") : (keep_alive ? "" : "close");
    if (!wanted.empty()) {
        tokens.append(tokens.empty() ? "" : ", ").append(wanted);
    }
    if (tokens.empty()) {
        erase(http::field::connection);
    } else {
        set(http::field::connection, tokens);
    }
}

}  // namespace bg
