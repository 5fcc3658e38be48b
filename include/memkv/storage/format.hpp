// SPDX-License-Identifier: Apache-2.0
// The on-drive format: superblock, region header, record header, region summary and trailer.
// docs/storage.md describes it byte by byte; this file is its executable form.
#pragma once

#include <memkv/checksum.hpp>
#include <memkv/protocol/wire.hpp>
#include <memkv/result.hpp>

#include <array>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
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

enum class superblock_state {
    valid,        ///< a memkv superblock this build understands
    blank,        ///< no memkv magic in either copy: never formatted
    corrupt,      ///< memkv magic but no copy passes its checksum
    incompatible, ///< a memkv format this build cannot read
};

/// Encodes one superblock copy (meta_block bytes).
inline void encode_superblock(const superblock& s, std::span<std::byte, meta_block> out) {
    using namespace protocol;
    std::memset(out.data(), 0, meta_block);
    std::byte* p = out.data();
    store_le64(p + 0, superblock_magic);
    store_le32(p + 8, s.version);
    store_le64(p + 16, s.compat);
    store_le64(p + 24, s.incompat);
    std::memcpy(p + 32, s.uuid.data(), 16);
    store_le64(p + 48, s.record_seed);
    store_le32(p + 56, s.block_size);
    store_le64(p + 64, s.region_size);
    store_le32(p + 72, s.shard_count);
    store_le64(p + 80, s.capacity);
    store_le64(p + 88, s.max_value);
    store_le64(p + 96, s.created_unix);
    store_le32(p + meta_block - 4, crc32c(p, meta_block - 4));
}

/// Decodes one copy. `blank` if it holds no memkv magic.
inline superblock_state decode_superblock(std::span<const std::byte, meta_block> in,
                                          superblock& s) {
    using namespace protocol;
    const std::byte* p = in.data();
    if (load_le64(p) != superblock_magic) return superblock_state::blank;
    if (load_le32(p + meta_block - 4) != crc32c(p, meta_block - 4))
        return superblock_state::corrupt;
    s.version = load_le32(p + 8);
    s.compat = load_le64(p + 16);
    s.incompat = load_le64(p + 24);
    std::memcpy(s.uuid.data(), p + 32, 16);
    s.record_seed = load_le64(p + 48);
    s.block_size = load_le32(p + 56);
    s.region_size = load_le64(p + 64);
    s.shard_count = load_le32(p + 72);
    s.capacity = load_le64(p + 80);
    s.max_value = load_le64(p + 88);
    s.created_unix = load_le64(p + 96);
    if (s.version != format_version || (s.incompat & ~incompat_supported) != 0)
        return superblock_state::incompatible;
    if (s.block_size == 0 || s.region_size == 0 || s.shard_count == 0 ||
        s.region_size % s.block_size != 0)
        return superblock_state::corrupt;
    return superblock_state::valid;
}

/// Keyed checksum of metadata that user bytes could imitate (record headers): XXH3-64 with the
/// store's secret seed. A value that contains a copy of a header cannot pass for one, because
/// its writer never learns the seed.
std::uint64_t keyed_checksum(std::span<const std::byte> data, std::uint64_t seed) noexcept;

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

inline void encode_region_header(const region_header& h, std::uint64_t seed,
                                 std::span<std::byte, meta_block> out) {
    using namespace protocol;
    std::memset(out.data(), 0, meta_block);
    std::byte* p = out.data();
    store_le32(p + 0, region_magic);
    store_le32(p + 4, static_cast<std::uint32_t>(h.state));
    store_le32(p + 8, h.shard);
    store_le32(p + 12, h.region);
    store_le64(p + 16, h.generation);
    store_le64(p + 24, h.seq);
    store_le64(p + 32, keyed_checksum({p, 32}, seed));
}

inline bool decode_region_header(std::span<const std::byte, meta_block> in, std::uint64_t seed,
                                 region_header& h) {
    using namespace protocol;
    const std::byte* p = in.data();
    if (load_le32(p) != region_magic) return false;
    if (load_le64(p + 32) != keyed_checksum({p, 32}, seed)) return false;
    const auto st = load_le32(p + 4);
    if (st > 1) return false;
    h.state = static_cast<region_state>(st);
    h.shard = load_le32(p + 8);
    h.region = load_le32(p + 12);
    h.generation = load_le64(p + 16);
    h.seq = load_le64(p + 24);
    return true;
}

/// Record flags.
namespace record_flags {
inline constexpr std::uint16_t tombstone = 1; ///< a delete: no value follows
inline constexpr std::uint16_t pinned = 2;
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
    return 72 + r.tenant.size() + r.key.size() + r.meta.size() + 4 * r.crcs.size();
}

/// Encodes a record header at device offset `location` in a region of generation `gen`. The
/// keyed checksum covers every byte including the location and the generation, so a header
/// copied elsewhere, or left over from an earlier use of the region, is not valid.
/// Precondition: record_header_bytes(r) <= out.size() (one meta_block).
inline void encode_record_header(const record_info& r, std::uint64_t location, std::uint64_t gen,
                                 std::uint64_t seed, std::span<std::byte, meta_block> out) {
    using namespace protocol;
    std::memset(out.data(), 0, meta_block);
    std::byte* p = out.data();
    const auto len = static_cast<std::uint32_t>(record_header_bytes(r));
    store_le32(p + 0, record_magic);
    store_le16(p + 4, r.flags);
    store_le16(p + 6, static_cast<std::uint16_t>(r.tenant.size()));
    store_le32(p + 8, len);
    store_le16(p + 12, static_cast<std::uint16_t>(r.key.size()));
    store_le16(p + 14, static_cast<std::uint16_t>(r.meta.size()));
    store_le64(p + 16, location);
    store_le64(p + 24, gen);
    store_le64(p + 32, r.version);
    store_le64(p + 40, r.value_len);
    store_le64(p + 48, r.expires_unix_ms);
    store_le32(p + 56, static_cast<std::uint32_t>(r.crcs.size()));
    // 60..63 reserved; 64..71 checksum
    std::byte* q = p + 72;
    std::memcpy(q, r.tenant.data(), r.tenant.size());
    q += r.tenant.size();
    std::memcpy(q, r.key.data(), r.key.size());
    q += r.key.size();
    std::memcpy(q, r.meta.data(), r.meta.size());
    q += r.meta.size();
    for (auto c : r.crcs) {
        store_le32(q, c);
        q += 4;
    }
    store_le64(p + 64, keyed_checksum({p, len}, seed));
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
    using namespace protocol;
    const std::byte* p = in.data();
    if (load_le32(p) != record_magic) return header_check::absent;
    const auto len = load_le32(p + 8);
    if (len < 72 || len > meta_block) return header_check::corrupt;
    std::array<std::byte, meta_block> copy; // the checksum was computed with its field zero
    std::memcpy(copy.data(), p, len);
    std::memset(copy.data() + 64, 0, 8);
    if (load_le64(p + 64) != keyed_checksum({copy.data(), len}, seed)) return header_check::corrupt;
    // Another generation: left over from an earlier use of the region (stale, not damage).
    if (load_le64(p + 24) != gen) return header_check::absent;
    // A valid header of this generation in the wrong place was copied or misdirected.
    if (load_le64(p + 16) != location) return header_check::corrupt;
    r.flags = load_le16(p + 4);
    const std::size_t tenant_len = load_le16(p + 6);
    const std::size_t key_len = load_le16(p + 12);
    const std::size_t meta_len = load_le16(p + 14);
    r.version = load_le64(p + 32);
    r.value_len = load_le64(p + 40);
    r.expires_unix_ms = load_le64(p + 48);
    const std::size_t ncrc = load_le32(p + 56);
    if (72 + tenant_len + key_len + meta_len + 4 * ncrc != len || r.value_len > max_value ||
        key_len == 0)
        return header_check::corrupt;
    const char* q = reinterpret_cast<const char*>(p + 72);
    r.tenant.assign(q, tenant_len);
    r.key.assign(q + tenant_len, key_len);
    r.meta.assign(q + tenant_len + key_len, meta_len);
    const std::byte* c = p + 72 + tenant_len + key_len + meta_len;
    r.crcs.resize(ncrc);
    for (std::size_t i = 0; i < ncrc; ++i)
        r.crcs[i] = load_le32(c + 4 * i);
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
    using namespace protocol;
    std::size_t n = 24;
    for (const auto& e : entries)
        n += 12 + record_header_bytes(e.info);
    std::vector<std::byte> out(n + 8);
    std::byte* p = out.data();
    store_le32(p, summary_magic);
    store_le32(p + 4, static_cast<std::uint32_t>(entries.size()));
    store_le64(p + 8, gen);
    store_le64(p + 16, n);
    std::byte* q = p + 24;
    std::array<std::byte, meta_block> tmp;
    for (const auto& e : entries) {
        const auto len = record_header_bytes(e.info);
        encode_record_header(e.info, 0, 0, 0, tmp);
        // Not the record magic: a scan of the region must not take summary bytes for records.
        store_le32(tmp.data(), summary_entry_magic);
        store_le64(q, e.region_offset);
        store_le32(q + 8, static_cast<std::uint32_t>(len));
        std::memcpy(q + 12, tmp.data(), len);
        q += 12 + len;
    }
    store_le64(p + n, keyed_checksum({p, n}, seed));
    return out;
}

/// Decodes a summary; false if any check fails (then the region is scanned instead).
inline bool decode_summary(std::span<const std::byte> in, std::uint64_t gen, std::uint64_t seed,
                           std::uint64_t max_value, std::vector<summary_entry>& out) {
    using namespace protocol;
    if (in.size() < 32) return false;
    const std::byte* p = in.data();
    if (load_le32(p) != summary_magic || load_le64(p + 8) != gen) return false;
    const auto n = load_le64(p + 16);
    if (n < 24 || n > in.size() - 8) return false;
    if (load_le64(p + n) != keyed_checksum({p, n}, seed)) return false;
    const auto count = load_le32(p + 4);
    if (count > n / (12 + 72)) return false; // every entry takes at least 84 bytes
    std::size_t pos = 24;
    std::array<std::byte, meta_block> tmp;
    out.clear();
    out.reserve(count);
    for (std::uint32_t i = 0; i < count; ++i) {
        if (pos + 12 > n) return false;
        summary_entry e;
        e.region_offset = load_le64(p + pos);
        const auto len = load_le32(p + pos + 8);
        if (len < 72 || len > meta_block || pos + 12 + len > n) return false;
        std::memset(tmp.data(), 0, meta_block);
        std::memcpy(tmp.data(), p + pos + 12, len);
        if (load_le32(tmp.data()) != summary_entry_magic) return false;
        store_le32(tmp.data(), record_magic);
        // Entries were encoded with location 0, generation 0 and seed 0; the whole summary is
        // covered by the keyed checksum above.
        if (decode_record_header(tmp, 0, 0, 0, max_value, e.info) != header_check::valid)
            return false;
        out.push_back(std::move(e));
        pos += 12 + len;
    }
    return pos == n;
}

/// The trailer in a sealed region's last block: where its summary is.
struct region_trailer {
    std::uint64_t generation = 0;
    std::uint64_t summary_offset = 0; ///< from the region start
    std::uint64_t summary_len = 0;
};

inline void encode_trailer(const region_trailer& t, std::uint64_t seed,
                           std::span<std::byte, meta_block> out) {
    using namespace protocol;
    std::memset(out.data(), 0, meta_block);
    std::byte* p = out.data();
    store_le32(p, trailer_magic);
    store_le64(p + 8, t.generation);
    store_le64(p + 16, t.summary_offset);
    store_le64(p + 24, t.summary_len);
    store_le64(p + 32, keyed_checksum({p, 32}, seed));
}

inline bool decode_trailer(std::span<const std::byte, meta_block> in, std::uint64_t seed,
                           region_trailer& t) {
    using namespace protocol;
    const std::byte* p = in.data();
    if (load_le32(p) != trailer_magic) return false;
    if (load_le64(p + 32) != keyed_checksum({p, 32}, seed)) return false;
    t.generation = load_le64(p + 8);
    t.summary_offset = load_le64(p + 16);
    t.summary_len = load_le64(p + 24);
    return true;
}

} // namespace memkv::storage
