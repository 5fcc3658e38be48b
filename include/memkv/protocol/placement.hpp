// SPDX-License-Identifier: Apache-2.0
// The placement function of the wire protocol: which server and which shard own a key. Every
// client must compute it bit for bit; docs/protocol.md gives its definition and test vectors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace memkv {

/// XXH3-64 with seed 0 of the namespaced key bytes (the key exactly as sent on the wire).
std::uint64_t key_hash(std::span<const std::byte> key) noexcept;
/// XXH3-64 with seed 0 of the bytes of `key`; equal to the span overload on the same bytes.
std::uint64_t key_hash(std::string_view key) noexcept;

/// Shard of a key hash among `shard_count` shards: `(u128(hash) * shard_count) >> 64`, so each
/// shard owns one contiguous range of hash values. Precondition: shard_count >= 1 (0 yields 0).
constexpr std::uint32_t shard_for(std::uint64_t hash, std::uint32_t shard_count) noexcept {
    // The high 64 bits of a 64x32-bit product, in portable arithmetic (no __int128): with
    // hash = hi * 2^32 + lo, the sum below cannot overflow because hi * n <= (2^32 - 1)^2.
    const std::uint64_t hi = hash >> 32;
    const std::uint64_t lo = hash & 0xffffffffu;
    const std::uint64_t mid = hi * shard_count + ((lo * shard_count) >> 32);
    return static_cast<std::uint32_t>(mid >> 32);
}

/// MurmurHash3's 64-bit finalizer (fmix64): a bijection on 64-bit values with full avalanche.
constexpr std::uint64_t fmix64(std::uint64_t k) noexcept {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return k;
}

/// A server's rendezvous seed: XXH3-64 (seed 0) of its identity string.
std::uint64_t server_seed(std::string_view identity) noexcept;

/// Rendezvous (highest random weight) score of a server for a key hash: fmix64(hash ^ seed),
/// where `seed` is the server's server_seed().
constexpr std::uint64_t rendezvous_score(std::uint64_t hash, std::uint64_t seed) noexcept {
    return fmix64(hash ^ seed);
}

/// A server list with precomputed rendezvous seeds. Identities are the servers' canonical
/// "host:port" (or "unix:/path") strings exactly as configured; every client of a cluster must
/// use the same strings, in any order of its choosing. The owner of a hash is the server with
/// the highest rendezvous score; ties are broken by the lower index (so of two equal identities
/// only the first ever owns keys). Adding or removing a server moves only the keys it gains or
/// loses. Immutable after construction, hence safe to share between threads.
class placement {
public:
    /// Precomputes the seeds of `identities` (which may be empty; see server_for()).
    explicit placement(std::vector<std::string> identities);

    /// Index of the server that owns `hash`. Precondition: size() > 0.
    std::size_t server_for(std::uint64_t hash) const noexcept;
    /// Number of servers.
    std::size_t size() const noexcept { return identities_.size(); }
    /// Identity string of server `i` (< size()), as given to the constructor.
    const std::string& identity(std::size_t i) const noexcept { return identities_[i]; }
    /// Rendezvous seed of server `i` (< size()).
    std::uint64_t seed(std::size_t i) const noexcept { return seeds_[i]; }

private:
    std::vector<std::string> identities_;
    std::vector<std::uint64_t> seeds_;
};

} // namespace memkv
