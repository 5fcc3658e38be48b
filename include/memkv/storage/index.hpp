// SPDX-License-Identifier: Apache-2.0
// The DRAM index of one shard: (tenant, key) -> its newest record, and the keys of each region.
#pragma once

#include <memkv/result.hpp>
#include <memkv/storage/format.hpp>
#include <memkv/storage/region_geometry.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace memkv::storage {

/// The index key: tenant and key bytes; tenant names never contain '\0'.
inline std::string index_key(std::string_view tenant, std::span<const std::byte> key) {
    std::string k;
    k.reserve(tenant.size() + 1 + key.size());
    k.append(tenant);
    k.push_back('\0');
    k.append(reinterpret_cast<const char*>(key.data()), key.size());
    return k;
}

/// What the index holds for one key: a value or a tombstone. Full key bytes are the map key, so
/// every hit compares them in full.
struct index_entry {
    std::uint64_t device_offset = 0; ///< first byte of the value (its header is one block before)
    std::uint64_t value_len = 0;
    std::uint64_t version = 0;    ///< per shard, monotonic; newer records win
    std::uint64_t expires_ms = 0; ///< wall clock ms, 0 = never
    std::uint32_t region = 0;
    bool pinned = false;
    bool tombstone = false;          ///< a delete, kept until its region is reclaimed
    std::string meta;                ///< up to limits::max_meta bytes
    std::vector<std::uint32_t> crcs; ///< CRC32C of each crc_chunk_size piece of the value
};

/// Where a record lies: its region and the store offset of its value.
struct record_place {
    std::uint32_t region = 0;
    std::uint64_t value_offset = 0;
};

/// The keys of one shard and where their newest records are. It knows regions only as numbers
/// (to list and evict what each holds); the region manager decides their life.
///
/// Contracts:
///  - publish() and adopt() keep, for each key, the record with the highest version: writes
///    complete out of order, and recovery meets every surviving version.
///  - A region's key list may name keys that moved on to a newer record elsewhere; evict() and
///    summary_entries() check each entry's region, so only records still current count.
class index {
public:
    explicit index(const region_geometry& g) : geo_(g), live_bytes_(g.count, 0), keys_(g.count) {}

    /// The live value for `key`, or nullptr on a miss (absent, deleted or expired).
    const index_entry* find(const std::string& key, std::uint64_t now_ms = 0) const;

    /// Publishes a written record. For a value: errc::exists when an if_absent record lost to a
    /// value published meanwhile; success (nothing changed) when a newer version is already
    /// present. For a tombstone: replaces the value (the tombstone stays until its region goes).
    result<void> publish(const std::string& key, const record_place& at, record_info&& info,
                         bool if_absent);
    /// Adds a recovered record if it is the newest version of its key.
    void adopt(std::string key, const record_place& at, record_info&& info);
    /// Forgets `version` of a value whose stored bytes failed their checksum (a miss from now
    /// on, unless a newer version replaced it meanwhile). True if it was forgotten.
    bool drop_corrupt(const std::string& key, std::uint64_t version);
    /// Drops every entry whose record lives in `region` (being reclaimed); returns how many.
    std::uint64_t evict(std::uint32_t region);
    /// The records of `region` the index still points at (tombstones included), ordered by
    /// their offset, for the region's summary.
    std::vector<summary_entry> summary_entries(std::uint32_t region) const;

    /// The highest version published or adopted.
    std::uint64_t max_version() const noexcept { return max_version_; }
    std::size_t size() const noexcept { return map_.size(); }
    std::uint64_t tombstones() const noexcept { return tombstones_; }
    std::uint64_t entries() const noexcept { return map_.size() - tombstones_; }
    /// Bytes of the records the index points at (headers and padded values).
    std::uint64_t used_bytes() const noexcept { return used_bytes_; }

private:
    /// Sets `e` from a record at `at` and lists the key in its region.
    void place(const std::string& key, index_entry& e, bool existed, const record_place& at,
               record_info&& info);
    std::uint64_t record_bytes(const index_entry& e) const noexcept {
        return meta_block + geo_.round_up(e.value_len);
    }
    void drop_bytes(const index_entry& e) noexcept;

    region_geometry geo_;
    std::unordered_map<std::string, index_entry> map_;
    std::vector<std::uint64_t> live_bytes_;      // per region
    std::vector<std::vector<std::string>> keys_; // per region: keys written there
    std::uint64_t used_bytes_ = 0;
    std::uint64_t tombstones_ = 0;
    std::uint64_t max_version_ = 0;
};

} // namespace memkv::storage
