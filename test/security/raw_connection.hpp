// SPDX-License-Identifier: Apache-2.0
// The attacker's side of the security tests: a raw TCP connection to a memkv server whose bytes
// the test crafts itself. It can stay pre-auth (garbage, partial hellos), or run the real client
// handshake and then build frames by hand (encode_header + frame_mac with its own sequence
// number), so that any field can be made to lie. Plus process-memory probes and small helpers.
#pragma once

#include "support/catch.hpp"

#include <memkv/auth/frame_mac.hpp>
#include <memkv/auth/handshake.hpp>
#include <memkv/auth/key_ring.hpp>
#include <memkv/checksum.hpp>
#include <memkv/detail/handshake_io.hpp>
#include <memkv/detail/socket.hpp>
#include <memkv/error.hpp>
#include <memkv/protocol/frame.hpp>
#include <memkv/protocol/messages.hpp>
#include <memkv/protocol/placement.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace memkv::test::security {

using clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

/// Milliseconds from `t0` to now.
inline double ms_since(clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(clock::now() - t0).count();
}

inline std::span<const std::byte> bytes_of(std::string_view s) {
    return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

/// The concatenation of `parts`.
inline std::vector<std::byte> cat(std::initializer_list<std::span<const std::byte>> parts) {
    std::vector<std::byte> out;
    for (auto p : parts)
        out.insert(out.end(), p.begin(), p.end());
    return out;
}

inline std::vector<std::byte> filled(std::size_t n, std::uint8_t v = 0x61) {
    return std::vector<std::byte>(n, std::byte{v});
}

/// Field `index` of /proc/self/statm (0: VM size, 1: resident), in bytes.
inline std::uint64_t statm_bytes(int index) {
    std::FILE* f = std::fopen("/proc/self/statm", "r");
    if (!f) return 0;
    unsigned long long v[2] = {0, 0};
    const int n = std::fscanf(f, "%llu %llu", &v[0], &v[1]);
    std::fclose(f);
    if (n != 2) return 0;
    return v[index] * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}
/// Resident set size of this process (the server runs in it).
inline std::uint64_t rss_bytes() {
    return statm_bytes(1);
}
/// Address space of this process.
inline std::uint64_t vm_bytes() {
    return statm_bytes(0);
}

/// A key that shard `shard` of `shards` owns: "<prefix>-<n>" for the smallest such n.
inline std::string owned_key(std::uint32_t shard, std::uint32_t shards, std::string_view prefix) {
    for (unsigned n = 0;; ++n) {
        std::string k = std::string(prefix) + "-" + std::to_string(n);
        if (shard_for(key_hash(std::string_view(k)), shards) == shard) return k;
    }
}

/// A request header with the given opcode (reply bit allowed), request id and aux.
inline protocol::frame_header header(std::uint8_t op, std::uint64_t id, std::uint32_t aux = 0) {
    protocol::frame_header h;
    h.op = op;
    h.request_id = id;
    h.aux = aux;
    return h;
}
inline protocol::frame_header header(protocol::opcode op, std::uint64_t id, std::uint32_t aux = 0) {
    return header(static_cast<std::uint8_t>(op), id, aux);
}

/// What the server did after an attack: the frames it sent (MAC-verified), and whether and when
/// it closed the connection.
struct close_outcome {
    bool closed = false;       ///< end of stream (FIN) or reset seen
    bool reset = false;        ///< the close was a reset (the server left our bytes unread)
    double elapsed_ms = 0;     ///< from the start of await_close() to the close (or timeout)
    std::size_t raw_bytes = 0; ///< bytes received in total
    std::vector<protocol::frame_header> frames; ///< complete frames with a valid MAC, in order
    std::size_t stray_bytes = 0; ///< bytes that did not form a complete, verified frame
    bool bad_mac = false;        ///< a frame from the server failed its MAC (never expected)

    /// True if the server sent exactly one connection-level error (a ping reply with request
    /// id 0, no body, status `status`) and nothing else.
    bool only_connection_error(errc status) const {
        return frames.size() == 1 && stray_bytes == 0 && !bad_mac &&
               frames[0].op ==
                   (static_cast<std::uint8_t>(protocol::opcode::ping) | protocol::reply_bit) &&
               frames[0].request_id == 0 && frames[0].body_len == 0 && frames[0].payload_len == 0 &&
               frames[0].aux == static_cast<std::uint32_t>(status);
    }
    /// True if nothing at all came back.
    bool silent() const { return raw_bytes == 0; }
    std::string describe() const {
        std::string s = "closed=" + std::to_string(closed) + " reset=" + std::to_string(reset) +
                        " after " + std::to_string(elapsed_ms) + " ms, " +
                        std::to_string(raw_bytes) + " bytes back, frames:";
        for (const auto& f : frames)
            s += " [op=0x" +
                 [&] {
                     char b[8];
                     std::snprintf(b, sizeof b, "%02x", f.op);
                     return std::string(b);
                 }() +
                 " id=" + std::to_string(f.request_id) + " status=" + std::to_string(f.aux) + "]";
        if (stray_bytes) s += " stray=" + std::to_string(stray_bytes);
        if (bad_mac) s += " BAD-MAC";
        return s;
    }
};

/// An encoded hello (versions 1..1 unless given, transport tcp) with a fresh random nonce.
inline std::array<std::byte, auth::hello_size>
make_hello(std::uint32_t key_id, std::uint8_t min_version = 1, std::uint8_t max_version = 1) {
    auth::hello h{};
    h.min_version = min_version;
    h.max_version = max_version;
    h.transport = static_cast<std::uint8_t>(transport_kind::tcp);
    h.key_id = key_id;
    REQUIRE(auth::random_bytes(h.client_nonce));
    std::array<std::byte, auth::hello_size> out{};
    auth::encode(h, std::span<std::byte, auth::hello_size>(out));
    return out;
}

/// The encoded proof message a client holding `secret` answers `challenge` with.
inline std::array<std::byte, auth::proof_message_size>
make_proof(std::span<const std::byte, 32> secret,
           const std::array<std::byte, auth::hello_size>& hello,
           std::span<const std::byte> challenge) {
    auth::proof_message pm{auth::compute_client_proof(secret, hello, challenge.first(80))};
    std::array<std::byte, auth::proof_message_size> out{};
    auth::encode(pm, std::span<std::byte, auth::proof_message_size>(out));
    return out;
}

/// A raw client connection. Pre-auth it is just a socket; after handshake() it tracks both
/// directions' sequence numbers and MACs every frame built with frame().
class raw_connection {
public:
    /// Connects to "host:port" (the server's TCP endpoint) or "unix:/path". Fails the test if
    /// it cannot.
    static raw_connection connect(const std::string& endpoint) {
        auto addr = endpoint.starts_with("unix:") ? detail::parse_unix_address(endpoint)
                                                  : detail::parse_inet_address(endpoint);
        REQUIRE(addr);
        auto s = detail::connect_stream(*addr, milliseconds(2000));
        REQUIRE(s);
        return raw_connection(std::move(*s));
    }

    raw_connection(raw_connection&&) noexcept = default;
    raw_connection& operator=(raw_connection&&) noexcept = default;

    int fd() const noexcept { return s_.fd(); }
    detail::socket_stream& stream() noexcept { return s_; }
    bool authenticated() const noexcept { return sess_.has_value(); }
    std::uint32_t shard_count() const noexcept { return sess_ ? sess_->shard_count : 0; }
    /// The next request id (ids grow on a connection).
    std::uint64_t next_id() noexcept { return next_id_++; }
    /// Frames built so far (the next frame's send sequence number).
    std::uint64_t send_seq() const noexcept { return send_seq_; }

    /// Writes every byte (blocking, 2 s at most). False if the peer closed or reset meanwhile:
    /// an attacker's write failing is an acceptable outcome, the caller then awaits the close.
    bool send(std::span<const std::byte> b) {
        const auto deadline = clock::now() + milliseconds(2000);
        while (!b.empty()) {
            const ssize_t n = ::send(fd(), b.data(), b.size(), MSG_NOSIGNAL);
            if (n > 0) {
                b = b.subspan(static_cast<std::size_t>(n));
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                if (!detail::wait_fd(fd(), POLLOUT, deadline)) return false;
                continue;
            }
            return false; // EPIPE, ECONNRESET
        }
        return true;
    }
    bool send(std::string_view s) { return send(bytes_of(s)); }

    /// Half-closes: the server sees end of stream while we can still read its answer.
    void shutdown_write() { ::shutdown(fd(), SHUT_WR); }

    /// The real client handshake (detail::client_handshake) with `key` (nullptr: no key),
    /// asking for data transport `kind`.
    result<void> handshake(const auth::key_entry* key, transport_kind kind = transport_kind::tcp) {
        auto r = detail::client_handshake(s_, key, kind, clock::now() + milliseconds(2000));
        if (!r) return r.error();
        sess_.emplace(std::move(*r));
        return {};
    }
    /// Installs a session established by hand (tests that drive the handshake themselves).
    void adopt_session(detail::session s) { sess_.emplace(std::move(s)); }

    /// Builds a frame: header `h` (with body_len, payload_len and checksum set from `body` and
    /// `payload` when `fix_lengths`), MACed with the next send sequence number over header[0,56)
    /// and `body`. Nothing is sent.
    std::vector<std::byte> frame(protocol::frame_header h, std::span<const std::byte> body = {},
                                 std::span<const std::byte> payload = {}, bool fix_lengths = true) {
        REQUIRE(sess_);
        if (fix_lengths) {
            h.body_len = static_cast<std::uint32_t>(body.size());
            h.payload_len = static_cast<std::uint32_t>(payload.size());
            h.checksum = payload.empty() ? 0 : crc32c(payload);
        }
        std::vector<std::byte> out(protocol::header_size + body.size() + payload.size());
        std::span<std::byte, protocol::header_size> hdr(out.data(), protocol::header_size);
        protocol::encode_header(h, hdr);
        const auto mac = sess_->send_mac.compute(
            send_seq_++, std::span<const std::byte>(out.data(), protocol::mac_offset), body);
        protocol::encode_mac(mac, hdr);
        std::copy(body.begin(), body.end(), out.begin() + protocol::header_size);
        std::copy(payload.begin(), payload.end(),
                  out.begin() + static_cast<std::ptrdiff_t>(protocol::header_size + body.size()));
        return out;
    }

    /// One frame received from the server.
    struct frame_in {
        protocol::frame_header h;
        std::vector<std::byte> body, payload;
    };

    /// Reads the next frame (header, body, payload) and verifies its MAC; nullopt if the
    /// connection closed, timed out or sent something that is not a verified frame.
    std::optional<frame_in> read_frame(milliseconds timeout = milliseconds(2000)) {
        const auto deadline = clock::now() + timeout;
        if (!fill(protocol::header_size, deadline)) return std::nullopt;
        auto d = protocol::decode_header(
            std::span<const std::byte, protocol::header_size>(rx_.data(), protocol::header_size),
            limits_);
        if (!d) return std::nullopt;
        const std::size_t total = protocol::header_size + d->body_len + d->payload_len;
        if (!fill(total, deadline)) return std::nullopt;
        frame_in f;
        f.h = *d;
        f.body.assign(rx_.begin() + protocol::header_size,
                      rx_.begin() +
                          static_cast<std::ptrdiff_t>(protocol::header_size + d->body_len));
        f.payload.assign(rx_.begin() +
                             static_cast<std::ptrdiff_t>(protocol::header_size + d->body_len),
                         rx_.begin() + static_cast<std::ptrdiff_t>(total));
        const bool ok = sess_->recv_mac.verify(
            recv_seq_++, std::span<const std::byte>(rx_.data(), protocol::mac_offset), f.body,
            f.h.mac);
        rx_.erase(rx_.begin(), rx_.begin() + static_cast<std::ptrdiff_t>(total));
        if (!ok) return std::nullopt;
        return f;
    }

    /// Sends attach(shard) and requires a successful attach reply.
    void attach(std::uint32_t shard) {
        const auto id = next_id();
        REQUIRE(send(frame(header(protocol::opcode::attach, id, shard))));
        auto r = read_frame();
        REQUIRE(r);
        REQUIRE(r->h.op ==
                (static_cast<std::uint8_t>(protocol::opcode::attach) | protocol::reply_bit));
        REQUIRE(r->h.request_id == id);
        REQUIRE(r->h.aux == 0);
    }

    /// Handshake with `key` and attach to `shard`.
    void open_session(const auth::key_entry* key, std::uint32_t shard) {
        auto h = handshake(key);
        REQUIRE(h);
        attach(shard);
    }

    /// Reads everything the server sends until it closes the connection or `timeout` passes,
    /// then parses what came as frames (MACs verified when a session exists).
    close_outcome await_close(milliseconds timeout = milliseconds(2000)) {
        close_outcome out;
        const auto t0 = clock::now();
        const auto deadline = t0 + timeout;
        std::byte buf[16384];
        for (;;) {
            const ssize_t n = ::recv(fd(), buf, sizeof buf, MSG_DONTWAIT);
            if (n > 0) {
                rx_.insert(rx_.end(), buf, buf + n);
                out.raw_bytes += static_cast<std::size_t>(n);
                continue;
            }
            if (n == 0) {
                out.closed = true;
                break;
            }
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!detail::wait_fd(fd(), POLLIN, deadline)) break; // timed out
                continue;
            }
            out.closed = true;
            out.reset = true;
            break;
        }
        out.elapsed_ms = ms_since(t0);
        parse_frames(out);
        return out;
    }

    /// True if the server has neither sent anything nor closed within `wait`.
    bool quiet_for(milliseconds wait) {
        pollfd p{fd(), POLLIN, 0};
        const int r = ::poll(&p, 1, static_cast<int>(wait.count()));
        return r == 0;
    }

    /// Bytes received but not consumed by read_frame().
    std::vector<std::byte>& received() noexcept { return rx_; }

    /// Blocks until `n` bytes are buffered (false on close or timeout).
    bool fill(std::size_t n, clock::time_point deadline) {
        std::byte buf[16384];
        while (rx_.size() < n) {
            const ssize_t k = ::recv(fd(), buf, sizeof buf, MSG_DONTWAIT);
            if (k > 0) {
                rx_.insert(rx_.end(), buf, buf + k);
                continue;
            }
            if (k == 0) return false;
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) return false;
            if (!detail::wait_fd(fd(), POLLIN, deadline)) return false;
        }
        return true;
    }

private:
    explicit raw_connection(detail::socket_stream s) : s_(std::move(s)) {}

    void parse_frames(close_outcome& out) {
        if (!sess_) {
            out.stray_bytes = rx_.size();
            return;
        }
        std::size_t pos = 0;
        while (rx_.size() - pos >= protocol::header_size) {
            auto d = protocol::decode_header(std::span<const std::byte, protocol::header_size>(
                                                 rx_.data() + pos, protocol::header_size),
                                             limits_);
            if (!d) break;
            const std::size_t total = protocol::header_size + d->body_len + d->payload_len;
            if (rx_.size() - pos < total) break;
            const bool ok = sess_->recv_mac.verify(
                recv_seq_++, std::span<const std::byte>(rx_.data() + pos, protocol::mac_offset),
                std::span<const std::byte>(rx_.data() + pos + protocol::header_size, d->body_len),
                d->mac);
            if (!ok) {
                out.bad_mac = true;
                break;
            }
            out.frames.push_back(*d);
            pos += total;
        }
        out.stray_bytes = rx_.size() - pos;
        rx_.clear();
    }

    detail::socket_stream s_;
    std::optional<detail::session> sess_;
    std::uint64_t send_seq_ = 0, recv_seq_ = 0;
    std::uint64_t next_id_ = 1;
    std::vector<std::byte> rx_;
    protocol::limits limits_{};
};

} // namespace memkv::test::security
