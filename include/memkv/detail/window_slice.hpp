// SPDX-License-Identifier: Apache-2.0
// window_slice: the equal, block-aligned slices of a store window that the shards of a server use.
#pragma once

#include <cstdint>
#include <limits>

namespace memkv::detail {

/// A byte range [offset, offset + capacity) of a store.
struct window {
    std::uint64_t offset = 0;
    std::uint64_t capacity = 0;
};

/// The offset of an unusable slice: a multiple of no block size, so that every store's create()
/// refuses it.
inline constexpr std::uint64_t unusable_offset = std::numeric_limits<std::uint64_t>::max();

/// Slice `shard` of `shards` equal slices of `w`, each rounded down to a multiple of `block` (0
/// counts as 1). With `shards` <= 1 the window itself. When the slice would be empty, or `shard`
/// is not below `shards`, {unusable_offset, 0}.
constexpr window slice_window(window w, std::uint64_t block, std::uint32_t shard,
                              std::uint32_t shards) noexcept {
    if (shards <= 1) return w;
    const std::uint64_t bs = block ? block : 1;
    const std::uint64_t slice = w.capacity / shards / bs * bs;
    if (slice == 0 || shard >= shards) return {unusable_offset, 0};
    return {w.offset + std::uint64_t(shard) * slice, slice};
}

} // namespace memkv::detail
