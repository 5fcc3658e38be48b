// SPDX-License-Identifier: Apache-2.0
// The per-direction frame MAC: a truncated HMAC-SHA256 over every non-payload byte of a frame,
// bound to a per-direction sequence number (DESIGN.md §6).
#pragma once

#include <memkv/result.hpp>

#include <cstddef>
#include <cstdint>
#include <span>

struct hmac_ctx_st; // OpenSSL's HMAC_CTX

namespace memkv::auth {

/// Bytes of the session key a frame_mac is keyed with.
inline constexpr std::size_t frame_mac_key_size = 32;

/// HMAC-SHA256 keyed with one direction's session key, truncated to its first 8 bytes read as a
/// little-endian u64. The key is absorbed once by create(); each compute() starts from that
/// pre-keyed state, so a frame costs the hash of its bytes and little more.
///
/// Not synchronised: one thread at a time (the connection's owner) may call compute() and
/// verify(). A moved-from object computes 0 and verifies nothing until it is assigned to.
class frame_mac {
public:
    /// Keys a new MAC with `key` (the caller may wipe `key` afterwards). Fails with
    /// `errc::internal` if OpenSSL cannot allocate or key the context.
    static result<frame_mac> create(std::span<const std::byte, frame_mac_key_size> key) noexcept;

    /// Takes over `other`'s context; `other` is left empty.
    frame_mac(frame_mac&& other) noexcept;
    /// Frees this context (wiping its key state) and takes over `other`'s.
    frame_mac& operator=(frame_mac&& other) noexcept;
    frame_mac(const frame_mac&) = delete;
    frame_mac& operator=(const frame_mac&) = delete;
    /// Frees the context; OpenSSL wipes the key state.
    ~frame_mac();

    /// The MAC of le64(seq) || header_prefix || body, where `header_prefix` is the first 56 bytes
    /// of the encoded frame header (everything but the MAC field) and `body` the frame's MACed
    /// body (keys, metadata, descriptors; never payload). Returns 0 if OpenSSL fails, which
    /// happens only when it cannot allocate; verify() never accepts in that case.
    std::uint64_t compute(std::uint64_t seq, std::span<const std::byte> header_prefix,
                          std::span<const std::byte> body) noexcept;

    /// Whether `mac` is the MAC of the same bytes, compared in constant time.
    bool verify(std::uint64_t seq, std::span<const std::byte> header_prefix,
                std::span<const std::byte> body, std::uint64_t mac) noexcept;

private:
    explicit frame_mac(hmac_ctx_st* ctx) noexcept : ctx_(ctx) {}
    bool compute_into(std::uint64_t seq, std::span<const std::byte> header_prefix,
                      std::span<const std::byte> body, std::uint64_t& out) noexcept;

    hmac_ctx_st* ctx_ = nullptr; ///< keyed once; re-initialised (not re-keyed) per frame
};

} // namespace memkv::auth
