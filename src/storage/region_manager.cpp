// SPDX-License-Identifier: Apache-2.0
// The bodies of storage::region_manager: allocation and the metadata state machines.
#include <memkv/detail/log.hpp>
#include <memkv/storage/region_manager.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>

namespace memkv::storage {

region_manager::region_manager(const config& cfg, meta_submitter& io, evict_fn evict,
                               summary_fn summary)
    : cfg_(cfg), io_(io), evict_(std::move(evict)), summary_(std::move(summary)),
      slots_(cfg.geo.count) {
    for (std::uint32_t i = 0; i < cfg.geo.count; ++i)
        clean_.push_back(i);
}

void region_manager::restore(std::span<const recovered_region> in_use, std::uint64_t next_seq) {
    clean_.clear();
    sealed_.clear();
    open_.reset();
    std::vector<bool> taken(slots_.size(), false);
    for (const auto& r : in_use) {
        auto& s = slots_[r.id];
        s = slot{};
        s.generation = r.generation;
        s.seq = r.seq;
        s.used = r.used;
        s.ph = phase::sealed; // recovered regions take no new records
        s.header_ready = true;
        s.unsummarised = !r.summarised;
        sealed_.push_back(r.id);
        taken[r.id] = true;
    }
    for (std::uint32_t i = 0; i < slots_.size(); ++i)
        if (!taken[i]) {
            slots_[i] = slot{};
            clean_.push_back(i);
        }
    next_seq_ = std::max(next_seq_, next_seq);
}

bool region_manager::fits(const slot& r, std::uint64_t bytes,
                          std::size_t summary_bytes) const noexcept {
    // Its blocks, its summary entry, the summary's framing and the trailer block.
    const auto summary = cfg_.geo.round_up(r.summary_bytes + 12 + summary_bytes + 32);
    return r.used + bytes + summary + meta_block <= cfg_.geo.region_size;
}

result<std::optional<allocation>> region_manager::allocate(std::uint64_t bytes,
                                                           std::size_t summary_bytes) {
    if (!open_ || !fits(slots_[*open_], bytes, summary_bytes)) {
        if (clean_.empty()) {
            if (reclaiming_ == 0) try_reclaim();
            if (reclaiming_ > 0 || oldest_on_its_way()) return std::optional<allocation>();
            return errc::retry;
        }
        // The open region is closed only now that another can take its place: small records
        // keep filling it while no clean region is ready.
        close_open();
        open_clean();
        if (!open_) return errc::retry; // its open header could not even be submitted
    }
    auto& r = slots_[*open_];
    if (!fits(r, bytes, summary_bytes)) return errc::too_large;
    const allocation a{*open_, cfg_.geo.offset(*open_) + r.used, r.generation};
    r.used += bytes;
    r.summary_bytes += 12 + summary_bytes;
    ++r.pins;
    ++r.writers;
    maintain();
    return std::optional<allocation>(a);
}

bool region_manager::oldest_on_its_way() const noexcept {
    if (sealed_.empty()) return false;
    const auto& r = slots_[sealed_.front()];
    // Being sealed, or about to be once its own I/O completes: store I/O alone makes it
    // reclaimable. A writer or a pin depends on a client, which may never come back.
    return r.ph == phase::sealing || (r.ph == phase::full && r.writers == 0);
}

void region_manager::release(std::uint32_t region) {
    auto& r = slots_[region];
    --r.pins;
    --r.writers;
    maybe_seal(region);
}

void region_manager::unpin(std::uint32_t region) noexcept {
    --slots_[region].pins;
    maintain();
}

region_readiness region_manager::readiness(std::uint32_t region) const noexcept {
    const auto& r = slots_[region];
    if (r.header_failed) return region_readiness::failed;
    return r.header_ready ? region_readiness::ready : region_readiness::pending;
}

void region_manager::open_clean() {
    const auto id = clean_.front();
    clean_.pop_front();
    auto& r = slots_[id];
    r = slot{};
    r.generation = fresh_generation();
    r.seq = next_seq_++;
    r.used = meta_block;
    r.ph = phase::open;
    open_ = id;
    submit(id, step::open_header);
}

void region_manager::close_open() {
    if (!open_) return;
    const auto id = *open_;
    open_.reset();
    slots_[id].ph = phase::full;
    sealed_.push_back(id);
    maybe_seal(id);
}

void region_manager::maybe_seal(std::uint32_t id) {
    const auto& r = slots_[id];
    if (r.ph == phase::full && r.writers == 0 && r.io == step::none) start_seal(id);
}

void region_manager::start_seal(std::uint32_t id) {
    slots_[id].ph = phase::sealing;
    // The records first: a summary that outlived them in a power cut would name values that
    // are not there, and summarised records are not checked again at recovery.
    submit(id, step::seal_flush);
}

bool region_manager::try_reclaim() {
    if (sealed_.empty() || std::chrono::steady_clock::now() < reclaim_retry_at_) return false;
    const auto id = sealed_.front();
    auto& r = slots_[id];
    if (r.ph != phase::sealed || r.pins != 0 || r.writers != 0 || r.io != step::none) return false;
    sealed_.pop_front();
    stats_.evicted_entries += evict_(id);
    r.ph = phase::reclaiming;
    r.generation = fresh_generation();
    ++reclaiming_;
    submit(id, step::free_header);
    return true;
}

void region_manager::maintain() {
    if (shutting_down_ || !clean_.empty() || reclaiming_ > 0) return;
    if (open_ && slots_[*open_].used * 2 < cfg_.geo.region_size) return;
    try_reclaim();
}

void region_manager::submit(std::uint32_t id, step s) {
    auto& r = slots_[id];
    r.io = s;
    const auto at = cfg_.geo.offset(id);
    result<void> sent;
    auto header = [&](region_state st) {
        r.buf = std::make_unique<aligned_buffer>(meta_block);
        encode_region_header({st, cfg_.shard, id, r.generation, r.seq}, cfg_.seed, r.buf->block());
        return io_.write(at, r.buf->span(), id);
    };
    switch (s) {
    case step::open_header:
        sent = header(region_state::open);
        break;
    case step::free_header:
        sent = header(region_state::free);
        break;
    case step::seal_flush:
    case step::free_flush:
        sent = io_.flush(id);
        break;
    case step::seal_summary:
        sent = io_.write(at + r.summary_at, r.buf->span(), id);
        break;
    case step::seal_trailer:
        r.buf = std::make_unique<aligned_buffer>(meta_block);
        encode_trailer({r.generation, r.summary_at, r.summary_len}, cfg_.seed, r.buf->block());
        sent = io_.write(at + cfg_.geo.region_size - meta_block, r.buf->span(), id);
        break;
    case step::discard:
        sent = io_.discard(at + meta_block, cfg_.geo.region_size - meta_block, id);
        break;
    case step::none:
        return;
    }
    if (!sent) advance(id, -EIO); // refused: as if it failed
}

void region_manager::on_io(std::uint64_t token, std::int64_t res) {
    if (token == final_flush_token) {
        if (res < 0) {
            ++stats_.metadata_errors;
            detail::log_warn("shard {}: the shutdown flush failed: {}", cfg_.shard,
                             std::strerror(static_cast<int>(-res)));
        }
        final_flush_ = false;
        return;
    }
    if (token < slots_.size() && slots_[token].io != step::none)
        advance(static_cast<std::uint32_t>(token), res);
}

void region_manager::advance(std::uint32_t id, std::int64_t res) {
    auto& r = slots_[id];
    const auto s = std::exchange(r.io, step::none);
    const bool ok = res >= 0;
    if (!ok) {
        ++stats_.metadata_errors;
        detail::log_warn("shard {} region {}: metadata I/O failed: {}", cfg_.shard, id,
                         std::strerror(static_cast<int>(-res)));
    }
    switch (s) {
    case step::open_header:
        r.buf.reset();
        (ok ? r.header_ready : r.header_failed) = true;
        if (!ok && open_ == id) close_open(); // its records fail; nothing more goes in
        maybe_seal(id);
        break;
    case step::seal_flush: {
        if (!ok) return seal_done(id, false);
        const auto bytes = encode_summary(summary_(id), r.generation, cfg_.seed);
        const auto len = cfg_.geo.round_up(bytes.size());
        // No room: recovery will scan this region.
        if (r.used + len > cfg_.geo.region_size - meta_block) return seal_done(id, false);
        r.buf = std::make_unique<aligned_buffer>(len);
        std::memcpy(r.buf->data(), bytes.data(), bytes.size());
        r.summary_at = r.used;
        r.summary_len = bytes.size();
        submit(id, step::seal_summary);
        break;
    }
    case step::seal_summary:
        if (!ok) return seal_done(id, false);
        submit(id, step::seal_trailer);
        break;
    case step::seal_trailer:
        seal_done(id, ok);
        break;
    case step::free_header:
    case step::free_flush:
        if (!ok) {
            // Its entries are gone from the index, but its records are still valid on the store:
            // it stays the oldest region, reclaimed again only after a back-off (doubling, up to
            // 30 s), so that a failing device answers PUTs `retry` instead of spinning.
            r.buf.reset();
            r.ph = phase::sealed;
            --reclaiming_;
            sealed_.push_front(id);
            reclaim_backoff_ = std::min<std::chrono::milliseconds>(
                std::chrono::seconds(30),
                std::max<std::chrono::milliseconds>(std::chrono::milliseconds(100),
                                                    2 * reclaim_backoff_));
            reclaim_retry_at_ = std::chrono::steady_clock::now() + reclaim_backoff_;
            break;
        }
        if (s == step::free_header) {
            submit(id, step::free_flush);
        } else if (cfg_.trim) {
            submit(id, step::discard);
        } else {
            reclaim_done(id);
        }
        break;
    case step::discard:
        // The header is free and flushed: the region is safe to reuse; only the TRIM is lost.
        if (ok) stats_.discarded_bytes += cfg_.geo.region_size - meta_block;
        reclaim_done(id);
        break;
    case step::none:
        break;
    }
    maybe_final_flush();
}

void region_manager::seal_done(std::uint32_t id, bool summarised) {
    auto& r = slots_[id];
    r.buf.reset();
    r.ph = phase::sealed;
    r.unsummarised = !summarised;
    maintain();
    maybe_final_flush();
}

void region_manager::reclaim_done(std::uint32_t id) {
    auto& r = slots_[id];
    r = slot{};
    reclaim_backoff_ = std::chrono::milliseconds(0);
    clean_.push_back(id);
    --reclaiming_;
    ++stats_.evicted_regions;
    maintain();
}

void region_manager::seal_all() {
    shutting_down_ = true;
    close_open();
    for (auto id : sealed_) {
        const auto& r = slots_[id];
        if (r.ph == phase::sealed && r.unsummarised && r.writers == 0 && r.io == step::none)
            start_seal(id);
    }
    final_flush_ = true;
    maybe_final_flush();
}

void region_manager::maybe_final_flush() {
    if (!final_flush_ || final_flush_sent_) return;
    for (const auto& r : slots_)
        if (r.io != step::none || (r.ph == phase::full && r.writers == 0)) return;
    final_flush_sent_ = true;
    if (!io_.flush(final_flush_token)) {
        ++stats_.metadata_errors;
        detail::log_warn("shard {}: the shutdown flush could not be submitted", cfg_.shard);
        final_flush_ = false;
    }
}

bool region_manager::busy() const noexcept {
    if (final_flush_) return true;
    for (const auto& r : slots_)
        if (r.io != step::none) return true;
    return false;
}

std::uint64_t region_manager::fresh_generation() {
    // Random: records of any earlier use of a region (whose header may since have been damaged
    // or trimmed) match it with probability 2^-64.
    std::random_device rd;
    return (std::uint64_t(rd()) << 32) ^ rd() ^ (std::uint64_t(rd()) << 16);
}

} // namespace memkv::storage
