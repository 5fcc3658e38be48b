// SPDX-License-Identifier: Apache-2.0
// region_geometry: where the regions of one shard's window lie on its store.
#pragma once

#include <cstdint>

namespace memkv::storage {

/// A shard's window [base, base + count * region_size) of its store, cut into regions of
/// region_size bytes, with I/O in multiples of block_size.
struct region_geometry {
    std::uint64_t base = 0;
    std::uint64_t region_size = 0;
    std::uint32_t count = 0;
    std::uint32_t block_size = 4096;

    /// Store offset of region `r`'s first byte (its header block).
    std::uint64_t offset(std::uint32_t r) const noexcept {
        return base + std::uint64_t(r) * region_size;
    }
    /// `n` rounded up to the block size.
    std::uint64_t round_up(std::uint64_t n) const noexcept {
        return (n + block_size - 1) / block_size * block_size;
    }
};

} // namespace memkv::storage
