// SPDX-License-Identifier: Apache-2.0
// transport_set<T...>: several transports composed into one.
#pragma once

#include <memkv/concepts.hpp>

#include <cstdlib>
#include <string_view>
#include <variant>

namespace memkv {

/// A transport made of several. A server built with it listens on endpoints of every member and
/// serves all their clients at once; a client built with it picks a member per server at run
/// time: the first member (in template order) whose `parse` accepts the endpoint text, restricted
/// to one member when MEMKV_TRANSPORT names it (`auto` or unset: any).
///
/// The endpoint, listener and stream are variants over the members'. `kind` is the first
/// member's (the set's streams report their own kind()).
template <transport... T>
requires(sizeof...(T) >= 1) struct transport_set {
    static constexpr bool payload_inline = (T::payload_inline && ...);
    static_assert(payload_inline, "transports with out-of-band payloads need per-stream dispatch");
    static constexpr transport_kind kind = std::get<0>(std::tuple{T::kind...});

    using endpoint = std::variant<typename T::endpoint...>;

    /// A stream of whichever member connected or accepted it.
    class stream {
    public:
        stream() = default;
        template <class S>
        explicit stream(std::in_place_type_t<S>, S&& s) : v_(std::in_place_type<S>, std::move(s)) {}
        template <std::size_t I, class S>
        stream(std::in_place_index_t<I> i, S&& s) : v_(i, std::move(s)) {}

        int fd() const noexcept {
            return std::visit([](const auto& s) { return s.fd(); }, v_);
        }
        transport_kind kind() const noexcept {
            return std::visit([](const auto& s) { return s.kind(); }, v_);
        }
        std::string peer() const {
            return std::visit([](const auto& s) { return s.peer(); }, v_);
        }
        result<std::size_t> read_some(std::span<std::byte> b) noexcept {
            return std::visit([&](auto& s) { return s.read_some(b); }, v_);
        }
        result<std::size_t> readv_some(std::span<const iovec> iov) noexcept {
            return std::visit([&](auto& s) { return s.readv_some(iov); }, v_);
        }
        result<std::size_t> writev_some(std::span<const iovec> iov) noexcept {
            return std::visit([&](auto& s) { return s.writev_some(iov); }, v_);
        }
        void close() noexcept {
            std::visit([](auto& s) { s.close(); }, v_);
        }

    private:
        std::variant<typename T::stream...> v_;
    };

    /// A listener of whichever member the endpoint belongs to.
    class listener {
    public:
        listener() = default;
        template <std::size_t I, class L>
        listener(std::in_place_index_t<I> i, L&& l) : v_(i, std::move(l)) {}

        int fd() const noexcept {
            return std::visit([](const auto& l) { return l.fd(); }, v_);
        }
        std::string local_endpoint() const {
            return std::visit([](const auto& l) { return l.local_endpoint(); }, v_);
        }
        result<stream> accept() noexcept { return accept_impl(std::index_sequence_for<T...>{}); }

    private:
        template <std::size_t... I>
        result<stream> accept_impl(std::index_sequence<I...>) noexcept {
            result<stream> out = errc::internal;
            ((v_.index() == I ? (void)(out = wrap<I>(std::get<I>(v_).accept())) : void()), ...);
            return out;
        }
        template <std::size_t I, class R>
        static result<stream> wrap(R&& r) {
            if (!r) return r.error();
            return stream(std::in_place_index<I>, std::move(*r));
        }
        std::variant<typename T::listener...> v_;
    };

    /// Parses with the first member that accepts the text (see MEMKV_TRANSPORT above).
    static result<endpoint> parse(std::string_view text) noexcept {
        std::string_view only;
        if (const char* env = std::getenv("MEMKV_TRANSPORT");
            env && std::string_view(env) != "auto")
            only = env;
        return parse_impl(text, only, std::index_sequence_for<T...>{});
    }
    static bool is_loopback(const endpoint& ep) noexcept {
        return visit_member(
            ep, [](auto tag, const auto& e) { return decltype(tag)::type::is_loopback(e); });
    }
    static std::string to_string(const endpoint& ep) {
        return visit_member(
            ep, [](auto tag, const auto& e) { return decltype(tag)::type::to_string(e); });
    }
    static result<listener> listen(const endpoint& ep) noexcept {
        return listen_impl(ep, std::index_sequence_for<T...>{});
    }
    static result<stream> connect(const endpoint& ep, std::chrono::milliseconds timeout) noexcept {
        return connect_impl(ep, timeout, std::index_sequence_for<T...>{});
    }

private:
    template <class M>
    struct tag {
        using type = M;
    };
    template <class F>
    static auto visit_member(const endpoint& ep, F&& f) {
        return visit_impl(ep, f, std::index_sequence_for<T...>{});
    }
    template <class F, std::size_t... I>
    static auto visit_impl(const endpoint& ep, F& f, std::index_sequence<I...>) {
        using members = std::tuple<T...>;
        using R = decltype(f(tag<std::tuple_element_t<0, members>>{}, std::get<0>(ep)));
        R out{};
        ((ep.index() == I
              ? (void)(out = f(tag<std::tuple_element_t<I, members>>{}, std::get<I>(ep)))
              : void()),
         ...);
        return out;
    }
    template <std::size_t... I>
    static result<endpoint> parse_impl(std::string_view text, std::string_view only,
                                       std::index_sequence<I...>) noexcept {
        result<endpoint> out = errc::invalid_argument;
        bool done = false;
        auto try_one = [&]<std::size_t J, class M>(std::integral_constant<std::size_t, J>, tag<M>) {
            if (done || (!only.empty() && only != transport_name(M::kind))) return;
            if (auto e = M::parse(text)) {
                out = endpoint(std::in_place_index<J>, std::move(*e));
                done = true;
            }
        };
        (try_one(std::integral_constant<std::size_t, I>{}, tag<T>{}), ...);
        return out;
    }
    template <std::size_t... I>
    static result<listener> listen_impl(const endpoint& ep, std::index_sequence<I...>) noexcept {
        result<listener> out = errc::internal;
        auto one = [&]<std::size_t J, class M>(std::integral_constant<std::size_t, J>, tag<M>) {
            if (ep.index() != J) return;
            auto l = M::listen(std::get<J>(ep));
            out = l ? result<listener>(listener(std::in_place_index<J>, std::move(*l)))
                    : result<listener>(l.error());
        };
        (one(std::integral_constant<std::size_t, I>{}, tag<T>{}), ...);
        return out;
    }
    template <std::size_t... I>
    static result<stream> connect_impl(const endpoint& ep, std::chrono::milliseconds timeout,
                                       std::index_sequence<I...>) noexcept {
        result<stream> out = errc::internal;
        auto one = [&]<std::size_t J, class M>(std::integral_constant<std::size_t, J>, tag<M>) {
            if (ep.index() != J) return;
            auto s = M::connect(std::get<J>(ep), timeout);
            out = s ? result<stream>(stream(std::in_place_index<J>, std::move(*s)))
                    : result<stream>(s.error());
        };
        (one(std::integral_constant<std::size_t, I>{}, tag<T>{}), ...);
        return out;
    }
};

} // namespace memkv
