// SPDX-License-Identifier: Apache-2.0
// Handshake messages, transcript proofs (HMAC-SHA256) and session keys (HKDF-SHA256) on
// OpenSSL's EVP_MAC and EVP_KDF.
#include <memkv/auth/handshake.hpp>
#include <memkv/auth/key_ring.hpp>
#include <memkv/protocol/wire.hpp>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace memkv::auth {

namespace {

using protocol::load_le32;
using protocol::store_le32;

constexpr std::string_view server_proof_label = "memkv v1 server proof";
constexpr std::string_view client_proof_label = "memkv v1 client proof";
constexpr std::string_view c2s_info = "memkv v1 c2s";
constexpr std::string_view s2c_info = "memkv v1 s2c";

bool all_zero(const std::byte* p, std::size_t n) noexcept {
    return std::all_of(p, p + n, [](std::byte b) { return b == std::byte{0}; });
}

/// HMAC-SHA256(secret, label || hello || challenge[0, n)).
proof transcript_proof(std::span<const std::byte, 32> secret, std::string_view label,
                       std::span<const std::byte, hello_size> hello_bytes,
                       std::span<const std::byte> challenge_bytes, std::size_t n) noexcept {
    if (challenge_bytes.size() < n) std::abort(); // a caller bug, never input-dependent
    unsigned char data[32 + hello_size + challenge_size];
    std::size_t len = 0;
    std::memcpy(data, label.data(), label.size());
    len += label.size();
    std::memcpy(data + len, hello_bytes.data(), hello_bytes.size());
    len += hello_bytes.size();
    std::memcpy(data + len, challenge_bytes.data(), n);
    len += n;

    proof out{};
    std::size_t out_len = 0;
    if (EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, secret.data(), secret.size(), data,
                  len, reinterpret_cast<unsigned char*>(out.data()), out.size(),
                  &out_len) == nullptr ||
        out_len != out.size()) {
        ERR_clear_error();
        // Unpredictable, so it matches no peer's proof and the handshake fails closed.
        if (!random_bytes(out)) std::abort();
    }
    return out;
}

/// One HKDF-SHA256 output of `out.size()` bytes.
bool hkdf_sha256(EVP_KDF* kdf, std::span<const std::byte, 32> secret,
                 std::span<const unsigned char> salt, std::string_view info,
                 std::span<std::byte> out) noexcept {
    EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(kdf);
    if (ctx == nullptr) return false;
    char digest[] = "SHA256";
    const OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<std::byte*>(secret.data()),
                                          secret.size()),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT,
                                          const_cast<unsigned char*>(salt.data()), salt.size()),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<char*>(info.data()),
                                          info.size()),
        OSSL_PARAM_construct_end(),
    };
    const bool ok =
        EVP_KDF_derive(ctx, reinterpret_cast<unsigned char*>(out.data()), out.size(), params) == 1;
    EVP_KDF_CTX_free(ctx); // clears the key material it holds
    return ok;
}

} // namespace

void encode(const hello& m, std::span<std::byte, hello_size> out) noexcept {
    std::byte* p = out.data();
    std::memset(p, 0, out.size());
    store_le32(p + 0, hello_magic);
    p[4] = std::byte{m.min_version};
    p[5] = std::byte{m.max_version};
    p[6] = std::byte{m.transport};
    store_le32(p + 8, m.key_id);
    std::memcpy(p + 16, m.client_nonce.data(), nonce_size);
}

result<hello> decode_hello(std::span<const std::byte, hello_size> in) noexcept {
    const std::byte* p = in.data();
    if (load_le32(p) != hello_magic) return errc::protocol;
    if (p[7] != std::byte{0} || !all_zero(p + 12, 4) || !all_zero(p + 48, 16))
        return errc::protocol;
    hello m;
    m.min_version = std::to_integer<std::uint8_t>(p[4]);
    m.max_version = std::to_integer<std::uint8_t>(p[5]);
    m.transport = std::to_integer<std::uint8_t>(p[6]);
    m.key_id = load_le32(p + 8);
    std::memcpy(m.client_nonce.data(), p + 16, nonce_size);
    if (m.min_version == 0 || m.min_version > m.max_version) return errc::protocol;
    return m;
}

void encode(const challenge& m, std::span<std::byte, challenge_size> out) noexcept {
    std::byte* p = out.data();
    std::memset(p, 0, out.size());
    store_le32(p + 0, challenge_magic);
    p[4] = std::byte{m.version};
    store_le32(p + 8, m.shard_count);
    store_le32(p + 12, m.server_flags);
    std::memcpy(p + 16, m.server_nonce.data(), nonce_size);
    std::memcpy(p + 48, m.server_proof.data(), proof_size);
}

result<challenge> decode_challenge(std::span<const std::byte, challenge_size> in) noexcept {
    const std::byte* p = in.data();
    if (load_le32(p) != challenge_magic) return errc::protocol;
    if (!all_zero(p + 5, 3) || !all_zero(p + 80, 16)) return errc::protocol;
    challenge m;
    m.version = std::to_integer<std::uint8_t>(p[4]);
    m.shard_count = load_le32(p + 8);
    m.server_flags = load_le32(p + 12);
    std::memcpy(m.server_nonce.data(), p + 16, nonce_size);
    std::memcpy(m.server_proof.data(), p + 48, proof_size);
    return m;
}

void encode(const proof_message& m, std::span<std::byte, proof_message_size> out) noexcept {
    std::byte* p = out.data();
    std::memset(p, 0, out.size());
    store_le32(p + 0, proof_magic);
    std::memcpy(p + 16, m.client_proof.data(), proof_size);
}

result<proof_message>
decode_proof_message(std::span<const std::byte, proof_message_size> in) noexcept {
    const std::byte* p = in.data();
    if (load_le32(p) != proof_magic) return errc::protocol;
    if (!all_zero(p + 4, 12) || !all_zero(p + 48, 16)) return errc::protocol;
    proof_message m;
    std::memcpy(m.client_proof.data(), p + 16, proof_size);
    return m;
}

proof compute_server_proof(std::span<const std::byte, 32> secret,
                           std::span<const std::byte, hello_size> hello_bytes,
                           std::span<const std::byte> challenge_prefix48) noexcept {
    return transcript_proof(secret, server_proof_label, hello_bytes, challenge_prefix48,
                            server_proof_offset);
}

proof compute_client_proof(std::span<const std::byte, 32> secret,
                           std::span<const std::byte, hello_size> hello_bytes,
                           std::span<const std::byte> challenge_prefix80) noexcept {
    return transcript_proof(secret, client_proof_label, hello_bytes, challenge_prefix80,
                            client_proof_transcript);
}

session_keys::~session_keys() {
    OPENSSL_cleanse(client_to_server.data(), client_to_server.size());
    OPENSSL_cleanse(server_to_client.data(), server_to_client.size());
}

result<session_keys> derive_session_keys(std::span<const std::byte, 32> secret,
                                         const nonce& client_nonce,
                                         const nonce& server_nonce) noexcept {
    unsigned char salt[2 * nonce_size];
    std::memcpy(salt, client_nonce.data(), nonce_size);
    std::memcpy(salt + nonce_size, server_nonce.data(), nonce_size);

    EVP_KDF* kdf = EVP_KDF_fetch(nullptr, OSSL_KDF_NAME_HKDF, nullptr);
    if (kdf == nullptr) {
        ERR_clear_error();
        return errc::internal;
    }
    session_keys keys;
    const bool ok = hkdf_sha256(kdf, secret, salt, c2s_info, keys.client_to_server) &&
                    hkdf_sha256(kdf, secret, salt, s2c_info, keys.server_to_client);
    EVP_KDF_free(kdf);
    if (!ok) {
        ERR_clear_error();
        return errc::internal;
    }
    return keys;
}

} // namespace memkv::auth
