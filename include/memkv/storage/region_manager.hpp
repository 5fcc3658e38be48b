// SPDX-License-Identifier: Apache-2.0
// region_manager: the life of one shard's regions (clean pool, the open region, the sealed FIFO)
// and the asynchronous metadata I/O that opens, seals and reclaims them.
#pragma once

#include <memkv/result.hpp>
#include <memkv/storage/aligned_buffer.hpp>
#include <memkv/storage/format.hpp>
#include <memkv/storage/meta_io.hpp>
#include <memkv/storage/region_geometry.hpp>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

namespace memkv::storage {

/// Room reserved for one record in the open region.
struct allocation {
    std::uint32_t region = 0;
    std::uint64_t header_offset = 0; ///< store offset of the record's header block
    std::uint64_t generation = 0;    ///< of the region, for the record header
};

/// Whether the records of a region may be acknowledged.
enum class region_readiness : std::uint8_t {
    ready,   ///< its open header is on the store
    pending, ///< its open header is being written
    failed,  ///< its open header could not be written: its records fail
};

/// A region found in use by recovery.
struct recovered_region {
    std::uint32_t id = 0;
    std::uint64_t generation = 0, seq = 0;
    std::uint64_t used = 0;  ///< end of its last record (from the region start)
    bool summarised = false; ///< its records came from its summary (else it was scanned)
};

/// Counters of the region manager.
struct region_stats {
    std::uint64_t evicted_regions = 0, evicted_entries = 0, discarded_bytes = 0;
    std::uint64_t metadata_errors = 0; ///< metadata writes, flushes or discards that failed
};

/// Decides which region takes the next record and drives every region through its life:
/// clean -> open -> full -> sealing -> sealed -> reclaiming -> clean. Every metadata write,
/// flush and discard goes through a meta_submitter and advances on its completion (on_io()):
/// nothing here waits for the store.
///
/// Contracts:
///  - allocate() pins the region it allocates from and counts a writer until release(); reads
///    pin with pin()/unpin(). A pinned region, or one with writers, is never reclaimed, so bytes
///    under an in-flight read or write are never reused.
///  - A record may be acknowledged only once readiness() of its region is `ready`: the region's
///    open header (fresh generation) completed before it. A durable record's flush, submitted
///    after that, covers the header too.
///  - A full region is sealed (flush, then summary, then trailer) once its last writer is done,
///    so that its summary lists every record acknowledged in it.
///  - Eviction is FIFO: only the oldest sealed region is reclaimed. It is dropped from the index
///    first (the evict callback), its header rewritten `free` with a new generation and flushed,
///    and only then discarded (when trimming) and made clean: no record of it can come back
///    after a crash, whether or not the discard zeroes anything, and no discard can hit a region
///    in use again.
///  - One clean region is kept ahead: a reclaim starts once the open region is half full and no
///    clean region is left, so that the region after it is ready when it fills.
///  - allocate() answers nullopt ("wait") when no clean region is left but one is on its way
///    (a reclaim or the seal before it in flight), errc::retry when none can be made by I/O
///    alone (the oldest region is pinned or still written by requests in progress) or when a
///    reclaim failed a moment ago (retried after a back-off: a failing device does not spin).
class region_manager {
public:
    struct config {
        region_geometry geo;
        std::uint32_t shard = 0;
        std::uint64_t seed = 0;
        bool trim = true; ///< discard reclaimed regions
    };
    /// The index side (Navy's RegionEvictCallback): drop what a region holds (returns the
    /// entries dropped), and list what it holds for its summary.
    using evict_fn = std::function<std::uint64_t(std::uint32_t)>;
    using summary_fn = std::function<std::vector<summary_entry>(std::uint32_t)>;

    region_manager(const config& cfg, meta_submitter& io, evict_fn evict, summary_fn summary);

    /// After recovery: `in_use` (oldest first) are sealed; every other region is clean.
    void restore(std::span<const recovered_region> in_use, std::uint64_t next_seq);

    /// Room for a record of `bytes` (header block and padded value) whose summary entry takes
    /// `summary_bytes`, in the open region or in a clean one opened for it. See the class
    /// comment for nullopt and errc::retry; errc::too_large when it cannot fit any region.
    result<std::optional<allocation>> allocate(std::uint64_t bytes, std::size_t summary_bytes);
    /// Ends an allocation (its record committed or aborted).
    void release(std::uint32_t region);
    void pin(std::uint32_t region) noexcept { ++slots_[region].pins; }
    void unpin(std::uint32_t region) noexcept;
    region_readiness readiness(std::uint32_t region) const noexcept;

    /// Completion of the metadata I/O submitted under `token`.
    void on_io(std::uint64_t token, std::int64_t res);
    /// Shutdown: closes the open region and seals every region that lacks a summary, then
    /// flushes. busy() stays true until all of it completed.
    void seal_all();
    /// Metadata I/O in flight or due (a full region waiting for its writers counts).
    bool busy() const noexcept;

    const region_stats& stats() const noexcept { return stats_; }
    std::uint32_t writers(std::uint32_t region) const noexcept { return slots_[region].writers; }
    std::uint32_t pins(std::uint32_t region) const noexcept { return slots_[region].pins; }
    std::uint64_t capacity_bytes() const noexcept {
        return std::uint64_t(cfg_.geo.count) * cfg_.geo.region_size;
    }

private:
    enum class phase : std::uint8_t { clean, open, full, sealing, sealed, reclaiming };
    enum class step : std::uint8_t {
        none,
        open_header,
        seal_flush,
        seal_summary,
        seal_trailer,
        free_header,
        free_flush,
        discard,
    };
    struct slot {
        std::uint64_t used = 0;          // append pointer (from region start)
        std::uint64_t summary_bytes = 0; // bytes its summary will need
        std::uint64_t generation = 0;
        std::uint64_t seq = 0;
        std::uint32_t pins = 0, writers = 0;
        phase ph = phase::clean;
        step io = step::none;
        bool header_ready = false, header_failed = false;
        bool unsummarised = false; // no summary on the store: written at shutdown (seal_all)
        std::unique_ptr<aligned_buffer> buf; // metadata being written
        std::uint64_t summary_at = 0, summary_len = 0;
    };
    static constexpr std::uint64_t final_flush_token = ~0ull;

    bool fits(const slot& r, std::uint64_t bytes, std::size_t summary_bytes) const noexcept;
    void open_clean();
    void close_open();
    void maybe_seal(std::uint32_t id);
    void start_seal(std::uint32_t id);
    bool try_reclaim();
    bool oldest_on_its_way() const noexcept;
    void maintain();
    void submit(std::uint32_t id, step s);
    void advance(std::uint32_t id, std::int64_t res);
    void seal_done(std::uint32_t id, bool summarised);
    void reclaim_done(std::uint32_t id);
    void maybe_final_flush();
    static std::uint64_t fresh_generation();

    config cfg_;
    meta_submitter& io_;
    evict_fn evict_;
    summary_fn summary_;
    std::vector<slot> slots_;
    std::deque<std::uint32_t> clean_;
    std::deque<std::uint32_t> sealed_; // full, sealing and sealed regions, oldest first
    std::optional<std::uint32_t> open_;
    std::uint32_t reclaiming_ = 0;
    std::uint64_t next_seq_ = 1;
    bool shutting_down_ = false;
    /// After a failed reclaim: no reclaim before reclaim_retry_at_ (backoff doubling).
    std::chrono::steady_clock::time_point reclaim_retry_at_{};
    std::chrono::milliseconds reclaim_backoff_{0};
    bool final_flush_ = false; // shutdown flush: due (not yet submitted) or in flight
    bool final_flush_sent_ = false;
    region_stats stats_;
};

} // namespace memkv::storage
