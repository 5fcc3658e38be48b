// SPDX-License-Identifier: Apache-2.0
// The storage engine of one shard: regions, the DRAM index and FIFO region eviction.
#pragma once

#include <memkv/result.hpp>

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
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

/// What the index holds for one value. Full key bytes are the map key, so every hit compares
/// them in full.
struct index_entry {
    std::uint64_t device_offset = 0; ///< first byte of the value on the store
    std::uint64_t value_len = 0;
    std::uint64_t version = 0;       ///< per-shard, monotonic; newer writes win
    std::uint64_t expires_ms = 0;    ///< steady-clock deadline in ms, 0 = never
    std::uint32_t region = 0;
    bool pinned = false;
    std::string meta;                ///< up to limits::max_meta bytes
    std::vector<std::uint32_t> crcs; ///< CRC32C of each crc_chunk_size piece of the value
};

/// A reservation of store space for one PUT, from reserve() to commit() or abort().
struct put_ticket {
    std::string key;                 ///< index key
    std::uint64_t device_offset = 0;
    std::uint64_t value_len = 0;
    std::uint64_t version = 0;
    std::uint32_t region = 0;
    bool if_absent = false;
};

/// Counters of one shard's engine.
struct engine_stats {
    std::uint64_t entries = 0, used_bytes = 0, capacity_bytes = 0;
    std::uint64_t evicted_regions = 0, evicted_entries = 0, discarded_bytes = 0;
};

/// One shard's engine over a slice [base, base + length) of a store. It decides where values
/// go and keeps the index; the caller performs the store I/O. Not thread-safe: one shard owns it.
///
/// Contracts:
///  - reserve() pins the region it allocates from until commit() or abort(); get() callers pin
///    the entry's region with pin() for the duration of their reads. A pinned region is never
///    reclaimed, so bytes under an in-flight read or write are never reused.
///  - commit() publishes the entry only if its version is newer than the one present (writes
///    may complete out of order).
///  - When no region is free, the oldest sealed unpinned region is reclaimed (FIFO): its entries
///    are dropped from the index and `on_discard` is called for its byte range.
class engine {
public:
    struct config {
        std::uint64_t base = 0;                  ///< first byte of the slice (block aligned)
        std::uint64_t length = 0;                ///< bytes in the slice
        std::uint64_t region_size = 128ull << 20; ///< bytes per region (block multiple)
        std::uint32_t block_size = 4096;
        std::function<void(std::uint64_t offset, std::uint64_t length)> on_discard;
    };

    static result<engine> create(config cfg) {
        if (cfg.block_size == 0 || cfg.region_size == 0 || cfg.region_size % cfg.block_size ||
            cfg.base % cfg.block_size)
            return errc::invalid_argument;
        const auto n = cfg.length / cfg.region_size;
        if (n < 2) return errc::invalid_argument; // one open region plus one to reclaim into
        engine e;
        e.cfg_ = std::move(cfg);
        e.regions_.resize(n);
        for (std::uint32_t i = 0; i < n; ++i) e.free_.push_back(i);
        return e;
    }

    /// The largest value a region can hold.
    std::uint64_t max_value() const noexcept { return cfg_.region_size; }

    /// The live entry for `key`, or nullptr on a miss (absent or expired).
    const index_entry* find(const std::string& key, std::uint64_t now_ms = 0) const {
        auto it = index_.find(key);
        if (it == index_.end()) return nullptr;
        if (it->second.expires_ms != 0 && now_ms >= it->second.expires_ms) return nullptr;
        return &it->second;
    }

    /// Reserves space for a value. errc::exists for an if_absent put of a present key,
    /// errc::too_large if the value cannot fit in a region, errc::retry if every region is
    /// pinned.
    result<put_ticket> reserve(std::string key, std::uint64_t value_len, bool if_absent,
                               std::uint64_t now_ms = 0) {
        if (if_absent && find(key, now_ms)) return errc::exists;
        const std::uint64_t bytes = round_up(value_len);
        if (bytes > cfg_.region_size) return errc::too_large;
        if (!open_ || regions_[*open_].used + bytes > cfg_.region_size) MEMKV_TRY(open_region());
        auto& r = regions_[*open_];
        put_ticket t;
        t.key = std::move(key);
        t.region = *open_;
        t.device_offset = region_offset(*open_) + r.used;
        t.value_len = value_len;
        t.version = ++version_;
        t.if_absent = if_absent;
        r.used += bytes;
        ++r.pins;
        return t;
    }

    /// Publishes a written value. Returns errc::exists when an if_absent put lost to a value
    /// published meanwhile, and success when a newer version already present makes this one
    /// obsolete (the caller's write still "happened before" it).
    result<void> commit(put_ticket&& t, std::string meta, std::vector<std::uint32_t> crcs,
                        std::uint64_t expires_ms, bool pinned) {
        unpin(t.region);
        auto [it, inserted] = index_.try_emplace(t.key);
        auto& e = it->second;
        if (!inserted) {
            if (t.if_absent) return errc::exists;
            if (e.version > t.version) return {};
            drop_from_region(e);
        }
        e.device_offset = t.device_offset;
        e.value_len = t.value_len;
        e.version = t.version;
        e.region = t.region;
        e.expires_ms = expires_ms;
        e.pinned = pinned;
        e.meta = std::move(meta);
        e.crcs = std::move(crcs);
        auto& r = regions_[t.region];
        r.keys.push_back(t.key);
        r.live_bytes += round_up(t.value_len);
        used_bytes_ += round_up(t.value_len);
        return {};
    }

    /// Gives back a reservation whose write failed or was cancelled.
    void abort(put_ticket&& t) noexcept { unpin(t.region); }

    /// Removes `key`; errc::not_found if absent.
    result<void> erase(const std::string& key) {
        auto it = index_.find(key);
        if (it == index_.end()) return errc::not_found;
        drop_from_region(it->second);
        index_.erase(it);
        return {};
    }

    void pin(std::uint32_t region) noexcept { ++regions_[region].pins; }
    void unpin(std::uint32_t region) noexcept { --regions_[region].pins; }

    engine_stats stats() const noexcept {
        engine_stats s = stats_;
        s.entries = index_.size();
        s.used_bytes = used_bytes_;
        s.capacity_bytes = regions_.size() * cfg_.region_size;
        return s;
    }

private:
    struct region_state {
        std::uint64_t used = 0;       // bytes allocated (append pointer)
        std::uint64_t live_bytes = 0; // bytes of entries still indexed here
        std::uint32_t pins = 0;       // in-flight reads and writes
        std::vector<std::string> keys; // index keys written here (some may have moved on)
    };

    std::uint64_t round_up(std::uint64_t n) const noexcept {
        return (n + cfg_.block_size - 1) / cfg_.block_size * cfg_.block_size;
    }
    std::uint64_t region_offset(std::uint32_t r) const noexcept {
        return cfg_.base + std::uint64_t(r) * cfg_.region_size;
    }

    void drop_from_region(const index_entry& e) noexcept {
        auto& r = regions_[e.region];
        const auto b = round_up(e.value_len);
        r.live_bytes -= b;
        used_bytes_ -= b;
    }

    result<void> open_region() {
        if (open_) sealed_.push_back(*open_);
        open_.reset();
        if (free_.empty()) MEMKV_TRY(reclaim_one());
        open_ = free_.back();
        free_.pop_back();
        return {};
    }

    result<void> reclaim_one() {
        for (auto it = sealed_.begin(); it != sealed_.end(); ++it) {
            const auto id = *it;
            auto& r = regions_[id];
            if (r.pins != 0) continue;
            for (const auto& k : r.keys) {
                auto e = index_.find(k);
                if (e != index_.end() && e->second.region == id) {
                    drop_from_region(e->second);
                    index_.erase(e);
                    ++stats_.evicted_entries;
                }
            }
            r = region_state{};
            sealed_.erase(it);
            free_.push_back(id);
            ++stats_.evicted_regions;
            stats_.discarded_bytes += cfg_.region_size;
            if (cfg_.on_discard) cfg_.on_discard(region_offset(id), cfg_.region_size);
            return {};
        }
        return errc::retry;
    }

    config cfg_;
    std::vector<region_state> regions_;
    std::vector<std::uint32_t> free_;
    std::deque<std::uint32_t> sealed_; // oldest first
    std::optional<std::uint32_t> open_;
    std::unordered_map<std::string, index_entry> index_;
    std::uint64_t version_ = 0;
    std::uint64_t used_bytes_ = 0;
    engine_stats stats_;
};

} // namespace memkv::storage
