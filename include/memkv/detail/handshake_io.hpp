// SPDX-License-Identifier: Apache-2.0
// Driving the pre-auth handshake over a stream: the client side (blocking, with a deadline) and
// the server side (incremental, non-blocking). The messages themselves are in auth/handshake.hpp.
#pragma once

#include <memkv/auth/frame_mac.hpp>
#include <memkv/auth/handshake.hpp>
#include <memkv/auth/key_ring.hpp>
#include <memkv/concepts.hpp>
#include <memkv/protocol/frame.hpp>

#include <poll.h>

#include <array>
#include <chrono>
#include <memory>
#include <optional>

namespace memkv::detail {

using clock = std::chrono::steady_clock;

/// Waits until `fd` is ready for `events` or the deadline passes (errc::timed_out).
inline result<void> wait_fd(int fd, short events, clock::time_point deadline) noexcept {
    for (;;) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
        if (left.count() <= 0) return errc::timed_out;
        pollfd p{fd, events, 0};
        int r = ::poll(&p, 1, static_cast<int>(left.count()));
        if (r > 0) return {};
        if (r < 0 && errno != EINTR) return errno_code(errno);
    }
}

/// Writes all of `b` to a non-blocking stream before the deadline.
template <class Stream>
result<void> write_all(Stream& s, std::span<const std::byte> b,
                       clock::time_point deadline) noexcept {
    while (!b.empty()) {
        iovec v{const_cast<std::byte*>(b.data()), b.size()};
        auto n = s.writev_some({&v, 1});
        if (n) {
            b = b.subspan(*n);
            continue;
        }
        if (n.error() != make_error_code(errc::retry)) return n.error();
        MEMKV_TRY(wait_fd(s.fd(), POLLOUT, deadline));
    }
    return {};
}

/// Reads exactly `b.size()` bytes from a non-blocking stream before the deadline.
template <class Stream>
result<void> read_exact(Stream& s, std::span<std::byte> b, clock::time_point deadline) noexcept {
    while (!b.empty()) {
        auto n = s.read_some(b);
        if (n) {
            b = b.subspan(*n);
            continue;
        }
        if (n.error() != make_error_code(errc::retry)) return n.error();
        MEMKV_TRY(wait_fd(s.fd(), POLLIN, deadline));
    }
    return {};
}

/// The result of a handshake: the two frame MACs and what the server told about itself.
struct session {
    auth::frame_mac send_mac; ///< MACs the frames this end sends
    auth::frame_mac recv_mac; ///< verifies the frames this end receives
    std::uint8_t version = 0;
    std::uint32_t shard_count = 0;
};

/// Client side: hello, verify the server's proof, send ours, derive the session keys. `key` is
/// the key-ring entry to prove, or nullptr for a server without keys. Any failure is
/// errc::unauthenticated (or a transport error), never a hint of which check failed.
template <class Stream>
result<session> client_handshake(Stream& s, const auth::key_entry* key, transport_kind kind,
                                 clock::time_point deadline) noexcept {
    auth::hello h{};
    h.min_version = protocol::version_min;
    h.max_version = protocol::version_max;
    h.transport = static_cast<std::uint8_t>(kind);
    h.key_id = key ? key->id : 0;
    MEMKV_TRY(auth::random_bytes(h.client_nonce));
    std::array<std::byte, auth::hello_size> hb;
    auth::encode(h, std::span<std::byte, auth::hello_size>(hb));
    MEMKV_TRY(write_all(s, hb, deadline));

    std::array<std::byte, auth::challenge_size> cb;
    MEMKV_TRY(read_exact(s, cb, deadline));
    auto c = auth::decode_challenge(std::span<const std::byte, auth::challenge_size>(cb));
    if (!c) return errc::protocol;
    if (c->version == 0) return errc::version_mismatch;
    if (c->shard_count == 0) return errc::protocol;
    std::span<const std::byte, 32> secret =
        key ? std::span<const std::byte, 32>(key->secret)
            : std::span<const std::byte, 32>(auth::no_auth_secret);
    const auto expect = auth::compute_server_proof(secret, hb, std::span(cb).first(48));
    if (!auth::equal_constant_time(expect, c->server_proof)) return errc::unauthenticated;

    auth::proof_message pm{auth::compute_client_proof(secret, hb, std::span(cb).first(80))};
    std::array<std::byte, auth::proof_message_size> pb;
    auth::encode(pm, std::span<std::byte, auth::proof_message_size>(pb));
    MEMKV_TRY(write_all(s, pb, deadline));

    auto keys = auth::derive_session_keys(secret, h.client_nonce, c->server_nonce);
    if (!keys) return keys.error();
    auto send = auth::frame_mac::create(keys->client_to_server);
    auto recv = auth::frame_mac::create(keys->server_to_client);
    if (!send || !recv) return errc::internal;
    return session{std::move(*send), std::move(*recv), c->version, c->shard_count};
}

/// Server side of one connection's handshake, stepped whenever the socket is readable. The
/// server reads only the fixed-size hello and proof messages before authentication, so a
/// pre-auth connection costs this object (about 300 bytes) plus the socket. A hello asking for a
/// data transport the stream cannot carry (transport rule 9: a TCP listener takes tcp, a Unix
/// one unix) is refused as malformed (errc::protocol) without a challenge; one with no version
/// in common gets its version-0 challenge first, as every such hello does.
template <class Stream>
class server_handshake {
public:
    enum class state { hello, proof, done, failed };

    server_handshake(Stream s, std::shared_ptr<const auth::key_ring> ring, std::uint32_t shards,
                     clock::time_point deadline)
        : stream_(std::move(s)), ring_(std::move(ring)), shards_(shards), deadline_(deadline) {}

    Stream& stream() noexcept { return stream_; }
    clock::time_point deadline() const noexcept { return deadline_; }
    state current() const noexcept { return state_; }
    /// The tenant of the proven key ("default" without keys). Valid once done.
    const std::string& tenant() const noexcept { return tenant_; }
    std::uint32_t key_id() const noexcept { return key_id_; }
    /// The data transport the hello asked for (one the stream carries). Valid once done.
    transport_kind requested() const noexcept { return requested_; }

    /// Reads what is available and advances. Returns the session when the client has proven its
    /// key; nullopt while more bytes are needed; an error when the connection must be closed.
    result<std::optional<session>> step() noexcept {
        for (;;) {
            const std::size_t want =
                state_ == state::hello ? auth::hello_size : auth::proof_message_size;
            if (state_ == state::done || state_ == state::failed) return errc::protocol;
            auto n = stream_.read_some(std::span(buf_.data() + have_, want - have_));
            if (!n) {
                if (n.error() == make_error_code(errc::retry)) return std::optional<session>();
                return fail(n.error());
            }
            have_ += *n;
            // Reject anything that is not a memkv handshake as soon as its magic is in.
            if (have_ >= 4 && have_ - *n < 4) {
                const auto magic = protocol::load_le32(buf_.data());
                if (magic != (state_ == state::hello ? auth::hello_magic : auth::proof_magic))
                    return fail(make_error_code(errc::protocol));
            }
            if (have_ < want) continue;
            have_ = 0;
            if (state_ == state::hello) {
                MEMKV_TRY(on_hello());
            } else {
                return on_proof();
            }
        }
    }

private:
    result<std::optional<session>> fail(std::error_code ec) noexcept {
        state_ = state::failed;
        return ec;
    }

    result<void> on_hello() noexcept {
        std::copy_n(buf_.begin(), auth::hello_size, hello_.begin());
        auto h = auth::decode_hello(std::span<const std::byte, auth::hello_size>(hello_));
        if (!h) {
            state_ = state::failed;
            return errc::protocol;
        }
        client_nonce_ = h->client_nonce;
        key_id_ = h->key_id;
        // Unknown key ids get a proof from a random secret: the client cannot tell which check
        // failed, and the connection fails at the proof step either way.
        known_ = false;
        if (ring_->empty()) {
            if (h->key_id == 0) {
                secret_ = auth::no_auth_secret;
                tenant_ = "default";
                known_ = true;
            }
        } else if (const auto* e = ring_->find(h->key_id)) {
            secret_ = e->secret;
            tenant_ = e->tenant;
            known_ = true;
        }
        if (!known_) MEMKV_TRY(auth::random_bytes(secret_));

        auth::challenge c{};
        c.version = h->max_version < protocol::version_min || h->min_version > protocol::version_max
                        ? 0
                        : std::min(h->max_version, protocol::version_max);
        c.shard_count = shards_;
        MEMKV_TRY(auth::random_bytes(c.server_nonce));
        server_nonce_ = c.server_nonce;
        auth::encode(c, std::span<std::byte, auth::challenge_size>(challenge_));
        c.server_proof =
            auth::compute_server_proof(secret_, hello_, std::span(challenge_).first(48));
        auth::encode(c, std::span<std::byte, auth::challenge_size>(challenge_));
        if (c.version == 0) {
            (void)write_all(stream_, challenge_, deadline_);
            state_ = state::failed;
            return errc::version_mismatch;
        }
        // A version in common but a data transport this listener cannot carry: no challenge.
        if (!stream_.carries(static_cast<transport_kind>(h->transport))) {
            state_ = state::failed;
            return errc::protocol;
        }
        requested_ = static_cast<transport_kind>(h->transport);
        // 96 bytes fit in any socket buffer of a fresh connection.
        if (auto w = write_all(stream_, challenge_, deadline_); !w) {
            state_ = state::failed;
            return w.error();
        }
        state_ = state::proof;
        return {};
    }

    result<std::optional<session>> on_proof() noexcept {
        auto p = auth::decode_proof_message(std::span<const std::byte, auth::proof_message_size>(
            buf_.data(), auth::proof_message_size));
        if (!p) return fail(errc::protocol);
        const auto expect =
            auth::compute_client_proof(secret_, hello_, std::span(challenge_).first(80));
        if (!known_ || !auth::equal_constant_time(expect, p->client_proof))
            return fail(errc::unauthenticated);
        auto keys = auth::derive_session_keys(secret_, client_nonce_, server_nonce_);
        if (!keys) return fail(keys.error());
        auto send = auth::frame_mac::create(keys->server_to_client);
        auto recv = auth::frame_mac::create(keys->client_to_server);
        if (!send || !recv) return fail(errc::internal);
        state_ = state::done;
        return std::optional<session>(session{std::move(*send), std::move(*recv),
                                              challenge_[4] == std::byte{0}
                                                  ? std::uint8_t(0)
                                                  : std::to_integer<std::uint8_t>(challenge_[4]),
                                              shards_});
    }

    Stream stream_;
    std::shared_ptr<const auth::key_ring> ring_;
    std::uint32_t shards_;
    clock::time_point deadline_;
    state state_ = state::hello;
    std::array<std::byte, auth::challenge_size> buf_{};
    std::size_t have_ = 0;
    std::array<std::byte, auth::hello_size> hello_{};
    std::array<std::byte, auth::challenge_size> challenge_{};
    std::array<std::byte, 32> secret_{};
    auth::nonce client_nonce_{}, server_nonce_{};
    std::string tenant_;
    std::uint32_t key_id_ = 0;
    transport_kind requested_ = transport_kind::tcp;
    bool known_ = false;
};

} // namespace memkv::detail
