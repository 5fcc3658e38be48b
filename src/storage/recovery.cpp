// SPDX-License-Identifier: Apache-2.0
// The body of storage::recover_regions: region headers, summaries and record scans.
#include <memkv/checksum.hpp>
#include <memkv/storage/aligned_buffer.hpp>
#include <memkv/storage/record_layout.hpp>
#include <memkv/storage/recovery.hpp>

#include <algorithm>

namespace memkv::storage {

namespace {

/// Reads one shard's regions into an index (one use: construct, then run()).
class region_reader {
public:
    region_reader(meta_reader& io, const recovery_params& p, index& idx, recovery_stats& rs)
        : io_(io), p_(p), idx_(idx), rs_(rs) {}

    result<recovered_layout> run() {
        recovered_layout out;
        aligned_buffer blk(meta_block);
        for (std::uint32_t i = 0; i < p_.geo.count; ++i) {
            MEMKV_TRY(io_.read(p_.geo.offset(i), blk.span()));
            region_header h;
            if (!decode_region_header(blk.block(), p_.seed, h) || h.shard != p_.shard ||
                h.region != i)
                continue;
            out.next_seq = std::max(out.next_seq, h.seq + 1);
            if (h.state == region_state::free) continue;
            recovered_region r{i, h.generation, h.seq, meta_block, false};
            MEMKV_TRY(load(r));
            out.in_use.push_back(r);
        }
        std::sort(out.in_use.begin(), out.in_use.end(),
                  [](const auto& a, const auto& b) { return a.seq < b.seq; });
        return out;
    }

private:
    /// Loads one region's records: from its summary if the trailer and summary check out, else
    /// by scanning its blocks.
    result<void> load(recovered_region& r) {
        const auto at = p_.geo.offset(r.id);
        const auto trailer_at = p_.geo.region_size - meta_block;
        aligned_buffer blk(meta_block);
        MEMKV_TRY(io_.read(at + trailer_at, blk.span()));
        region_trailer t;
        if (decode_trailer(blk.block(), p_.seed, t) && t.generation == r.generation &&
            t.summary_offset >= meta_block && t.summary_len > 0 &&
            t.summary_offset + t.summary_len <= trailer_at) {
            aligned_buffer sum(p_.geo.round_up(t.summary_len));
            MEMKV_TRY(io_.read(at + t.summary_offset, sum.span()));
            std::vector<summary_entry> entries;
            if (decode_summary({sum.data(), t.summary_len}, r.generation, p_.seed, p_.max_value,
                               entries)) {
                for (auto& e : entries) {
                    // A summary entry must describe a record inside the region's used part.
                    const auto end =
                        e.region_offset + meta_block + p_.geo.round_up(e.info.value_len);
                    if (e.region_offset < meta_block || e.region_offset % meta_block ||
                        end > t.summary_offset) {
                        ++rs_.corrupt_records;
                        continue;
                    }
                    adopt(r.id, e.region_offset, std::move(e.info));
                }
                r.used = t.summary_offset;
                r.summarised = true;
                ++rs_.regions_summarised;
                return {};
            }
            ++rs_.corrupt_records; // a damaged summary; the scan below still finds the records
        }
        ++rs_.regions_scanned;
        // No summary is written now: writes of a killed process may still be landing in this
        // region's tail (io_uring requests outlive their process), and a summary there could
        // meet them. It is written at the next clean shutdown (region_manager::seal_all).
        return scan(r);
    }

    /// Walks a region block by block from its first record: a valid header (right location and
    /// generation, keyed checksum) whose value matches its chunk CRCs is a record and the walk
    /// jumps over its value; anything else moves one block on. Torn and stale records are
    /// skipped and the walk keeps going. Values are checked because a put writes its header
    /// beside its value, not after it: a header may have landed without its value.
    result<void> scan(recovered_region& r) {
        const auto at = p_.geo.offset(r.id);
        win_.start = win_.len = 0;
        const std::uint64_t end = p_.geo.region_size - meta_block;
        std::uint64_t pos = meta_block, last_end = meta_block;
        while (pos + meta_block <= end) {
            MEMKV_TRY(cover(at, pos, meta_block));
            std::span<const std::byte, meta_block> b(win_.buf.data() + (pos - win_.start),
                                                     meta_block);
            record_info info;
            const auto c =
                decode_record_header(b, at + pos, r.generation, p_.seed, p_.max_value, info);
            if (c != header_check::valid) {
                if (c == header_check::corrupt) ++rs_.corrupt_records;
                pos += meta_block;
                continue;
            }
            const auto next = pos + meta_block + p_.geo.round_up(info.value_len);
            if (next > end) {
                ++rs_.corrupt_records;
                pos += meta_block;
                continue;
            }
            auto intact = value_intact(at, pos + meta_block, info);
            if (!intact) return intact.error();
            if (!*intact) {
                ++rs_.corrupt_records; // the value never landed, or was damaged since
                pos = next;
                continue;
            }
            adopt(r.id, pos, std::move(info));
            pos = last_end = next;
        }
        r.used = last_end;
        return {};
    }

    /// True when the value at region offset `pos` matches the record's chunk CRCs.
    result<bool> value_intact(std::uint64_t region_at, std::uint64_t pos, const record_info& info) {
        if (info.crcs.size() != crc_chunks(info.value_len)) return false;
        for (std::uint64_t done = 0, chunk = 0; done < info.value_len; ++chunk) {
            const auto n = std::min<std::uint64_t>(crc_chunk_size, info.value_len - done);
            MEMKV_TRY(cover(region_at, pos + done, n));
            if (crc32c(win_.buf.data() + (pos + done - win_.start), n) != info.crcs[chunk])
                return false;
            done += n;
        }
        return true;
    }

    /// Makes the scan window hold region bytes [pos, pos + n), reading from `pos` (rounded
    /// down to a block) when it does not.
    result<void> cover(std::uint64_t region_at, std::uint64_t pos, std::uint64_t n) {
        if (pos >= win_.start && pos + n <= win_.start + win_.len) return {};
        const std::uint64_t end = p_.geo.region_size - meta_block;
        win_.start = pos / meta_block * meta_block;
        win_.len = std::min<std::uint64_t>(win_.buf.size(), end - win_.start);
        return io_.read(region_at + win_.start, {win_.buf.data(), win_.len});
    }

    void adopt(std::uint32_t region, std::uint64_t region_off, record_info&& info) {
        std::string key = info.tenant;
        key.push_back('\0');
        key += info.key;
        idx_.adopt(std::move(key), {region, p_.geo.offset(region) + region_off + meta_block},
                   std::move(info));
    }

    struct window {
        aligned_buffer buf{1u << 20};
        std::uint64_t start = 0, len = 0; // region bytes [start, start + len) are in buf
    };

    meta_reader& io_;
    const recovery_params& p_;
    index& idx_;
    recovery_stats& rs_;
    window win_;
};

} // namespace

result<recovered_layout> recover_regions(meta_reader& io, const recovery_params& p, index& idx,
                                         recovery_stats& rs) {
    return region_reader(io, p, idx, rs).run();
}

} // namespace memkv::storage
