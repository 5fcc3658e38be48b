// SPDX-License-Identifier: Apache-2.0
// The key ring: the (key id, 32-byte secret, tenant) entries a server accepts and a client
// presents, read from MEMKV_AUTH_KEY, MEMKV_AUTH_KEY_FILE or a key file; plus crypto helpers.
#pragma once

#include <memkv/result.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace memkv::auth {

/// Bytes in a key secret.
inline constexpr std::size_t secret_size = 32;
/// The most characters in a tenant name.
inline constexpr std::size_t max_tenant_size = 64;
/// The tenant of keys given without one.
inline constexpr std::string_view default_tenant = "default";

/// One key: its id (1..2^32-1; 0 means "no key" on the wire), its secret, and the tenant whose
/// namespace a connection authenticated with it sees. The secret is wiped when the entry is
/// destroyed; copies are independent and wipe their own bytes.
struct key_entry {
    std::uint32_t id = 0;                        ///< key id; never 0 in a ring
    std::array<std::byte, secret_size> secret{}; ///< the shared secret
    std::string tenant{default_tenant};          ///< [A-Za-z0-9._-]{1,64}

    /// Wipes `secret` (OPENSSL_cleanse).
    ~key_entry();
};

/// Whether `tenant` is a valid tenant name: 1 to 64 characters of [A-Za-z0-9._-].
bool valid_tenant(std::string_view tenant) noexcept;

/// An ordered set of key entries with unique, non-zero ids. Rings are small (a few keys during a
/// rotation) and lookups scan linearly. Not synchronised: share a ring between threads only
/// read-only (a reload builds a new ring and swaps it in).
class key_ring {
public:
    /// An empty ring.
    key_ring() = default;

    /// Parses key-file text: one entry per line, "ID TENANT HEX64" separated by whitespace. ID
    /// is decimal, 1..2^32-1; TENANT is [A-Za-z0-9._-]{1,64}; HEX64 is exactly 64 hex digits
    /// (either case). '#' starts a comment that runs to the end of the line; blank lines are
    /// ignored. Duplicate ids are an error. Errors are `errc::invalid_argument`; when `why` is
    /// given it receives a message naming the bad line (never the secret).
    static result<key_ring> parse(std::string_view text, std::string* why = nullptr);

    /// Reads and parses the key file at `path` (at most 1 MiB). I/O failures carry the
    /// `errno` (system category), a larger file `errc::too_large`, bad content as `parse`.
    static result<key_ring> from_file(const std::string& path, std::string* why = nullptr);

    /// Parses a MEMKV_AUTH_KEY value: "HEX64" (id 1, tenant "default"), "ID:HEX64" (tenant
    /// "default") or "ID:TENANT:HEX64". Surrounding whitespace is ignored. Errors are
    /// `errc::invalid_argument`, explained in `why` when given.
    static result<key_entry> parse_key_spec(std::string_view spec, std::string* why = nullptr);

    /// The ring configured by the environment: the entry of MEMKV_AUTH_KEY and those of the key
    /// file named by MEMKV_AUTH_KEY_FILE, together (their ids must not collide). A variable that
    /// is unset or empty contributes nothing, so the ring is empty when neither is set.
    static result<key_ring> from_environment(std::string* why = nullptr);

    /// Adds `e`. Fails with `errc::invalid_argument` if its id is 0 or already in the ring, or
    /// its tenant is not a valid tenant name.
    result<void> add(key_entry e);

    /// The entry with id `id`, or null. The pointer is valid until the ring is modified or
    /// destroyed.
    const key_entry* find(std::uint32_t id) const noexcept;

    /// Whether the ring holds no entry.
    bool empty() const noexcept { return entries_.empty(); }
    /// The number of entries.
    std::size_t size() const noexcept { return entries_.size(); }
    /// The entries, in the order they were added.
    const std::vector<key_entry>& entries() const noexcept { return entries_; }

private:
    std::vector<key_entry> entries_;
};

/// Fills `out` with cryptographically secure random bytes (OpenSSL RAND_bytes). Fails with
/// `errc::internal` if the generator cannot be seeded. Thread-safe.
result<void> random_bytes(std::span<std::byte> out) noexcept;

/// Compares `a` and `b` in time independent of their contents (CRYPTO_memcmp); false if their
/// sizes differ (sizes are not secret).
bool equal_constant_time(std::span<const std::byte> a, std::span<const std::byte> b) noexcept;

/// Overwrites `bytes` with zeros in a way the compiler cannot elide (OPENSSL_cleanse).
void wipe(std::span<std::byte> bytes) noexcept;

} // namespace memkv::auth
