// SPDX-License-Identifier: Apache-2.0
// The bodies of storage::index.
#include <memkv/storage/index.hpp>

#include <algorithm>

namespace memkv::storage {

const index_entry* index::find(const std::string& key, std::uint64_t now_ms) const {
    auto it = map_.find(key);
    if (it == map_.end() || it->second.tombstone) return nullptr;
    if (it->second.expires_ms != 0 && now_ms >= it->second.expires_ms) return nullptr;
    return &it->second;
}

result<void> index::publish(const std::string& key, const record_place& at, record_info&& info,
                            bool if_absent) {
    auto [it, inserted] = map_.try_emplace(key);
    auto& e = it->second;
    if (!inserted) {
        if (if_absent && !e.tombstone) return errc::exists;
        if (e.version > info.version) return {};
        drop_bytes(e);
    }
    place(key, e, !inserted, at, std::move(info));
    return {};
}

void index::adopt(std::string key, const record_place& at, record_info&& info) {
    auto [it, inserted] = map_.try_emplace(key);
    auto& e = it->second;
    if (!inserted) {
        max_version_ = std::max(max_version_, info.version);
        if (e.version >= info.version) return;
        drop_bytes(e);
    }
    place(it->first, e, !inserted, at, std::move(info));
}

void index::place(const std::string& key, index_entry& e, bool existed, const record_place& at,
                  record_info&& info) {
    const bool tombstone = (info.flags & record_flags::tombstone) != 0;
    if (existed && e.tombstone) --tombstones_;
    if (tombstone) ++tombstones_;
    e.device_offset = at.value_offset;
    e.value_len = info.value_len;
    e.version = info.version;
    e.region = at.region;
    e.expires_ms = info.expires_unix_ms;
    e.pinned = (info.flags & record_flags::pinned) != 0;
    e.tombstone = tombstone;
    e.meta = std::move(info.meta);
    e.crcs = std::move(info.crcs);
    max_version_ = std::max(max_version_, e.version);
    keys_[at.region].push_back(key);
    live_bytes_[at.region] += record_bytes(e);
    used_bytes_ += record_bytes(e);
}

void index::drop_bytes(const index_entry& e) noexcept {
    const auto b = record_bytes(e);
    live_bytes_[e.region] -= b;
    used_bytes_ -= b;
}

bool index::drop_corrupt(const std::string& key, std::uint64_t version) {
    auto it = map_.find(key);
    if (it == map_.end() || it->second.version != version) return false;
    drop_bytes(it->second);
    if (it->second.tombstone) --tombstones_;
    map_.erase(it);
    return true;
}

std::uint64_t index::evict(std::uint32_t region) {
    std::uint64_t n = 0;
    for (const auto& k : keys_[region]) {
        auto e = map_.find(k);
        if (e == map_.end() || e->second.region != region) continue;
        drop_bytes(e->second);
        if (e->second.tombstone) --tombstones_;
        map_.erase(e);
        ++n;
    }
    keys_[region].clear();
    live_bytes_[region] = 0;
    return n;
}

std::vector<summary_entry> index::summary_entries(std::uint32_t region) const {
    std::vector<summary_entry> out;
    for (const auto& k : keys_[region]) {
        auto it = map_.find(k);
        if (it == map_.end() || it->second.region != region) continue;
        const auto& e = it->second;
        summary_entry s;
        s.region_offset = e.device_offset - meta_block - geo_.offset(region);
        const auto sep = k.find('\0');
        s.info.tenant = k.substr(0, sep);
        s.info.key = k.substr(sep + 1);
        s.info.flags = static_cast<std::uint16_t>((e.tombstone ? record_flags::tombstone : 0) |
                                                  (e.pinned ? record_flags::pinned : 0));
        s.info.version = e.version;
        s.info.value_len = e.value_len;
        s.info.expires_unix_ms = e.expires_ms;
        s.info.meta = e.meta;
        s.info.crcs = e.crcs;
        out.push_back(std::move(s));
    }
    // The same key may be listed twice (overwritten in this region): keep one.
    std::sort(out.begin(), out.end(),
              [](const auto& a, const auto& b) { return a.region_offset < b.region_offset; });
    out.erase(std::unique(
                  out.begin(), out.end(),
                  [](const auto& a, const auto& b) { return a.region_offset == b.region_offset; }),
              out.end());
    return out;
}

} // namespace memkv::storage
