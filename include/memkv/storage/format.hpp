// SPDX-License-Identifier: Apache-2.0
// The on-drive format: superblock, region header, record header, region summary and trailer.
// docs/storage.md describes it byte by byte; this file is its executable form.
#pragma once

#include <memkv/checksum.hpp>
#include <memkv/protocol/body_codec.hpp>
#include <memkv/result.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cassert>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace memkv::storage {

/// Bytes of every metadata block (superblock copy, region header, record header, trailer).
inline constexpr std::uint32_t meta_block = 4096;
/// The superblock area at the start of the store: copy A at 0, copy B at meta_block; the shard
/// windows start at data_offset.
inline constexpr std::uint64_t data_offset = 1ull << 20;

/// Format version and feature flags. A reader refuses unknown incompatible features and any
/// other format version.
inline constexpr std::uint32_t format_version = 1;
inline constexpr std::uint64_t incompat_supported = 0;
inline constexpr std::uint64_t compat_supported = 0;

inline constexpr std::uint64_t superblock_magic = 0x3142534B564D454Dull; // "MEMKVSB1"
inline constexpr std::uint32_t region_magic = 0x4E47524D;                // "MRGN"
inline constexpr std::uint32_t record_magic = 0x4352524D;                // "MRRC"
inline constexpr std::uint32_t summary_magic = 0x4D55534D;               // "MSUM"
inline constexpr std::uint32_t trailer_magic = 0x4C52544D;               // "MTRL"
inline constexpr std::uint32_t summary_entry_magic = 0x4E45534D;         // "MSEN"

/// Keyed checksum of metadata that user bytes could imitate (record headers): XXH3-64 with the
/// store's secret seed. A value that contains a copy of a header cannot pass for one, because
/// its writer never learns the seed.
std::uint64_t keyed_checksum(std::span<const std::byte> data, std::uint64_t seed) noexcept;

/// What the encoders and decoders below share; not part of the format's interface.
namespace format_detail {

/// A writer at the start of `out`, zeroed first: reserved bytes, and the bytes after the last
/// field, are zero.
inline protocol::detail::body_writer zeroed_writer(std::span<std::byte> out) noexcept {
    std::fill(out.begin(), out.end(), std::byte{0});
    return protocol::detail::body_writer(out);
}

/// Region headers and trailers ("sealed" blocks): a u32 magic and their fields in bytes [0, 32),
/// then the keyed checksum of those bytes, then zeros.
inline constexpr std::size_t sealed_fields = 32;

/// Encodes a sealed block: `magic`, what `fields(body_writer&)` writes (sealed_fields - 4 bytes),
/// the keyed checksum.
template <class Fields>
void write_sealed(std::span<std::byte, meta_block> out, std::uint32_t magic, std::uint64_t seed,
                  Fields&& fields) noexcept {
    auto w = zeroed_writer(out);
    w.u32(magic);
    fields(w);
    assert(w.size() == sealed_fields);
    w.u64(keyed_checksum(w.written(), seed));
}

/// A reader of a sealed block's fields after the magic when `in` starts with `magic` and its
/// keyed checksum is right; nothing otherwise.
inline std::optional<protocol::detail::body_reader>
open_sealed(std::span<const std::byte, meta_block> in, std::uint32_t magic,
            std::uint64_t seed) noexcept {
    protocol::detail::body_reader r(in);
    std::uint32_t got = 0;
    std::uint64_t checksum = 0;
    (void)r.u32(got);
    if (got != magic) return std::nullopt;
    (void)protocol::detail::body_reader(in.subspan(sealed_fields, 8)).u64(checksum);
    if (checksum != keyed_checksum(in.first(sealed_fields), seed)) return std::nullopt;
    return r;
}

/// Bytes of a record header's fixed part, before its strings and CRCs.
inline constexpr std::size_t record_fixed = 72;
/// Where a record header's keyed checksum is (computed with its own 8 bytes zero).
inline constexpr std::size_t record_checksum_at = 64;

/// `s` as bytes.
inline std::span<const std::byte> as_bytes(std::string_view s) noexcept {
    return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

/// Bytes of a summary before its entries: u32 magic, u32 count, u64 generation, u64 length.
inline constexpr std::size_t summary_fixed = 24;
/// Bytes of a summary entry before its record header: u64 region offset, u32 header length.
inline constexpr std::size_t summary_entry_prefix = 12;

} // namespace format_detail

/// The store's identity and geometry; written once when the store is formatted.
struct superblock {
    std::uint32_t version = format_version;
    std::uint64_t compat = 0, incompat = 0;
    std::array<std::byte, 16> uuid{}; ///< identity of this store (and its devices)
    std::uint64_t record_seed = 0;    ///< secret seed of record checksums (never leaves the box)
    std::uint32_t block_size = 4096;
    std::uint64_t region_size = 0;
    std::uint32_t shard_count = 0;
    std::uint64_t capacity = 0; ///< bytes of the whole store (superblock area included)
    std::uint64_t max_value = 0;
    std::uint64_t created_unix = 0;
};

/// What decode_superblock found in one copy.
enum class superblock_state {
    valid,        ///< a memkv superblock this build understands
    blank,        ///< no memkv magic in either copy: never formatted
    corrupt,      ///< memkv magic but no copy passes its checksum
    incompatible, ///< a memkv format this build cannot read
};

/// Encodes one superblock copy (meta_block bytes).
/// Layout: u64 magic, u32 version, 4 reserved, u64 compat, u64 incompat, 16 uuid, u64
/// record_seed, u32 block_size, 4 reserved, u64 region_size, u32 shard_count, 4 reserved, u64
/// capacity, u64 max_value, u64 created_unix, zeros, and a CRC32C of the rest in the last 4 bytes.
inline void encode_superblock(const superblock& s, std::span<std::byte, meta_block> out) {
    auto w = format_detail::zeroed_writer(out);
    w.u64(superblock_magic);
    w.u32(s.version);
    w.skip(4);
    w.u64(s.compat);
    w.u64(s.incompat);
    w.bytes(s.uuid);
    w.u64(s.record_seed);
    w.u32(s.block_size);
    w.skip(4);
    w.u64(s.region_size);
    w.u32(s.shard_count);
    w.skip(4);
    w.u64(s.capacity);
    w.u64(s.max_value);
    w.u64(s.created_unix);
    w.skip(meta_block - 4 - w.size());
    w.u32(crc32c(w.written()));
}

/// Decodes one copy. `blank` if it holds no memkv magic.
inline superblock_state decode_superblock(std::span<const std::byte, meta_block> in,
                                          superblock& s) {
    // Every read succeeds: the block is meta_block bytes.
    protocol::detail::body_reader r(in);
    std::uint64_t magic = 0;
    (void)r.u64(magic);
    if (magic != superblock_magic) return superblock_state::blank;
    std::uint32_t crc = 0;
    (void)protocol::detail::body_reader(in.last(4)).u32(crc);
    if (crc != crc32c(in.first(meta_block - 4))) return superblock_state::corrupt;
    std::span<const std::byte> uuid;
    (void)r.u32(s.version);
    (void)r.skip(4);
    (void)r.u64(s.compat);
    (void)r.u64(s.incompat);
    (void)r.bytes(s.uuid.size(), uuid);
    std::copy(uuid.begin(), uuid.end(), s.uuid.begin());
    (void)r.u64(s.record_seed);
    (void)r.u32(s.block_size);
    (void)r.skip(4);
    (void)r.u64(s.region_size);
    (void)r.u32(s.shard_count);
    (void)r.skip(4);
    (void)r.u64(s.capacity);
    (void)r.u64(s.max_value);
    (void)r.u64(s.created_unix);
    if (s.version != format_version || (s.incompat & ~incompat_supported) != 0)
        return superblock_state::incompatible;
    if (s.block_size == 0 || s.region_size == 0 || s.shard_count == 0 ||
        s.region_size % s.block_size != 0)
        return superblock_state::corrupt;
    return superblock_state::valid;
}

/// Region states in the region header.
enum class region_state : std::uint32_t { free = 0, open = 1 };

/// The first block of every region: written (and flushed) when the region is opened for
/// writing, and rewritten as `free` with a new generation when it is reclaimed. A record is
/// valid only if it carries its region's current generation.
struct region_header {
    region_state state = region_state::free;
    std::uint32_t shard = 0;
    std::uint32_t region = 0;     ///< index within the shard
    std::uint64_t generation = 0; ///< increases every time the region is reused
    std::uint64_t seq = 0;        ///< open order within the shard (FIFO after recovery)
};

/// Encodes a region header: u32 magic, u32 state, u32 shard, u32 region, u64 generation, u64
/// seq, the keyed checksum of those 32 bytes, zeros.
inline void encode_region_header(const region_header& h, std::uint64_t seed,
                                 std::span<std::byte, meta_block> out) {
    format_detail::write_sealed(out, region_magic, seed, [&](protocol::detail::body_writer& w) {
        w.u32(static_cast<std::uint32_t>(h.state));
        w.u32(h.shard);
        w.u32(h.region);
        w.u64(h.generation);
        w.u64(h.seq);
    });
}

/// Decodes a region header; false without the magic, with a wrong checksum or an unknown state.
inline bool decode_region_header(std::span<const std::byte, meta_block> in, std::uint64_t seed,
                                 region_header& h) {
    auto r = format_detail::open_sealed(in, region_magic, seed);
    if (!r) return false;
    std::uint32_t st = 0;
    (void)r->u32(st);
    if (st > 1) return false;
    h.state = static_cast<region_state>(st);
    (void)r->u32(h.shard);
    (void)r->u32(h.region);
    (void)r->u64(h.generation);
    (void)r->u64(h.seq);
    return true;
}

/// Record flags.
namespace record_flags {
inline constexpr std::uint16_t tombstone = 1; ///< a delete: no value follows
inline constexpr std::uint16_t pinned = 2;    ///< exempt from eviction (best effort)
} // namespace record_flags

/// What a record header holds besides its location (everything the index needs).
struct record_info {
    std::uint16_t flags = 0;
    std::uint64_t version = 0;
    std::uint64_t value_len = 0;
    std::uint64_t expires_unix_ms = 0; ///< wall clock, 0 = never (TTL survives restarts)
    std::string tenant;
    std::string key;
    std::string meta;
    std::vector<std::uint32_t> crcs; ///< CRC32C per 256 KiB chunk of the value
};

/// Bytes a record header needs before padding (fixed part, strings, CRCs).
inline std::size_t record_header_bytes(const record_info& r) noexcept {
    return format_detail::record_fixed + r.tenant.size() + r.key.size() + r.meta.size() +
           4 * r.crcs.size();
}

/// Encodes a record header at device offset `location` in a region of generation `gen`. The
/// keyed checksum covers every byte including the location and the generation, so a header
/// copied elsewhere, or left over from an earlier use of the region, is not valid.
/// Precondition: record_header_bytes(r) <= out.size() (one meta_block).
/// Layout: u32 magic, u16 flags, u16 tenant length, u32 header length, u16 key length, u16
/// metadata length, u64 location, u64 generation, u64 version, u64 value length, u64 expiry, u32
/// CRC count, 4 reserved, u64 keyed checksum, then tenant, key, metadata, u32 CRCs; zeros.
inline void encode_record_header(const record_info& r, std::uint64_t location, std::uint64_t gen,
                                 std::uint64_t seed, std::span<std::byte, meta_block> out) {
    auto w = format_detail::zeroed_writer(out);
    w.u32(record_magic);
    w.u16(r.flags);
    w.u16(static_cast<std::uint16_t>(r.tenant.size()));
    w.u32(static_cast<std::uint32_t>(record_header_bytes(r)));
    w.u16(static_cast<std::uint16_t>(r.key.size()));
    w.u16(static_cast<std::uint16_t>(r.meta.size()));
    w.u64(location);
    w.u64(gen);
    w.u64(r.version);
    w.u64(r.value_len);
    w.u64(r.expires_unix_ms);
    w.u32(static_cast<std::uint32_t>(r.crcs.size()));
    w.skip(4); // reserved
    w.skip(8); // the checksum, zero until it is computed below
    w.bytes(format_detail::as_bytes(r.tenant));
    w.bytes(format_detail::as_bytes(r.key));
    w.bytes(format_detail::as_bytes(r.meta));
    for (auto c : r.crcs)
        w.u32(c);
    protocol::detail::body_writer(out.subspan(format_detail::record_checksum_at, 8))
        .u64(keyed_checksum(w.written(), seed));
}

/// Result of looking at a block where a record header might be.
enum class header_check { valid, absent, corrupt };

/// Decodes a record header expected at `location` in a region of generation `gen`. `absent`:
/// no record magic, or a header of another generation (stale, not damage); `corrupt`: magic
/// present but the checksum or a length fails, or a valid header of this generation sits in
/// the wrong place (copied or misdirected).
inline header_check decode_record_header(std::span<const std::byte, meta_block> in,
                                         std::uint64_t location, std::uint64_t gen,
                                         std::uint64_t seed, std::uint64_t max_value,
                                         record_info& r) {
    // Every read of the fixed part succeeds (the block is meta_block bytes), and of the rest
    // once the lengths were checked against the header length.
    protocol::detail::body_reader rd(in);
    std::uint32_t magic = 0, len = 0, ncrc = 0;
    std::uint16_t flags = 0, tenant_len = 0, key_len = 0, meta_len = 0;
    std::uint64_t at = 0, generation = 0, version = 0, value_len = 0, expires = 0, checksum = 0;
    (void)rd.u32(magic);
    if (magic != record_magic) return header_check::absent;
    (void)rd.u16(flags);
    (void)rd.u16(tenant_len);
    (void)rd.u32(len);
    if (len < format_detail::record_fixed || len > meta_block) return header_check::corrupt;
    (void)rd.u16(key_len);
    (void)rd.u16(meta_len);
    (void)rd.u64(at);
    (void)rd.u64(generation);
    (void)rd.u64(version);
    (void)rd.u64(value_len);
    (void)rd.u64(expires);
    (void)rd.u32(ncrc);
    (void)rd.skip(4); // reserved
    (void)rd.u64(checksum);
    std::array<std::byte, meta_block> copy; // the checksum was computed with its field zero
    std::memcpy(copy.data(), in.data(), len);
    std::memset(copy.data() + format_detail::record_checksum_at, 0, 8);
    if (checksum != keyed_checksum({copy.data(), len}, seed)) return header_check::corrupt;
    // Another generation: left over from an earlier use of the region (stale, not damage).
    if (generation != gen) return header_check::absent;
    // A valid header of this generation in the wrong place was copied or misdirected.
    if (at != location) return header_check::corrupt;
    r.flags = flags;
    r.version = version;
    r.value_len = value_len;
    r.expires_unix_ms = expires;
    if (format_detail::record_fixed + tenant_len + key_len + meta_len + 4 * std::size_t{ncrc} !=
            len ||
        r.value_len > max_value || key_len == 0)
        return header_check::corrupt;
    std::span<const std::byte> tenant, key, meta;
    (void)rd.bytes(tenant_len, tenant);
    (void)rd.bytes(key_len, key);
    (void)rd.bytes(meta_len, meta);
    auto text = [](std::span<const std::byte> b) {
        return std::string_view(reinterpret_cast<const char*>(b.data()), b.size());
    };
    r.tenant.assign(text(tenant));
    r.key.assign(text(key));
    r.meta.assign(text(meta));
    r.crcs.resize(ncrc);
    for (auto& c : r.crcs)
        (void)rd.u32(c);
    return header_check::valid;
}

/// A summary entry: a record header's contents and its offset in the region.
struct summary_entry {
    std::uint64_t region_offset = 0; ///< offset of the record header from the region start
    record_info info;
};

/// Encodes a region summary (written at the region's tail when it is sealed): magic, count, then
/// per entry u64 offset + u32 header length + the record header bytes (without padding); a
/// keyed checksum over everything. The trailer in the region's last block points at it.
inline std::vector<std::byte> encode_summary(std::span<const summary_entry> entries,
                                             std::uint64_t gen, std::uint64_t seed) {
    std::size_t n = format_detail::summary_fixed;
    for (const auto& e : entries)
        n += format_detail::summary_entry_prefix + record_header_bytes(e.info);
    std::vector<std::byte> out(n + 8);
    protocol::detail::body_writer w(out);
    w.u32(summary_magic);
    w.u32(static_cast<std::uint32_t>(entries.size()));
    w.u64(gen);
    w.u64(n);
    std::array<std::byte, meta_block> tmp;
    for (const auto& e : entries) {
        const auto len = record_header_bytes(e.info);
        encode_record_header(e.info, 0, 0, 0, tmp);
        // Not the record magic: a scan of the region must not take summary bytes for records.
        protocol::detail::body_writer(tmp).u32(summary_entry_magic);
        w.u64(e.region_offset);
        w.u32(static_cast<std::uint32_t>(len));
        w.bytes(std::span(tmp).first(len));
    }
    w.u64(keyed_checksum(w.written(), seed));
    return out;
}

/// Decodes a summary; false if any check fails (then the region is scanned instead).
inline bool decode_summary(std::span<const std::byte> in, std::uint64_t gen, std::uint64_t seed,
                           std::uint64_t max_value, std::vector<summary_entry>& out) {
    using format_detail::summary_entry_prefix, format_detail::summary_fixed;
    if (in.size() < summary_fixed + 8) return false;
    protocol::detail::body_reader r(in);
    std::uint32_t magic = 0, count = 0;
    std::uint64_t generation = 0, n = 0, checksum = 0;
    (void)r.u32(magic);
    (void)r.u32(count);
    (void)r.u64(generation);
    (void)r.u64(n);
    if (magic != summary_magic || generation != gen) return false;
    if (n < summary_fixed || n > in.size() - 8) return false;
    (void)protocol::detail::body_reader(in.subspan(n, 8)).u64(checksum);
    if (checksum != keyed_checksum(in.first(n), seed)) return false;
    // Every entry takes at least 84 bytes.
    if (count > n / (summary_entry_prefix + format_detail::record_fixed)) return false;
    protocol::detail::body_reader entries(in.first(n));
    (void)entries.skip(summary_fixed);
    std::array<std::byte, meta_block> tmp;
    out.clear();
    out.reserve(count);
    for (std::uint32_t i = 0; i < count; ++i) {
        summary_entry e;
        std::uint32_t len = 0, entry_magic = 0;
        std::span<const std::byte> header;
        if (!entries.u64(e.region_offset) || !entries.u32(len)) return false;
        if (len < format_detail::record_fixed || len > meta_block || !entries.bytes(len, header))
            return false;
        (void)protocol::detail::body_reader(header).u32(entry_magic);
        if (entry_magic != summary_entry_magic) return false;
        tmp.fill(std::byte{0});
        std::copy(header.begin(), header.end(), tmp.begin());
        protocol::detail::body_writer(tmp).u32(record_magic);
        // Entries were encoded with location 0, generation 0 and seed 0; the whole summary is
        // covered by the keyed checksum above.
        if (decode_record_header(tmp, 0, 0, 0, max_value, e.info) != header_check::valid)
            return false;
        out.push_back(std::move(e));
    }
    return entries.remaining() == 0;
}

/// The trailer in a sealed region's last block: where its summary is.
struct region_trailer {
    std::uint64_t generation = 0;
    std::uint64_t summary_offset = 0; ///< from the region start
    std::uint64_t summary_len = 0;
};

/// Encodes a trailer: u32 magic, 4 reserved, u64 generation, u64 summary offset, u64 summary
/// length, the keyed checksum of those 32 bytes, zeros.
inline void encode_trailer(const region_trailer& t, std::uint64_t seed,
                           std::span<std::byte, meta_block> out) {
    format_detail::write_sealed(out, trailer_magic, seed, [&](protocol::detail::body_writer& w) {
        w.skip(4); // reserved
        w.u64(t.generation);
        w.u64(t.summary_offset);
        w.u64(t.summary_len);
    });
}

/// Decodes a trailer; false without the magic or with a wrong checksum.
inline bool decode_trailer(std::span<const std::byte, meta_block> in, std::uint64_t seed,
                           region_trailer& t) {
    auto r = format_detail::open_sealed(in, trailer_magic, seed);
    if (!r) return false;
    (void)r->skip(4); // reserved
    (void)r->u64(t.generation);
    (void)r->u64(t.summary_offset);
    (void)r->u64(t.summary_len);
    return true;
}

} // namespace memkv::storage
