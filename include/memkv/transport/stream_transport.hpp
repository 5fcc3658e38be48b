// SPDX-License-Identifier: Apache-2.0
// The code tcp_transport and unix_transport share: both carry payloads inline on a socket.
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/socket.hpp>

#include <chrono>
#include <string>
#include <string_view>

namespace memkv::detail {

/// A stream transport over sockets of one kind, `Derived` being the transport itself (CRTP:
/// create() makes one). `Parse` turns endpoint text into an address. Its instance holds nothing:
/// sockets need no context beyond the kernel's.
template <class Derived, transport_kind Kind, auto Parse>
struct socket_transport {
    static constexpr transport_kind kind = Kind;
    using endpoint = socket_address;
    /// Nothing to configure: memkv sets what its sockets need (TCP_NODELAY, non-blocking).
    struct config {};

    /// A connected stream; payload bytes travel on it after their frames.
    class stream : public socket_stream {
    public:
        stream() = default;
        stream(socket_stream s, std::string peer) noexcept
            : socket_stream(std::move(s)), peer_(std::move(peer)) {}
        transport_kind kind() const noexcept { return Kind; }
        /// A hello on a stream of this kind may ask only for this kind's inline data path.
        bool carries(transport_kind requested) const noexcept { return requested == Kind; }
        const std::string& peer_ref() const noexcept { return peer_; }
        std::string peer() const { return peer_; }

    private:
        std::string peer_;
    };

    /// A listening endpoint.
    class listener {
    public:
        listener() = default;
        explicit listener(socket_listener l) noexcept : l_(std::move(l)) {}
        int fd() const noexcept { return l_.fd(); }
        std::string local_endpoint() const { return l_.address().text; }
        result<stream> accept() noexcept {
            std::string peer;
            auto s = l_.accept(&peer);
            if (!s) return s.error();
            return stream(std::move(*s), std::move(peer));
        }

    private:
        socket_listener l_;
    };

    static result<Derived> create(const config& = {}) noexcept { return Derived{}; }

    result<endpoint> parse(std::string_view text) const noexcept { return Parse(text); }
    bool is_loopback(const endpoint& ep) const noexcept { return detail::is_loopback(ep); }
    std::string to_string(const endpoint& ep) const { return ep.text; }
    result<listener> listen(const endpoint& ep) noexcept {
        auto l = socket_listener::listen(ep);
        if (!l) return l.error();
        return listener(std::move(*l));
    }
    result<stream> connect(const endpoint& ep, std::chrono::milliseconds timeout) noexcept {
        auto s = connect_stream(ep, timeout);
        if (!s) return s.error();
        return stream(std::move(*s), ep.text);
    }
};

} // namespace memkv::detail
