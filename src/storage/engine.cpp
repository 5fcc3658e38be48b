// SPDX-License-Identifier: Apache-2.0
// The body of storage::engine: composing the index, the region manager and recovery.
#include <memkv/storage/engine.hpp>

#include <chrono>

namespace memkv::storage {

/// Versions of records a killed process had in flight were not recovered but may still land on
/// the drive: a restart never hands those numbers out again.
static constexpr std::uint64_t version_gap = 1ull << 32;

struct engine::parts {
    parts(const config& c, const region_geometry& g)
        : cfg(c), geo(g), idx(g),
          regions(
              {g, c.shard, c.seed, c.trim}, *c.io, [this](std::uint32_t r) { return idx.evict(r); },
              [this](std::uint32_t r) { return idx.summary_entries(r); }) {}
    config cfg;
    region_geometry geo;
    index idx;
    region_manager regions;
    std::uint64_t version = 0;
    std::uint64_t corrupt_records = 0;
};

engine::engine(std::unique_ptr<parts> p) noexcept : p_(std::move(p)) {}
engine::engine(engine&&) noexcept = default;
engine& engine::operator=(engine&&) noexcept = default;
engine::~engine() = default;

result<engine> engine::create(const config& cfg) {
    if (cfg.block_size == 0 || cfg.block_size > meta_block || meta_block % cfg.block_size ||
        cfg.region_size % meta_block || cfg.base % cfg.block_size || !cfg.io)
        return errc::invalid_argument;
    const auto n = cfg.length / cfg.region_size;
    if (n < 2) return errc::invalid_argument; // one open region plus one to reclaim into
    if (cfg.region_size < 3 * meta_block + cfg.max_value) return errc::invalid_argument;
    const region_geometry g{cfg.base, cfg.region_size, static_cast<std::uint32_t>(n),
                            cfg.block_size};
    return engine(std::make_unique<parts>(cfg, g));
}

std::uint64_t engine::max_value() const noexcept {
    return p_->cfg.max_value;
}

result<recovery_stats> engine::recover(meta_reader& io) {
    const auto t0 = std::chrono::steady_clock::now();
    recovery_stats rs;
    auto& p = *p_;
    p.idx = index(p.geo);
    auto layout = recover_regions(io, {p.geo, p.cfg.shard, p.cfg.seed, p.cfg.max_value}, p.idx, rs);
    if (!layout) return layout.error();
    p.regions.restore(layout->in_use, layout->next_seq);
    rs.tombstones = p.idx.tombstones();
    rs.entries = p.idx.entries();
    p.corrupt_records += rs.corrupt_records;
    p.version = p.idx.max_version() + version_gap;
    rs.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return rs;
}

const index_entry* engine::find(const std::string& key, std::uint64_t now_ms) const {
    return p_->idx.find(key, now_ms);
}

result<std::optional<put_ticket>> engine::reserve(std::string key, std::uint64_t value_len,
                                                  bool if_absent, std::size_t header_bytes,
                                                  std::uint64_t now_ms) {
    if (if_absent && find(key, now_ms)) return errc::exists;
    if (value_len > p_->cfg.max_value) return errc::too_large;
    if (header_bytes > meta_block) return errc::too_large;
    return allocate(std::move(key), value_len, header_bytes, if_absent, false);
}

result<std::optional<put_ticket>>
engine::reserve_tombstone(std::string key, std::size_t header_bytes, std::uint64_t now_ms) {
    if (!find(key, now_ms)) return errc::not_found;
    return allocate(std::move(key), 0, header_bytes, false, true);
}

result<std::optional<put_ticket>> engine::allocate(std::string key, std::uint64_t value_len,
                                                   std::size_t header_bytes, bool if_absent,
                                                   bool tombstone) {
    auto a = p_->regions.allocate(meta_block + p_->geo.round_up(value_len), header_bytes);
    if (!a) return a.error();
    if (!*a) return std::optional<put_ticket>();
    put_ticket t;
    t.key = std::move(key);
    t.region = (*a)->region;
    t.header_offset = (*a)->header_offset;
    t.value_offset = t.header_offset + meta_block;
    t.value_len = value_len;
    t.version = ++p_->version;
    t.generation = (*a)->generation;
    t.if_absent = if_absent;
    t.tombstone = tombstone;
    return std::optional<put_ticket>(std::move(t));
}

void engine::header_block(const put_ticket& t, const record_info& info,
                          std::span<std::byte, meta_block> out) const {
    encode_record_header(info, t.header_offset, t.generation, p_->cfg.seed, out);
}

region_readiness engine::readiness(const put_ticket& t) const noexcept {
    return p_->regions.readiness(t.region);
}

result<void> engine::commit(put_ticket&& t, record_info&& info) {
    info.version = t.version;
    if (t.tombstone) info.flags |= record_flags::tombstone;
    auto r = p_->idx.publish(t.key, {t.region, t.value_offset}, std::move(info), t.if_absent);
    // After publishing: the release may seal the region, whose summary must list this record.
    p_->regions.release(t.region);
    return r;
}

void engine::abort(put_ticket&& t) noexcept {
    p_->regions.release(t.region);
}

void engine::drop_corrupt(const std::string& key, std::uint64_t version) {
    if (p_->idx.drop_corrupt(key, version)) ++p_->corrupt_records;
}

void engine::pin(std::uint32_t region) noexcept {
    p_->regions.pin(region);
}
void engine::unpin(std::uint32_t region) noexcept {
    p_->regions.unpin(region);
}
void engine::on_meta_io(std::uint64_t token, std::int64_t res) {
    p_->regions.on_io(token, res);
}
void engine::seal_all() {
    p_->regions.seal_all();
}
bool engine::meta_busy() const noexcept {
    return p_->regions.busy();
}

engine_stats engine::stats() const noexcept {
    const auto& p = *p_;
    const auto& r = p.regions.stats();
    engine_stats s;
    s.tombstones = p.idx.tombstones();
    s.entries = p.idx.entries();
    s.used_bytes = p.idx.used_bytes();
    s.capacity_bytes = p.regions.capacity_bytes();
    s.evicted_regions = r.evicted_regions;
    s.evicted_entries = r.evicted_entries;
    s.discarded_bytes = r.discarded_bytes;
    s.metadata_errors = r.metadata_errors;
    s.corrupt_records = p.corrupt_records;
    return s;
}

std::uint32_t engine::writers(std::uint32_t region) const noexcept {
    return p_->regions.writers(region);
}
std::uint32_t engine::pins(std::uint32_t region) const noexcept {
    return p_->regions.pins(region);
}

} // namespace memkv::storage
