// SPDX-License-Identifier: Apache-2.0
// Recovery: rebuilding a shard's index and region table from its store at start-up.
#pragma once

#include <memkv/result.hpp>
#include <memkv/storage/index.hpp>
#include <memkv/storage/meta_io.hpp>
#include <memkv/storage/region_geometry.hpp>
#include <memkv/storage/region_manager.hpp>

#include <cstdint>
#include <vector>

namespace memkv::storage {

/// What recovery found.
struct recovery_stats {
    std::uint64_t entries = 0, tombstones = 0, corrupt_records = 0;
    std::uint64_t regions_summarised = 0, regions_scanned = 0;
    double seconds = 0;
};

/// What recovery needs to know about a shard's window.
struct recovery_params {
    region_geometry geo;
    std::uint32_t shard = 0;
    std::uint64_t seed = 0;      ///< superblock.record_seed
    std::uint64_t max_value = 0; ///< records claiming more are damage
};

/// The regions recovery found in use (oldest first) and the next open sequence number.
struct recovered_layout {
    std::vector<recovered_region> in_use;
    std::uint64_t next_seq = 1;
};

/// Reads region headers, then each region's summary (or, when it has none or it fails its
/// checksum, a scan of its records) into `idx`, the newest version of each key winning. Never
/// fails over a bad record: damaged, torn and stale records are counted in `rs` and skipped.
/// Fails only on I/O errors. Synchronous: start-up only.
result<recovered_layout> recover_regions(meta_reader& io, const recovery_params& p, index& idx,
                                         recovery_stats& rs);

} // namespace memkv::storage
