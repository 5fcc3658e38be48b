// SPDX-License-Identifier: Apache-2.0
// The pre-authentication handshake as pure functions: message encode/decode, the transcript
// proofs and the session-key derivation. Driving it over a socket is done elsewhere.
#pragma once

#include <memkv/result.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace memkv::auth {

// The exchange (all integers little-endian):
//   client -> server  hello          (64 bytes)  versions, transport, key id, client nonce
//   server -> client  challenge      (96 bytes)  chosen version, server nonce, server proof
//   client -> server  proof_message  (64 bytes)  client proof
// The server proves it holds the secret of `key_id` before the client proves it; both proofs
// cover the whole transcript before them, and the session keys depend on both nonces.

/// Bytes in a nonce.
inline constexpr std::size_t nonce_size = 32;
/// Bytes in a proof (an untruncated HMAC-SHA256).
inline constexpr std::size_t proof_size = 32;
/// Bytes in a session key.
inline constexpr std::size_t session_key_size = 32;
/// Bytes of the encoded hello.
inline constexpr std::size_t hello_size = 64;
/// Bytes of the encoded challenge.
inline constexpr std::size_t challenge_size = 96;
/// Bytes of the encoded proof message.
inline constexpr std::size_t proof_message_size = 64;
/// Bytes of the challenge covered by the server proof (everything before it).
inline constexpr std::size_t server_proof_offset = 48;
/// Bytes of the challenge covered by the client proof (everything up to the reserved tail).
inline constexpr std::size_t client_proof_transcript = 80;

/// "MKVH" read as a little-endian u32.
inline constexpr std::uint32_t hello_magic = 0x48564B4D;
/// "MKVC" read as a little-endian u32.
inline constexpr std::uint32_t challenge_magic = 0x43564B4D;
/// "MKVP" read as a little-endian u32.
inline constexpr std::uint32_t proof_magic = 0x50564B4D;

/// A handshake nonce: fresh random bytes from each side, per connection.
using nonce = std::array<std::byte, nonce_size>;
/// A transcript proof (HMAC-SHA256).
using proof = std::array<std::byte, proof_size>;
/// One direction's session key (the frame_mac key).
using session_key = std::array<std::byte, session_key_size>;

/// client -> server, the first bytes on a connection. Layout: 0 magic u32, 4 min_version u8,
/// 5 max_version u8, 6 transport u8, 7 reserved u8 (0), 8 key_id u32, 12 reserved u32 (0),
/// 16 client_nonce[32], 48 reserved[16] (0).
struct hello {
    std::uint8_t min_version = 0; ///< lowest protocol version the client speaks (>= 1)
    std::uint8_t max_version = 0; ///< highest protocol version the client speaks
    std::uint8_t transport = 0;   ///< the data transport the client asks for
    std::uint32_t key_id = 0;     ///< the key-ring entry it will prove; 0 = no key
    nonce client_nonce{};         ///< fresh random bytes
};

/// server -> client. Layout: 0 magic u32, 4 version u8 (chosen; 0 = no common version),
/// 5..7 reserved (0), 8 shard_count u32, 12 server_flags u32, 16 server_nonce[32],
/// 48 server_proof[32], 80 reserved[16] (0).
struct challenge {
    std::uint8_t version = 0;       ///< the chosen version; 0 = none in common (then close)
    std::uint32_t shard_count = 0;  ///< shards the server runs
    std::uint32_t server_flags = 0; ///< server capabilities
    nonce server_nonce{};           ///< fresh random bytes
    proof server_proof{};           ///< compute_server_proof()
};

/// client -> server. Layout: 0 magic u32, 4..15 reserved (0), 16 client_proof[32],
/// 48 reserved[16] (0).
struct proof_message {
    proof client_proof{}; ///< compute_client_proof()
};

/// Encodes `m` into `out`, reserved bytes zeroed.
void encode(const hello& m, std::span<std::byte, hello_size> out) noexcept;
/// Decodes a hello. `errc::protocol` on a bad magic, nonzero reserved bytes,
/// min_version > max_version or min_version 0.
result<hello> decode_hello(std::span<const std::byte, hello_size> in) noexcept;

/// Encodes `m` into `out`, reserved bytes zeroed.
void encode(const challenge& m, std::span<std::byte, challenge_size> out) noexcept;
/// Decodes a challenge. `errc::protocol` on a bad magic or nonzero reserved bytes; a version of
/// 0 decodes (the caller reports `errc::version_mismatch`).
result<challenge> decode_challenge(std::span<const std::byte, challenge_size> in) noexcept;

/// Encodes `m` into `out`, reserved bytes zeroed.
void encode(const proof_message& m, std::span<std::byte, proof_message_size> out) noexcept;
/// Decodes a proof message. `errc::protocol` on a bad magic or nonzero reserved bytes.
result<proof_message>
decode_proof_message(std::span<const std::byte, proof_message_size> in) noexcept;

/// server_proof = HMAC-SHA256(secret, "memkv v1 server proof" || hello bytes (64) ||
/// challenge bytes [0, 48)); the label is its 21 characters, no terminator.
/// `challenge_prefix48` must hold at least 48 bytes (the whole encoded challenge may be passed;
/// only its first 48 bytes are used); fewer is a bug and aborts. Compare proofs with
/// equal_constant_time(). If OpenSSL fails (it cannot allocate), the result is random bytes,
/// which match no peer's proof.
proof compute_server_proof(std::span<const std::byte, 32> secret,
                           std::span<const std::byte, hello_size> hello_bytes,
                           std::span<const std::byte> challenge_prefix48) noexcept;

/// client_proof = HMAC-SHA256(secret, "memkv v1 client proof" || hello bytes (64) ||
/// challenge bytes [0, 80)), so it also covers the server proof. `challenge_prefix80` must hold
/// at least 80 bytes (only the first 80 are used); otherwise as compute_server_proof().
proof compute_client_proof(std::span<const std::byte, 32> secret,
                           std::span<const std::byte, hello_size> hello_bytes,
                           std::span<const std::byte> challenge_prefix80) noexcept;

/// The two directions' frame_mac keys. Wiped on destruction; copies wipe their own bytes.
struct session_keys {
    session_key client_to_server{}; ///< MACs frames the client sends
    session_key server_to_client{}; ///< MACs frames the server sends

    /// Wipes both keys (OPENSSL_cleanse).
    ~session_keys();
};

/// HKDF-SHA256 (extract and expand, RFC 5869) with ikm = secret, salt = client_nonce ||
/// server_nonce, info = "memkv v1 c2s" / "memkv v1 s2c" (12 characters, no terminator), 32
/// bytes each, through OpenSSL's EVP_KDF "HKDF". Fails with `errc::internal` if OpenSSL fails.
result<session_keys> derive_session_keys(std::span<const std::byte, 32> secret,
                                         const nonce& client_nonce,
                                         const nonce& server_nonce) noexcept;

/// The secret used when the server runs without a key ring (loopback development mode): 32 zero
/// bytes, key id 0. MACs are still computed, so corruption is still detected, but there is no
/// authentication.
inline constexpr std::array<std::byte, 32> no_auth_secret{};

} // namespace memkv::auth
