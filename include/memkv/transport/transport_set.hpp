// SPDX-License-Identifier: Apache-2.0
// transport_set<T...>: several transports composed into one.
#pragma once

#include <memkv/concepts.hpp>

#include <optional>
#include <string_view>
#include <tuple>
#include <utility>
#include <variant>

namespace memkv {

/// A transport made of several. A server built with it listens on endpoints of every member and
/// serves all their clients at once; a client built with it picks a member per server at run
/// time: the first member (in template order) whose `parse` accepts the endpoint text,
/// restricted to one member when config::only names it (client_config::transport, or
/// MEMKV_TRANSPORT read by client::create()).
///
/// The endpoint, listener and stream are variants over the members'; each stream reports its
/// own member's kind() and carries(), so a server's acceptor checks every hello against the
/// listener it arrived on, and its shard picks the data path from the hello's transport byte.
/// `kind` is the first member's.
template <transport... T>
requires(sizeof...(T) >= 1) class transport_set {
public:
    static constexpr transport_kind kind = std::get<0>(std::tuple{T::kind...});

    using endpoint = std::variant<typename T::endpoint...>;

    /// The members' configurations, and the member a client is restricted to.
    struct config {
        std::tuple<typename T::config...> members{};
        std::optional<transport_kind> only; ///< a member's kind; none: any member
    };

    /// Whether `k` is the kind of one of the members.
    static constexpr bool has_member(transport_kind k) noexcept { return ((T::kind == k) || ...); }

    /// A stream of whichever member connected or accepted it.
    class stream {
    public:
        stream() = default;
        template <std::size_t I, class S>
        stream(std::in_place_index_t<I> i, S&& s) : v_(i, std::move(s)) {}

        int fd() const noexcept {
            return std::visit([](const auto& s) { return s.fd(); }, v_);
        }
        transport_kind kind() const noexcept {
            return std::visit([](const auto& s) { return s.kind(); }, v_);
        }
        bool carries(transport_kind requested) const noexcept {
            return std::visit([&](const auto& s) { return s.carries(requested); }, v_);
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
        result<stream> accept() noexcept {
            return [&]<std::size_t... I>(std::index_sequence<I...>) {
                result<stream> out = errc::internal;
                ((v_.index() == I ? (void)(out = accept_member<I>()) : void()), ...);
                return out;
            }
            (std::index_sequence_for<T...>{});
        }

    private:
        template <std::size_t I>
        result<stream> accept_member() noexcept {
            auto s = std::get<I>(v_).accept();
            if (!s) return s.error();
            return stream(std::in_place_index<I>, std::move(*s));
        }

        std::variant<typename T::listener...> v_;
    };

    /// Makes every member from its configuration; errc::invalid_argument when `only` names no
    /// member.
    static result<transport_set> create(const config& c = {}) {
        if (c.only && !has_member(*c.only)) return errc::invalid_argument;
        return create_members(c, std::index_sequence_for<T...>{});
    }

    /// Parses with the first member that accepts the text (only `only`, if set).
    result<endpoint> parse(std::string_view text) const noexcept {
        result<endpoint> out = errc::invalid_argument;
        bool done = false;
        for_each_member([&]<std::size_t I>(std::integral_constant<std::size_t, I>) {
            using M = std::tuple_element_t<I, std::tuple<T...>>;
            if (done || (only_ && *only_ != M::kind)) return;
            if (auto e = std::get<I>(members_).parse(text)) {
                out = endpoint(std::in_place_index<I>, std::move(*e));
                done = true;
            }
        });
        return out;
    }
    bool is_loopback(const endpoint& ep) const noexcept {
        return visit_member(ep,
                            [](const auto& m, const auto& e, auto) { return m.is_loopback(e); });
    }
    std::string to_string(const endpoint& ep) const {
        return visit_member(ep, [](const auto& m, const auto& e, auto) { return m.to_string(e); });
    }
    result<listener> listen(const endpoint& ep) noexcept {
        return visit_member(
            ep,
            [&]<std::size_t I>(auto& m, const auto& e,
                               std::integral_constant<std::size_t, I>) -> result<listener> {
                auto l = m.listen(e);
                if (!l) return l.error();
                return listener(std::in_place_index<I>, std::move(*l));
            });
    }
    result<stream> connect(const endpoint& ep, std::chrono::milliseconds timeout) noexcept {
        return visit_member(
            ep,
            [&]<std::size_t I>(auto& m, const auto& e,
                               std::integral_constant<std::size_t, I>) -> result<stream> {
                auto s = m.connect(e, timeout);
                if (!s) return s.error();
                return stream(std::in_place_index<I>, std::move(*s));
            });
    }

private:
    transport_set(std::tuple<T...> members, std::optional<transport_kind> only)
        : members_(std::move(members)), only_(only) {}

    template <std::size_t... I>
    static result<transport_set> create_members(const config& c, std::index_sequence<I...>) {
        std::tuple<result<T>...> made{T::create(std::get<I>(c.members))...};
        std::error_code ec;
        ((ec = ec || std::get<I>(made) ? ec : std::get<I>(made).error()), ...);
        if (ec) return ec;
        return transport_set(std::tuple<T...>(std::move(*std::get<I>(made))...), c.only);
    }

    template <class F>
    void for_each_member(F&& f) const {
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            (f(std::integral_constant<std::size_t, I>{}), ...);
        }
        (std::index_sequence_for<T...>{});
    }

    /// `f(member, member's endpoint, its index as an integral_constant)` for the member `ep`
    /// belongs to.
    template <class F>
    decltype(auto) visit_member(const endpoint& ep, F&& f) const {
        return visit_impl(*this, ep, f);
    }
    template <class F>
    decltype(auto) visit_member(const endpoint& ep, F&& f) {
        return visit_impl(*this, ep, f);
    }
    template <class Self, class F>
    static decltype(auto) visit_impl(Self& self, const endpoint& ep, F& f) {
        return [&]<std::size_t... I>(std::index_sequence<I...>) {
            using R = decltype(f(std::get<0>(self.members_), std::get<0>(ep),
                                 std::integral_constant<std::size_t, 0>{}));
            std::optional<R> out;
            ((ep.index() == I ? (void)out.emplace(f(std::get<I>(self.members_), std::get<I>(ep),
                                                    std::integral_constant<std::size_t, I>{}))
                              : void()),
             ...);
            return std::move(*out);
        }
        (std::index_sequence_for<T...>{});
    }

    std::tuple<T...> members_;
    std::optional<transport_kind> only_;
};

} // namespace memkv
