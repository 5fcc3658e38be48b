// SPDX-License-Identifier: Apache-2.0
// storage::engine: the storage engine of one shard, a facade over its index, region manager and
// recovery (CacheLib Navy's BlockCache over Index and RegionManager).
#pragma once

#include <memkv/result.hpp>
#include <memkv/storage/aligned_buffer.hpp>
#include <memkv/storage/format.hpp>
#include <memkv/storage/index.hpp>
#include <memkv/storage/meta_io.hpp>
#include <memkv/storage/record_layout.hpp>
#include <memkv/storage/recovery.hpp>
#include <memkv/storage/region_manager.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

namespace memkv::storage {

/// A reservation of store space for one record (value or tombstone), from reserve() to commit()
/// or abort(). The caller writes the value at value_offset and the header block built by
/// header_block() at header_offset, and commits when both writes completed and readiness() is
/// `ready`.
struct put_ticket {
    std::string key; ///< index key (tenant '\0' key)
    std::uint64_t header_offset = 0;
    std::uint64_t value_offset = 0;
    std::uint64_t value_len = 0;
    std::uint64_t version = 0;
    std::uint64_t generation = 0;
    std::uint32_t region = 0;
    bool if_absent = false;
    bool tombstone = false;
};

/// Counters of one shard's engine.
struct engine_stats {
    std::uint64_t entries = 0, tombstones = 0, used_bytes = 0, capacity_bytes = 0;
    std::uint64_t evicted_regions = 0, evicted_entries = 0, discarded_bytes = 0;
    std::uint64_t corrupt_records = 0; ///< found by recovery or by a failed read checksum
    std::uint64_t metadata_errors = 0; ///< region metadata I/O that failed
};

/// One shard's engine over a window [base, base + length) of its store, cut into regions. It
/// decides where records go, keeps the index, drives the region metadata (headers, summaries,
/// trailers) through a meta_submitter without waiting, and rebuilds everything at start. The
/// caller performs the record I/O. Not thread-safe: one shard owns it. Contracts of its parts:
/// index (versions), region_manager (pins, readiness, FIFO eviction, clean regions ahead),
/// recover_regions (what survives).
class engine {
public:
    struct config {
        std::uint64_t base = 0;                   ///< first byte of the window (block aligned)
        std::uint64_t length = 0;                 ///< bytes in the window
        std::uint64_t region_size = 128ull << 20; ///< bytes per region (block multiple)
        std::uint32_t block_size = 4096;
        std::uint32_t shard = 0;
        std::uint64_t seed = 0; ///< superblock.record_seed
        std::uint64_t max_value = 64ull << 20;
        /// Discard (TRIM / punch hole) a region's range when it is reclaimed. Off: the bytes
        /// stay until overwritten (stale records are rejected by their generation either way).
        bool trim = true;
        meta_submitter* io = nullptr; ///< borrowed; outlives the engine
    };

    static result<engine> create(const config& cfg);
    engine(engine&&) noexcept;
    engine& operator=(engine&&) noexcept;
    ~engine();

    /// The largest value a record can hold.
    std::uint64_t max_value() const noexcept;

    /// Rebuilds the index and the region table from the store (recover_regions), then never
    /// hands out a version a killed process may have used.
    result<recovery_stats> recover(meta_reader& io);

    /// The live value for `key`, or nullptr on a miss (absent, deleted or expired).
    const index_entry* find(const std::string& key, std::uint64_t now_ms = 0) const;

    /// Reserves space for a value record. errc::exists for an if_absent put of a present key,
    /// errc::too_large if the value exceeds the cap, errc::retry when no space can be made now;
    /// nullopt when space is being made: reserve again after on_meta_io().
    result<std::optional<put_ticket>> reserve(std::string key, std::uint64_t value_len,
                                              bool if_absent, std::size_t header_bytes,
                                              std::uint64_t now_ms = 0);
    /// Reserves space for a tombstone of `key`; errc::not_found if the key has no live value;
    /// otherwise as reserve().
    result<std::optional<put_ticket>> reserve_tombstone(std::string key, std::size_t header_bytes,
                                                        std::uint64_t now_ms = 0);
    /// The header block of a record (to be written at t.header_offset).
    void header_block(const put_ticket& t, const record_info& info,
                      std::span<std::byte, meta_block> out) const;
    /// Whether a written record of `t` may be flushed, committed and acknowledged yet.
    region_readiness readiness(const put_ticket& t) const noexcept;
    /// Publishes a written record (index::publish) and ends its reservation.
    result<void> commit(put_ticket&& t, record_info&& info);
    /// Gives back a reservation whose write failed or was cancelled.
    void abort(put_ticket&& t) noexcept;
    /// A value whose stored bytes failed their checksum becomes a miss (index::drop_corrupt).
    void drop_corrupt(const std::string& key, std::uint64_t version);
    void pin(std::uint32_t region) noexcept;
    void unpin(std::uint32_t region) noexcept;

    /// Completion of metadata I/O the engine submitted (meta_submitter contract 1).
    void on_meta_io(std::uint64_t token, std::int64_t res);
    /// Shutdown: seals the open region and writes the summaries that regions recovered by a
    /// scan lack, then flushes; so that the next start reads summaries instead of scanning
    /// (and checking every value of) those regions again. Drive on_meta_io() until
    /// !meta_busy().
    void seal_all();
    /// Metadata I/O in flight.
    bool meta_busy() const noexcept;

    engine_stats stats() const noexcept;
    /// Reservations not yet committed or aborted in `region`, and its pins (for tests).
    std::uint32_t writers(std::uint32_t region) const noexcept;
    std::uint32_t pins(std::uint32_t region) const noexcept;

private:
    struct parts;
    explicit engine(std::unique_ptr<parts> p) noexcept;
    result<std::optional<put_ticket>> allocate(std::string key, std::uint64_t value_len,
                                               std::size_t header_bytes, bool if_absent,
                                               bool tombstone);
    std::unique_ptr<parts> p_;
};

} // namespace memkv::storage
