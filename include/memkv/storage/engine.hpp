// SPDX-License-Identifier: Apache-2.0
// The storage engine of one shard: regions, the DRAM index, recovery and FIFO region eviction.
#pragma once

#include <memkv/detail/log.hpp>
#include <memkv/result.hpp>
#include <memkv/storage/format.hpp>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <algorithm>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace memkv::storage {

/// Values are checksummed in chunks of this many bytes (the last chunk may be shorter), so that
/// range reads can be verified without reading the whole value.
inline constexpr std::uint32_t crc_chunk_size = 256u << 10;

/// Number of CRC chunks of a value of `len` bytes.
constexpr std::uint64_t crc_chunks(std::uint64_t len) noexcept {
    return (len + crc_chunk_size - 1) / crc_chunk_size;
}

/// The index key: tenant and key bytes; tenant names never contain '\0'.
inline std::string index_key(std::string_view tenant, std::span<const std::byte> key) {
    std::string k;
    k.reserve(tenant.size() + 1 + key.size());
    k.append(tenant);
    k.push_back('\0');
    k.append(reinterpret_cast<const char*>(key.data()), key.size());
    return k;
}

/// Wall-clock milliseconds (TTLs are stored on the drive, so they use the wall clock).
inline std::uint64_t unix_ms() noexcept {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
}

/// Synchronous metadata I/O on a shard's store, used when recovering and when opening,
/// sealing and reclaiming regions (rare: once per region). Buffers are aligned to the block size.
class meta_io {
public:
    virtual ~meta_io() = default;
    virtual result<void> read(std::uint64_t offset, std::span<std::byte> buf) = 0;
    virtual result<void> write(std::uint64_t offset, std::span<const std::byte> buf) = 0;
    virtual result<void> flush() = 0;
    virtual result<void> discard(std::uint64_t offset, std::uint64_t length) = 0;
};

/// An aligned heap buffer for metadata I/O.
class aligned_buffer {
public:
    explicit aligned_buffer(std::size_t n, std::size_t align = meta_block) : n_(n) {
        void* p = nullptr;
        if (::posix_memalign(&p, align, n ? n : align) != 0) std::abort();
        p_.reset(static_cast<std::byte*>(p));
        std::memset(p, 0, n);
    }
    std::byte* data() const noexcept { return p_.get(); }
    std::size_t size() const noexcept { return n_; }
    std::span<std::byte> span() const noexcept { return {p_.get(), n_}; }
    std::span<std::byte, meta_block> block(std::size_t at = 0) const noexcept {
        return std::span<std::byte, meta_block>(p_.get() + at, meta_block);
    }

private:
    struct free_deleter {
        void operator()(std::byte* p) const noexcept { std::free(p); }
    };
    std::unique_ptr<std::byte, free_deleter> p_;
    std::size_t n_;
};

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

/// A reservation of store space for one record (value or tombstone), from reserve() to commit()
/// or abort(). The caller writes the value at value_offset, then the header block built by
/// header_block() at header_offset, and commits when both writes completed.
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
};

/// What recovery found.
struct recovery_stats {
    std::uint64_t entries = 0, tombstones = 0, corrupt_records = 0;
    std::uint64_t regions_summarised = 0, regions_scanned = 0;
    double seconds = 0;
};

/// One shard's engine over a window [base, base + length) of its store, cut into regions. It
/// decides where records go, keeps the index, writes the region metadata (headers, summaries,
/// trailers) through meta_io, and rebuilds everything at start. The caller performs the
/// record I/O. Not thread-safe: one shard owns it.
///
/// Contracts:
///  - reserve() pins the region it allocates from until commit() or abort(); readers pin the
///    entry's region with pin() for the duration of their reads. A pinned region is never
///    reclaimed, so bytes under an in-flight read or write are never reused.
///  - commit() publishes only if the record's version is newer than the key's current one
///    (writes complete out of order).
///  - Eviction is strictly FIFO: the oldest sealed region is reclaimed; if it is pinned, reserve()
///    answers errc::retry rather than skip it. Strict order is what makes a tombstone dead by the
///    time its region goes: every older version of its key lived in an older region, reclaimed
///    before it. So tombstones are never carried forward.
///  - A reclaimed region's header is rewritten `free` (new generation) and flushed before its
///    range is discarded, so no record of an evicted region can come back after a crash, whether
///    or not the discard zeroes anything.
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
        meta_io* io = nullptr; ///< borrowed; outlives the engine
    };

    static result<engine> create(config cfg) {
        if (cfg.block_size == 0 || cfg.block_size > meta_block || meta_block % cfg.block_size ||
            cfg.region_size % meta_block || cfg.base % cfg.block_size || !cfg.io)
            return errc::invalid_argument;
        const auto n = cfg.length / cfg.region_size;
        if (n < 2) return errc::invalid_argument; // one open region plus one to reclaim into
        if (cfg.region_size < 3 * meta_block + cfg.max_value) return errc::invalid_argument;
        engine e;
        e.cfg_ = cfg;
        e.regions_.resize(n);
        for (std::uint32_t i = 0; i < n; ++i)
            e.free_.push_back(i);
        return e;
    }

    /// The largest value a record can hold.
    std::uint64_t max_value() const noexcept { return cfg_.max_value; }

    // ---- recovery ---------------------------------------------------------------------------

    /// Rebuilds the index from the drive: region headers, then each sealed region's summary
    /// (or a scan of its records when it has none or it fails its checksum). Never fails over a
    /// bad record: damaged records are counted and skipped. Fails only on I/O errors.
    result<recovery_stats> recover() {
        const auto t0 = std::chrono::steady_clock::now();
        recovery_stats rs;
        free_.clear();
        std::vector<std::pair<std::uint64_t, std::uint32_t>> order; // (seq, region)
        aligned_buffer blk(meta_block);
        for (std::uint32_t i = 0; i < regions_.size(); ++i) {
            auto& r = regions_[i];
            r = region_slot{};
            MEMKV_TRY(cfg_.io->read(region_offset(i), blk.span()));
            region_header h;
            if (!decode_region_header(blk.block(), cfg_.seed, h) || h.shard != cfg_.shard ||
                h.region != i) {
                free_.push_back(i);
                continue;
            }
            r.generation = h.generation;
            r.seq = h.seq;
            next_seq_ = std::max(next_seq_, h.seq + 1);
            if (h.state == region_state::free) {
                free_.push_back(i);
                continue;
            }
            MEMKV_TRY(load_region(i, rs));
            order.emplace_back(h.seq, i);
        }
        std::sort(order.begin(), order.end());
        for (auto& [seq, i] : order) {
            regions_[i].sealed = true; // recovered regions take no new records
            sealed_.push_back(i);
        }
        rs.tombstones = tombstones_;
        rs.entries = index_.size() - tombstones_;
        stats_.corrupt_records += rs.corrupt_records;
        // Versions of records a killed process had in flight were not recovered but may still
        // land on the drive: never hand those numbers out again.
        version_ += version_gap;
        rs.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return rs;
    }

    // ---- lookups ----------------------------------------------------------------------------

    /// The live value for `key`, or nullptr on a miss (absent, deleted or expired).
    const index_entry* find(const std::string& key, std::uint64_t now_ms = 0) const {
        auto it = index_.find(key);
        if (it == index_.end() || it->second.tombstone) return nullptr;
        if (it->second.expires_ms != 0 && now_ms >= it->second.expires_ms) return nullptr;
        return &it->second;
    }

    // ---- writes -----------------------------------------------------------------------------

    /// Reserves space for a value record. errc::exists for an if_absent put of a present key,
    /// errc::too_large if the value exceeds the cap, errc::retry if the oldest region is pinned.
    result<put_ticket> reserve(std::string key, std::uint64_t value_len, bool if_absent,
                               std::size_t header_bytes, std::uint64_t now_ms = 0) {
        if (if_absent && find(key, now_ms)) return errc::exists;
        if (value_len > cfg_.max_value) return errc::too_large;
        if (header_bytes > meta_block) return errc::too_large;
        return allocate(std::move(key), value_len, header_bytes, if_absent, false);
    }

    /// Reserves space for a tombstone of `key`; errc::not_found if the key has no live value.
    result<put_ticket> reserve_tombstone(std::string key, std::size_t header_bytes,
                                         std::uint64_t now_ms = 0) {
        if (!find(key, now_ms)) return errc::not_found;
        return allocate(std::move(key), 0, header_bytes, false, true);
    }

    /// The header block of a record (to be written at t.header_offset).
    void header_block(const put_ticket& t, const record_info& info,
                      std::span<std::byte, meta_block> out) const {
        encode_record_header(info, t.header_offset, t.generation, cfg_.seed, out);
    }

    /// Publishes a written record. For a value: errc::exists when an if_absent put lost to a
    /// value published meanwhile; success when a newer version already present makes this one
    /// obsolete. For a tombstone: removes the value (keeps the tombstone).
    result<void> commit(put_ticket&& t, record_info&& info) {
        unpin(t.region);
        struct finish_write {
            engine& e;
            std::uint32_t region;
            ~finish_write() { e.writer_done(region); }
        } done{*this, t.region}; // runs after the entry is published
        auto [it, inserted] = index_.try_emplace(t.key);
        auto& e = it->second;
        if (!inserted) {
            if (t.if_absent && !e.tombstone) return errc::exists;
            if (e.version > t.version) return {};
            drop_bytes(e);
        }
        e.device_offset = t.value_offset;
        e.value_len = t.value_len;
        e.version = t.version;
        e.region = t.region;
        e.expires_ms = info.expires_unix_ms;
        e.pinned = (info.flags & record_flags::pinned) != 0;
        set_tombstone(e, !inserted, t.tombstone);
        e.meta = std::move(info.meta);
        e.crcs = std::move(info.crcs);
        auto& r = regions_[t.region];
        r.keys.push_back(t.key);
        r.live_bytes += record_bytes(e);
        used_bytes_ += record_bytes(e);
        return {};
    }

    /// Gives back a reservation whose write failed or was cancelled.
    void abort(put_ticket&& t) noexcept {
        unpin(t.region);
        writer_done(t.region);
    }

    /// Forgets version `version` of a value whose stored bytes failed their checksum: it becomes
    /// a miss (unless a newer version replaced it meanwhile).
    void drop_corrupt(const std::string& key, std::uint64_t version) {
        auto it = index_.find(key);
        if (it == index_.end() || it->second.version != version) return;
        drop_bytes(it->second);
        index_.erase(it);
        ++stats_.corrupt_records;
    }

    void pin(std::uint32_t region) noexcept { ++regions_[region].pins; }
    void unpin(std::uint32_t region) noexcept { --regions_[region].pins; }

    /// Seals the open region (writes its summary), and writes the summaries that regions
    /// recovered by a scan lack: at shutdown, so that the next start reads summaries instead
    /// of scanning (and checking every value of) those regions again.
    result<void> seal_open_region() {
        for (auto id : sealed_)
            if (regions_[id].unsummarised && regions_[id].writers == 0) {
                // Best effort: without its summary the region is scanned again next time.
                if (auto r = seal(id); !r)
                    detail::log_warn("region {}: writing its summary failed: {}", id,
                                     r.error().message());
                regions_[id].unsummarised = false;
            }
        if (open_) {
            MEMKV_TRY(close_region(*open_));
            sealed_.push_back(*open_);
            open_.reset();
        }
        return cfg_.io->flush();
    }

    engine_stats stats() const noexcept {
        engine_stats s = stats_;
        s.tombstones = tombstones_;
        s.entries = index_.size() - tombstones_;
        s.used_bytes = used_bytes_;
        s.capacity_bytes = regions_.size() * cfg_.region_size;
        return s;
    }

    /// The number of entries (values and tombstones) without walking the index.
    std::size_t index_size() const noexcept { return index_.size(); }

private:
    struct region_slot {
        std::uint64_t used = 0;          // append pointer (from region start)
        std::uint64_t summary_bytes = 0; // bytes the summary will need
        std::uint64_t live_bytes = 0;
        std::uint64_t generation = 0;
        std::uint64_t seq = 0;
        std::uint32_t pins = 0;    // in-flight reads and writes
        std::uint32_t writers = 0; // reservations not yet committed or aborted
        bool seal_pending = false; // full; summary written once writers == 0
        bool sealed = false;
        bool unsummarised = false;     // recovered by a scan: summarised at the next clean shutdown
        std::vector<std::string> keys; // index keys written here (some may have moved on)
    };

    std::uint64_t round_up(std::uint64_t n) const noexcept {
        return (n + cfg_.block_size - 1) / cfg_.block_size * cfg_.block_size;
    }
    std::uint64_t region_offset(std::uint32_t r) const noexcept {
        return cfg_.base + std::uint64_t(r) * cfg_.region_size;
    }
    std::uint64_t record_bytes(const index_entry& e) const noexcept {
        return meta_block + round_up(e.value_len);
    }
    /// Sets an entry's tombstone flag, keeping the count (`existed`: the entry was there before).
    void set_tombstone(index_entry& e, bool existed, bool tombstone) noexcept {
        if (existed && e.tombstone) --tombstones_;
        e.tombstone = tombstone;
        if (tombstone) ++tombstones_;
    }

    void drop_bytes(const index_entry& e) noexcept {
        const auto b = record_bytes(e);
        regions_[e.region].live_bytes -= b;
        used_bytes_ -= b;
    }

    /// Room a record needs in a region: its blocks, its summary entry, and the trailer block.
    bool fits(const region_slot& r, std::uint64_t bytes, std::size_t header_bytes) const {
        const auto summary = round_up(r.summary_bytes + 12 + header_bytes + 32);
        return r.used + bytes + summary + meta_block <= cfg_.region_size;
    }

    result<put_ticket> allocate(std::string key, std::uint64_t value_len, std::size_t header_bytes,
                                bool if_absent, bool tombstone) {
        const std::uint64_t bytes = meta_block + round_up(value_len);
        if (!open_ || !fits(regions_[*open_], bytes, header_bytes)) MEMKV_TRY(open_region());
        auto& r = regions_[*open_];
        if (!fits(r, bytes, header_bytes)) return errc::too_large;
        put_ticket t;
        t.key = std::move(key);
        t.region = *open_;
        t.header_offset = region_offset(*open_) + r.used;
        t.value_offset = t.header_offset + meta_block;
        t.value_len = value_len;
        t.version = ++version_;
        t.generation = r.generation;
        t.if_absent = if_absent;
        t.tombstone = tombstone;
        r.used += bytes;
        r.summary_bytes += 12 + header_bytes;
        ++r.pins;
        ++r.writers;
        return t;
    }

    /// Seals the open region and opens a free one (reclaiming the oldest if none is free). The
    /// new region's header is flushed before any record goes into it.
    result<void> open_region() {
        if (open_) {
            MEMKV_TRY(close_region(*open_));
            sealed_.push_back(*open_);
            open_.reset();
        }
        if (free_.empty()) MEMKV_TRY(reclaim_oldest());
        const auto id = free_.back();
        auto& r = regions_[id];
        region_header h{region_state::open, cfg_.shard, id, fresh_generation(), next_seq_++};
        aligned_buffer blk(meta_block);
        encode_region_header(h, cfg_.seed, blk.block());
        MEMKV_TRY(cfg_.io->write(region_offset(id), blk.span()));
        MEMKV_TRY(cfg_.io->flush());
        free_.pop_back();
        const auto gen = h.generation;
        r = region_slot{};
        r.generation = gen;
        r.seq = h.seq;
        r.used = meta_block;
        open_ = id;
        return {};
    }

    /// Closes a full region to new records. Its summary lists only published records, so it
    /// is written once every reservation in the region is committed or aborted: a record still
    /// being written when the region filled would otherwise be acknowledged later and missing
    /// from the summary, lost at the next start.
    result<void> close_region(std::uint32_t id) {
        auto& r = regions_[id];
        r.sealed = true;
        if (r.writers != 0) {
            r.seal_pending = true;
            return {};
        }
        return seal(id);
    }

    void writer_done(std::uint32_t id) noexcept {
        auto& r = regions_[id];
        --r.writers;
        if (r.writers == 0 && r.seal_pending) {
            r.seal_pending = false;
            // Without a summary the region is scanned at the next start: nothing is lost.
            if (auto sr = seal(id); !sr)
                detail::log_warn("region {}: writing its summary failed: {}", id,
                                 sr.error().message());
        }
    }

    /// Writes the summary of region `id` (the records the index still points at, tombstones
    /// included) and the trailer that finds it.
    result<void> seal(std::uint32_t id) {
        auto& r = regions_[id];
        r.sealed = true;
        std::vector<summary_entry> entries;
        for (const auto& k : r.keys) {
            auto it = index_.find(k);
            if (it == index_.end() || it->second.region != id) continue;
            const auto& e = it->second;
            summary_entry s;
            s.region_offset = e.device_offset - meta_block - region_offset(id);
            s.info = info_of(k, e);
            entries.push_back(std::move(s));
        }
        // The same key may appear twice in r.keys (overwritten in this region): keep one.
        std::sort(entries.begin(), entries.end(),
                  [](const auto& a, const auto& b) { return a.region_offset < b.region_offset; });
        entries.erase(std::unique(entries.begin(), entries.end(),
                                  [](const auto& a, const auto& b) {
                                      return a.region_offset == b.region_offset;
                                  }),
                      entries.end());
        const auto bytes = encode_summary(entries, r.generation, cfg_.seed);
        const auto len = round_up(bytes.size());
        const auto trailer_at = cfg_.region_size - meta_block;
        if (r.used + len > trailer_at) return {}; // no room: recovery will scan this region
        aligned_buffer buf(len);
        std::memcpy(buf.data(), bytes.data(), bytes.size());
        // The records first: a summary that outlived them in a power cut would name values
        // that are not there, and summarised records are not checked again at recovery.
        MEMKV_TRY(cfg_.io->flush());
        MEMKV_TRY(cfg_.io->write(region_offset(id) + r.used, buf.span()));
        aligned_buffer blk(meta_block);
        encode_trailer({r.generation, r.used, bytes.size()}, cfg_.seed, blk.block());
        return cfg_.io->write(region_offset(id) + trailer_at, blk.span());
    }

    /// A random generation: records of any earlier use of a region (whose header may since have
    /// been damaged or trimmed) match it with probability 2^-64.
    static std::uint64_t fresh_generation() {
        std::random_device rd;
        return (std::uint64_t(rd()) << 32) ^ rd() ^ (std::uint64_t(rd()) << 16);
    }

    static record_info info_of(const std::string& index_key_bytes, const index_entry& e) {
        record_info i;
        const auto sep = index_key_bytes.find('\0');
        i.tenant = index_key_bytes.substr(0, sep);
        i.key = index_key_bytes.substr(sep + 1);
        i.flags = static_cast<std::uint16_t>((e.tombstone ? record_flags::tombstone : 0) |
                                             (e.pinned ? record_flags::pinned : 0));
        i.version = e.version;
        i.value_len = e.value_len;
        i.expires_unix_ms = e.expires_ms;
        i.meta = e.meta;
        i.crcs = e.crcs;
        return i;
    }

    /// Reclaims the oldest sealed region: drops its entries, rewrites its header as free with a
    /// new generation, flushes, then discards its range (when trimming).
    result<void> reclaim_oldest() {
        if (sealed_.empty()) return errc::retry;
        const auto id = sealed_.front();
        auto& r = regions_[id];
        if (r.pins != 0) return errc::retry;
        for (const auto& k : r.keys) {
            auto e = index_.find(k);
            if (e != index_.end() && e->second.region == id) {
                drop_bytes(e->second);
                if (e->second.tombstone) --tombstones_;
                index_.erase(e);
                ++stats_.evicted_entries;
            }
        }
        region_header h{region_state::free, cfg_.shard, id, fresh_generation(), r.seq};
        aligned_buffer blk(meta_block);
        encode_region_header(h, cfg_.seed, blk.block());
        MEMKV_TRY(cfg_.io->write(region_offset(id), blk.span()));
        MEMKV_TRY(cfg_.io->flush());
        // The header block stays; discard the rest (TRIM / punch hole).
        if (cfg_.trim)
            MEMKV_TRY(
                cfg_.io->discard(region_offset(id) + meta_block, cfg_.region_size - meta_block));
        const auto gen = h.generation;
        r = region_slot{};
        r.generation = gen;
        sealed_.pop_front();
        free_.push_back(id);
        ++stats_.evicted_regions;
        if (cfg_.trim) stats_.discarded_bytes += cfg_.region_size - meta_block;
        return {};
    }

    /// Loads one region's records: from its summary if the trailer and summary check out, else
    /// by scanning its blocks.
    result<void> load_region(std::uint32_t id, recovery_stats& rs) {
        auto& r = regions_[id];
        aligned_buffer blk(meta_block);
        MEMKV_TRY(cfg_.io->read(region_offset(id) + cfg_.region_size - meta_block, blk.span()));
        region_trailer t;
        if (decode_trailer(blk.block(), cfg_.seed, t) && t.generation == r.generation &&
            t.summary_offset >= meta_block && t.summary_len > 0 &&
            t.summary_offset + t.summary_len <= cfg_.region_size - meta_block) {
            aligned_buffer sum(round_up(t.summary_len));
            MEMKV_TRY(cfg_.io->read(region_offset(id) + t.summary_offset, sum.span()));
            std::vector<summary_entry> entries;
            if (decode_summary({sum.data(), t.summary_len}, r.generation, cfg_.seed, cfg_.max_value,
                               entries)) {
                for (auto& e : entries) {
                    // A summary entry must describe a record inside the region's used part.
                    const auto end = e.region_offset + meta_block + round_up(e.info.value_len);
                    if (e.region_offset < meta_block || e.region_offset % meta_block ||
                        end > t.summary_offset) {
                        ++rs.corrupt_records;
                        continue;
                    }
                    adopt(id, e.region_offset, std::move(e.info));
                }
                r.used = t.summary_offset;
                ++rs.regions_summarised;
                return {};
            }
            ++rs.corrupt_records; // a damaged summary; the scan below still finds the records
        }
        ++rs.regions_scanned;
        // No summary is written now: writes of a killed process may still be landing in this
        // region's tail (io_uring requests outlive their process), and a summary there could
        // meet them. It is written at the next clean shutdown (seal_open_region).
        r.unsummarised = true;
        return scan_region(id, rs);
    }

    /// Walks a region block by block from its first record: a valid header (right location and
    /// generation, keyed checksum) whose value matches its chunk CRCs is a record and the walk
    /// jumps over its value; anything else moves one block on. Torn and stale records are
    /// skipped and the walk keeps going. Values are checked because a put writes its header
    /// beside its value, not after it: a header may have landed without its value.
    result<void> scan_region(std::uint32_t id, recovery_stats& rs) {
        auto& r = regions_[id];
        constexpr std::uint64_t window = 1u << 20;
        aligned_buffer buf(window);
        const std::uint64_t end = cfg_.region_size - meta_block;
        std::uint64_t pos = meta_block, buf_start = 0, buf_len = 0, last_end = meta_block;
        while (pos + meta_block <= end) {
            if (pos < buf_start || pos + meta_block > buf_start + buf_len) {
                buf_start = pos;
                buf_len = std::min<std::uint64_t>(window, end - pos);
                MEMKV_TRY(cfg_.io->read(region_offset(id) + buf_start, {buf.data(), buf_len}));
            }
            std::span<const std::byte, meta_block> b(buf.data() + (pos - buf_start), meta_block);
            record_info info;
            const auto loc = region_offset(id) + pos;
            const auto c =
                decode_record_header(b, loc, r.generation, cfg_.seed, cfg_.max_value, info);
            if (c == header_check::valid) {
                const auto next = pos + meta_block + round_up(info.value_len);
                if (next > end) {
                    ++rs.corrupt_records;
                    pos += meta_block;
                    continue;
                }
                auto intact = value_intact(id, pos + meta_block, info, buf, buf_start, buf_len);
                if (!intact) return intact.error();
                if (!*intact) {
                    ++rs.corrupt_records; // the value never landed, or was damaged since
                    pos = next;
                    continue;
                }
                adopt(id, pos, std::move(info));
                pos = next;
                last_end = pos;
                continue;
            }
            if (c == header_check::corrupt) ++rs.corrupt_records;
            pos += meta_block;
        }
        r.used = last_end;
        return {};
    }

    /// True when the value at region offset `pos` matches the record's chunk CRCs. Reads
    /// through the scan's window (`win` holds region bytes [win_start, win_start + win_len)) and
    /// leaves it covering the value's end, where the walk goes on.
    result<bool> value_intact(std::uint32_t id, std::uint64_t pos, const record_info& info,
                              aligned_buffer& win, std::uint64_t& win_start,
                              std::uint64_t& win_len) {
        if (info.crcs.size() != crc_chunks(info.value_len)) return false;
        const std::uint64_t end = cfg_.region_size - meta_block;
        for (std::uint64_t done = 0, chunk = 0; done < info.value_len; ++chunk) {
            const auto n = std::min<std::uint64_t>(crc_chunk_size, info.value_len - done);
            const auto at = pos + done;
            if (at < win_start || at + n > win_start + win_len) {
                win_start = at / meta_block * meta_block;
                win_len = std::min<std::uint64_t>(win.size(), end - win_start);
                MEMKV_TRY(cfg_.io->read(region_offset(id) + win_start, {win.data(), win_len}));
            }
            if (crc32c(win.data() + (at - win_start), n) != info.crcs[chunk]) return false;
            done += n;
        }
        return true;
    }

    /// Adds a recovered record to the index if it is the newest version of its key.
    void adopt(std::uint32_t region, std::uint64_t region_off, record_info&& info) {
        std::string key = info.tenant;
        key.push_back('\0');
        key += info.key;
        version_ = std::max(version_, info.version);
        auto [it, inserted] = index_.try_emplace(key);
        auto& e = it->second;
        if (!inserted) {
            if (e.version >= info.version) return;
            drop_bytes(e);
        }
        e.device_offset = region_offset(region) + region_off + meta_block;
        e.value_len = info.value_len;
        e.version = info.version;
        e.region = region;
        e.expires_ms = info.expires_unix_ms;
        e.pinned = (info.flags & record_flags::pinned) != 0;
        set_tombstone(e, !inserted, (info.flags & record_flags::tombstone) != 0);
        e.meta = std::move(info.meta);
        e.crcs = std::move(info.crcs);
        auto& r = regions_[region];
        r.keys.push_back(std::move(key));
        r.live_bytes += record_bytes(e);
        used_bytes_ += record_bytes(e);
    }

    static constexpr std::uint64_t version_gap = 1ull << 32; // per restart

    config cfg_;
    std::vector<region_slot> regions_;
    std::vector<std::uint32_t> free_;
    std::deque<std::uint32_t> sealed_; // oldest first
    std::optional<std::uint32_t> open_;
    std::unordered_map<std::string, index_entry> index_;
    std::uint64_t version_ = 0;
    std::uint64_t next_seq_ = 1;
    std::uint64_t used_bytes_ = 0;
    std::uint64_t tombstones_ = 0; // entries of the index that are tombstones
    engine_stats stats_;
};

} // namespace memkv::storage
