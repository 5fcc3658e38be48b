// SPDX-License-Identifier: Apache-2.0
// Key hashing and rendezvous placement (include/memkv/protocol/placement.hpp). Kept out of line
// so that <xxhash.h> stays a private dependency of the library.
#include <memkv/protocol/placement.hpp>

#include <xxhash.h>

#include <utility>

namespace memkv {

std::uint64_t key_hash(std::span<const std::byte> key) noexcept {
    return XXH3_64bits(key.data(), key.size());
}

std::uint64_t key_hash(std::string_view key) noexcept {
    return XXH3_64bits(key.data(), key.size());
}

std::uint64_t server_seed(std::string_view identity) noexcept {
    return XXH3_64bits(identity.data(), identity.size());
}

placement::placement(std::vector<std::string> identities) : identities_(std::move(identities)) {
    seeds_.reserve(identities_.size());
    for (const auto& id : identities_)
        seeds_.push_back(server_seed(id));
}

std::size_t placement::server_for(std::uint64_t hash) const noexcept {
    std::size_t best = 0;
    std::uint64_t best_score = 0;
    for (std::size_t i = 0; i < seeds_.size(); ++i) {
        const std::uint64_t score = rendezvous_score(hash, seeds_[i]);
        // Strictly greater: on a tie the lower index keeps the key.
        if (i == 0 || score > best_score) {
            best = i;
            best_score = score;
        }
    }
    return best;
}

} // namespace memkv
