// SPDX-License-Identifier: Apache-2.0
// Compiled parts of the on-drive format (keeps xxHash out of the public headers).
#include <memkv/storage/format.hpp>

#include <xxhash.h>

namespace memkv::storage {

std::uint64_t keyed_checksum(std::span<const std::byte> data, std::uint64_t seed) noexcept {
    return XXH3_64bits_withSeed(data.data(), data.size(), seed);
}

} // namespace memkv::storage
