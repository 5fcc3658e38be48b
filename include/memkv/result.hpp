// SPDX-License-Identifier: Apache-2.0
// memkv::result<T>: a value or a std::error_code, with std::expected's member API.
#pragma once

#include <memkv/error.hpp>

#include <cstdlib>
#include <type_traits>
#include <utility>
#include <variant>

namespace memkv {

/// Wraps an error for construction of a failed `result` (the `std::unexpected` of memkv).
struct failure {
    std::error_code code; ///< never a success code
    failure(std::error_code c) noexcept : code(c) {}
    failure(errc e) noexcept : code(make_error_code(e)) {}
};

namespace detail {
[[noreturn]] inline void bad_result_access() noexcept {
    std::abort();
}
} // namespace detail

template <class T>
class result;

/// `result<void>`: success or a `std::error_code`.
template <>
class [[nodiscard]] result<void> {
public:
    using value_type = void;
    using error_type = std::error_code;

    result() noexcept = default;
    result(failure f) noexcept : ec_(f.code) {}
    result(errc e) noexcept : ec_(make_error_code(e)) {}
    result(std::error_code ec) noexcept : ec_(ec) {}

    bool has_value() const noexcept { return !ec_; }
    explicit operator bool() const noexcept { return has_value(); }
    void value() const noexcept {
        if (ec_) detail::bad_result_access();
    }
    void operator*() const noexcept { value(); }
    std::error_code error() const noexcept { return ec_; }

    template <class F>
    auto and_then(F&& f) const {
        using R = std::invoke_result_t<F>;
        return has_value() ? std::forward<F>(f)() : R(ec_);
    }
    template <class F>
    auto transform(F&& f) const {
        using U = std::invoke_result_t<F>;
        if constexpr (std::is_void_v<U>) {
            if (!has_value()) return result<void>(ec_);
            std::forward<F>(f)();
            return result<void>();
        } else {
            return has_value() ? result<U>(std::forward<F>(f)()) : result<U>(ec_);
        }
    }
    template <class F>
    result or_else(F&& f) const {
        return has_value() ? *this : std::forward<F>(f)(ec_);
    }

private:
    std::error_code ec_;
};

/// A value of type `T` or a `std::error_code`, with the member API of C++23 `std::expected<T,
/// std::error_code>` so that a later migration is a search and replace. Accessing the value of a
/// failed result aborts (the library never throws).
template <class T>
class [[nodiscard]] result {
public:
    using value_type = T;
    using error_type = std::error_code;

    result() requires std::is_default_constructible_v<T> : v_(std::in_place_index<0>) {}
    result(const T& v) : v_(std::in_place_index<0>, v) {}
    result(T&& v) : v_(std::in_place_index<0>, std::move(v)) {}
    template <class U>
    requires(std::is_constructible_v<T, U&&> && !std::is_same_v<std::remove_cvref_t<U>, T> &&
             !std::is_same_v<std::remove_cvref_t<U>, result> &&
             !std::is_same_v<std::remove_cvref_t<U>, failure> &&
             !std::is_same_v<std::remove_cvref_t<U>, errc> &&
             !std::is_same_v<std::remove_cvref_t<U>, std::error_code>) result(U&& v)
        : v_(std::in_place_index<0>, std::forward<U>(v)) {}
    result(failure f) noexcept : v_(std::in_place_index<1>, f.code) {}
    result(errc e) noexcept : v_(std::in_place_index<1>, make_error_code(e)) {}
    result(std::error_code ec) noexcept : v_(std::in_place_index<1>, ec) {}

    bool has_value() const noexcept { return v_.index() == 0; }
    explicit operator bool() const noexcept { return has_value(); }

    T& value() & {
        check();
        return *std::get_if<0>(&v_);
    }
    const T& value() const& {
        check();
        return *std::get_if<0>(&v_);
    }
    T&& value() && {
        check();
        return std::move(*std::get_if<0>(&v_));
    }
    T& operator*() & noexcept { return value(); }
    const T& operator*() const& noexcept { return value(); }
    T&& operator*() && noexcept { return std::move(*this).value(); }
    T* operator->() noexcept { return &value(); }
    const T* operator->() const noexcept { return &value(); }

    /// The error; a default (success) code when the result holds a value.
    std::error_code error() const noexcept {
        const auto* e = std::get_if<1>(&v_);
        return e ? *e : std::error_code{};
    }

    template <class U>
    T value_or(U&& other) const& {
        return has_value() ? **this : static_cast<T>(std::forward<U>(other));
    }

    /// Calls `f(value)` (which returns a result) or propagates the error.
    template <class F>
    auto and_then(F&& f) & {
        using R = std::invoke_result_t<F, T&>;
        return has_value() ? std::forward<F>(f)(**this) : R(error());
    }
    template <class F>
    auto and_then(F&& f) && {
        using R = std::invoke_result_t<F, T&&>;
        return has_value() ? std::forward<F>(f)(std::move(**this)) : R(error());
    }
    /// Maps the value with `f`, or propagates the error.
    template <class F>
    auto transform(F&& f) & {
        using U = std::invoke_result_t<F, T&>;
        if constexpr (std::is_void_v<U>) {
            if (!has_value()) return result<void>(error());
            std::forward<F>(f)(**this);
            return result<void>();
        } else {
            return has_value() ? result<U>(std::forward<F>(f)(**this)) : result<U>(error());
        }
    }
    /// Calls `f(error)` (which returns a result<T>) on failure, or keeps the value.
    template <class F>
    result or_else(F&& f) const& {
        return has_value() ? *this : std::forward<F>(f)(error());
    }

private:
    void check() const noexcept {
        if (!has_value()) detail::bad_result_access();
    }
    std::variant<T, std::error_code> v_;
};

/// Returns early from the enclosing function with the error of `expr` if it failed.
#define MEMKV_TRY(expr)                                                                            \
    do {                                                                                           \
        if (auto memkv_try_r_ = (expr); !memkv_try_r_)                                             \
            return ::memkv::failure(memkv_try_r_.error());                                         \
    } while (0)

} // namespace memkv
