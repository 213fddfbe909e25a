#pragma once
// FlatFields: the header fields of a message the proxy parses, rewrites and writes out, as one
// array in arrival order, their bytes in the exchange's FieldArena. Beast's basic_fields keeps
// each field in a node of an ordered tree and a list: its inserts, case-blind name comparisons
// and lookups were 11% of a proxied request's user-space instructions (callgrind), and went
// with it. A head has a dozen fields, so a scan comparing field codes finds one faster than a
// tree, and the proxy never needs them sorted. FlatFields meets Beast's Fields requirements, so
// http::message and the parsers (flat_parser.hpp) use it as they use basic_fields; its member
// functions are the subset of basic_fields' the proxy uses, with the same meaning, except that
// a field keeps its place in arrival order (basic_fields moves a repeated name beside the
// first).

#include <algorithm>
#include <boost/beast/http/field.hpp>
#include <boost/optional/optional.hpp>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <string_view>

#include "field_arena.hpp"

namespace bg {

class FlatFields {
  public:
    // One field. Its name and value stay valid until the field is erased or replaced.
    class value_type {
      public:
        boost::beast::http::field name() const { return code_; }
        std::string_view name_string() const { return {name_, name_size_}; }
        std::string_view value() const { return {value_, value_size_}; }

      private:
        friend class FlatFields;
        const char* name_ = nullptr;
        const char* value_ = nullptr;
        std::uint32_t name_size_ = 0;
        std::uint32_t value_size_ = 0;
        boost::beast::http::field code_ = boost::beast::http::field::unknown;
    };
    using const_iterator = const value_type*;
    using iterator = const_iterator;

    // Fields in `arena` (an exchange's: freed when it resets), or with none, in an arena of
    // their own (a reply the proxy makes, a test).
    explicit FlatFields(FieldArena* arena = nullptr) : arena_(arena) {}
    FlatFields(const FlatFields& other);
    FlatFields& operator=(const FlatFields& other);
    FlatFields(FlatFields&& other) noexcept;
    FlatFields& operator=(FlatFields&& other) noexcept;
    ~FlatFields();

    const_iterator begin() const { return items_; }
    const_iterator end() const { return items_ + size_; }
    std::size_t size() const { return size_; }

    // The first field of that name, or end().
    const_iterator find(boost::beast::http::field name) const;
    const_iterator find(std::string_view name) const;
    std::size_t count(boost::beast::http::field name) const;
    std::size_t count(std::string_view name) const;
    // The value of the first field of that name; empty when there is none.
    std::string_view operator[](boost::beast::http::field name) const;
    std::string_view operator[](std::string_view name) const;

    // Appends a field (after any of the same name).
    void insert(boost::beast::http::field name, std::string_view value);
    void insert(std::string_view name, std::string_view value);
    void insert(boost::beast::http::field code, std::string_view name, std::string_view value);
    // Every field of that name out, then one with this value appended.
    void set(boost::beast::http::field name, std::string_view value);
    void set(std::string_view name, std::string_view value);
    // Every field of that name out; how many there were.
    std::size_t erase(boost::beast::http::field name);
    std::size_t erase(std::string_view name);
    // That field out; the one after it.
    const_iterator erase(const_iterator field);
    // Every field `doomed(field)` holds for out, in one pass, the others kept in order; how many
    // there were. `doomed` sees each field once, and may keep the names it saw: fields move, the
    // bytes of their names and values do not.
    template <class Predicate>
    std::size_t erase_if(Predicate doomed) {
        value_type* kept_end = std::remove_if(items_, items_ + size_, doomed);
        const auto erased = static_cast<std::size_t>(items_ + size_ - kept_end);
        size_ -= static_cast<std::uint32_t>(erased);
        return erased;
    }
    void clear();
    // A response's reason phrase as received or set, maybe empty (Beast's reason() gives the
    // status's standard name then, or "<unknown-status>").
    std::string_view stored_reason() const { return reason_; }

  protected:
    // Beast's Fields requirements (http/type_traits.hpp is_fields), used by http::message.
    std::string_view get_method_impl() const { return method_; }
    std::string_view get_target_impl() const { return target_; }
    std::string_view get_reason_impl() const { return reason_; }
    bool get_chunked_impl() const;
    bool get_keep_alive_impl(unsigned version) const;
    bool has_content_length_impl() const;
    void set_method_impl(std::string_view method) { method_ = copy(method); }
    void set_target_impl(std::string_view target) { target_ = copy(target); }
    void set_reason_impl(std::string_view reason) { reason_ = copy(reason); }
    void set_chunked_impl(bool chunked);
    void set_content_length_impl(const boost::optional<std::uint64_t>& length);
    void set_keep_alive_impl(unsigned version, bool keep_alive);

  private:
    FieldArena& arena();
    std::string_view copy(std::string_view bytes);
    value_type* slot() {  // a new last field, its bytes unset
        if (size_ == capacity_) {
            grow();
        }
        return new (items_ + size_++) value_type;
    }
    void grow();  // a larger array in the arena, the fields copied over
    void copy_from(const FlatFields& other);
    void take(FlatFields& other) noexcept;  // its fields and arena; it is left empty

    FieldArena* arena_;
    std::unique_ptr<FieldArena> own_;  // when no exchange's arena was given
    value_type* items_ = nullptr;      // in the arena; a larger array when it fills
    std::uint32_t size_ = 0;
    std::uint32_t capacity_ = 0;
    std::string_view method_;  // a request's method when Beast has no verb for it
    std::string_view target_;
    std::string_view reason_;
};

}  // namespace bg
