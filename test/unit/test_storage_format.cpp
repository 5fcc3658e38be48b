// SPDX-License-Identifier: Apache-2.0
// The on-drive structures of storage/format.hpp against golden bytes: every encoder writes
// exactly the bytes format version 1 has always written, and every decoder reads them back.
#include "support/catch.hpp"

#include <memkv/storage/format.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

using namespace memkv::storage;

namespace {

// The golden bytes below were produced by the encoders as they were before they were written
// with protocol::detail::body_writer (hand-written offset tables); they must never change.

using block = std::array<std::byte, meta_block>;

constexpr std::uint64_t seed = 0x5eed;

std::string to_hex(std::span<const std::byte> b) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string s;
    for (std::byte x : b) {
        s += digits[std::to_integer<unsigned>(x) >> 4];
        s += digits[std::to_integer<unsigned>(x) & 15];
    }
    return s;
}

std::vector<std::byte> from_hex(std::string_view hex) {
    auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
    std::vector<std::byte> out(hex.size() / 2);
    for (std::size_t i = 0; i < out.size(); ++i)
        out[i] = std::byte(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
    return out;
}

/// A metadata block holding `head` at its start, `tail` at its end and zeros between.
block golden_block(std::string_view head, std::string_view tail = {}) {
    block b{};
    const auto h = from_hex(head), t = from_hex(tail);
    std::copy(h.begin(), h.end(), b.begin());
    std::copy(t.begin(), t.end(), b.end() - static_cast<std::ptrdiff_t>(t.size()));
    return b;
}

/// `got` equals `want`; on failure the first differing byte and both hex images are shown.
void check_bytes(std::span<const std::byte> got, std::span<const std::byte> want) {
    const auto diff = std::mismatch(got.begin(), got.end(), want.begin(), want.end());
    INFO("first difference at byte " << (diff.first - got.begin()));
    CHECK(to_hex(got) == to_hex(want));
}

/// `encode(block&)`, run over a block filled with garbage (so that a byte the encoder leaves
/// unwritten shows), writes exactly `golden`.
template <class Encode>
void check_encodes_to(Encode&& encode, const block& golden) {
    block b;
    b.fill(std::byte{0xa5});
    encode(b);
    check_bytes(b, golden);
}

superblock sample_superblock() {
    superblock s;
    s.compat = 0x0102030405060708ull;
    s.incompat = 0; // no incompatible feature exists yet
    for (std::size_t i = 0; i < s.uuid.size(); ++i)
        s.uuid[i] = std::byte(0xa0 + i);
    s.record_seed = 0x5eed5eed5eed5eedull;
    s.block_size = 4096;
    s.region_size = 8u << 20;
    s.shard_count = 3;
    s.capacity = 1ull << 34;
    s.max_value = 1ull << 26;
    s.created_unix = 1700000000;
    return s;
}

constexpr std::string_view superblock_head =
    "4d454d564b534231010000000000000008070605040302010000000000000000"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafed5eed5eed5eed5e0010000000000000"
    "0000800000000000030000000000000000000000040000000000000400000000"
    "00f1536500000000";
constexpr std::string_view superblock_tail = "13d27daf"; // CRC32C of bytes [0, 4092)

record_info sample_record() {
    record_info r;
    r.flags = record_flags::pinned;
    r.version = 7;
    r.value_len = 300000;
    r.expires_unix_ms = 1700000000123ull;
    r.tenant = "acme";
    r.key = "user:42";
    r.meta = "m1";
    r.crcs = {0x11223344u, 0xdeadbeefu};
    return r;
}
constexpr std::uint64_t record_location = 0x123000;
constexpr std::uint64_t record_generation = 5;

constexpr std::string_view record_golden =
    "4d525243020004005d0000000700020000301200000000000500000000000000"
    "0700000000000000e0930400000000007b68e5cf8b0100000200000000000000"
    "6047f922b739cb2761636d65757365723a34326d3144332211efbeadde";

void check_record(const record_info& got, const record_info& want) {
    CHECK(got.flags == want.flags);
    CHECK(got.version == want.version);
    CHECK(got.value_len == want.value_len);
    CHECK(got.expires_unix_ms == want.expires_unix_ms);
    CHECK(got.tenant == want.tenant);
    CHECK(got.key == want.key);
    CHECK(got.meta == want.meta);
    CHECK(got.crcs == want.crcs);
}

std::vector<summary_entry> sample_summary() {
    std::vector<summary_entry> es(2);
    es[0].region_offset = 4096;
    es[0].info = sample_record();
    es[1].region_offset = 0x9000;
    es[1].info.flags = record_flags::tombstone;
    es[1].info.version = 8;
    es[1].info.key = "k";
    return es;
}

constexpr std::string_view summary_golden =
    "4d53554d020000000500000000000000d6000000000000000010000000000000"
    "5d0000004d53454e020004005d00000007000200000000000000000000000000"
    "000000000700000000000000e0930400000000007b68e5cf8b01000002000000"
    "00000000774f8a691fda562c61636d65757365723a34326d3144332211efbead"
    "de0090000000000000490000004d53454e010000004900000001000000000000"
    "0000000000000000000000000008000000000000000000000000000000000000"
    "00000000000000000000000000d7ecf29b9275bb616b6d7885908783a202";

} // namespace

TEST_CASE("a superblock is encoded to its golden bytes and decoded back", "[storage][format]") {
    const auto s = sample_superblock();
    const block golden = golden_block(superblock_head, superblock_tail);
    check_encodes_to([&](block& b) { encode_superblock(s, b); }, golden);

    superblock d;
    REQUIRE(decode_superblock(golden, d) == superblock_state::valid);
    CHECK(d.version == format_version);
    CHECK(d.compat == s.compat);
    CHECK(d.incompat == s.incompat);
    CHECK(d.uuid == s.uuid);
    CHECK(d.record_seed == s.record_seed);
    CHECK(d.block_size == s.block_size);
    CHECK(d.region_size == s.region_size);
    CHECK(d.shard_count == s.shard_count);
    CHECK(d.capacity == s.capacity);
    CHECK(d.max_value == s.max_value);
    CHECK(d.created_unix == s.created_unix);
}

TEST_CASE("a superblock decoder tells blank, corrupt and incompatible copies apart",
          "[storage][format]") {
    superblock d;
    const block zeros{};
    CHECK(decode_superblock(zeros, d) == superblock_state::blank);

    block flipped = golden_block(superblock_head, superblock_tail);
    flipped[200] ^= std::byte{1}; // a reserved byte: still covered by the CRC
    CHECK(decode_superblock(flipped, d) == superblock_state::corrupt);

    auto s = sample_superblock();
    s.version = format_version + 1;
    block b;
    encode_superblock(s, b);
    CHECK(decode_superblock(b, d) == superblock_state::incompatible);

    s = sample_superblock();
    s.incompat = 1;
    encode_superblock(s, b);
    CHECK(decode_superblock(b, d) == superblock_state::incompatible);

    s = sample_superblock();
    s.region_size = s.block_size + 1;
    encode_superblock(s, b);
    CHECK(decode_superblock(b, d) == superblock_state::corrupt);
}

TEST_CASE("a region header is encoded to its golden bytes and decoded back", "[storage][format]") {
    const region_header h{region_state::open, 2, 17, 9, 1234};
    const block golden =
        golden_block("4d52474e0100000002000000110000000900000000000000d204000000000000"
                     "14c390aa41b148a9");
    check_encodes_to([&](block& b) { encode_region_header(h, seed, b); }, golden);

    region_header d;
    REQUIRE(decode_region_header(golden, seed, d));
    CHECK(d.state == h.state);
    CHECK(d.shard == h.shard);
    CHECK(d.region == h.region);
    CHECK(d.generation == h.generation);
    CHECK(d.seq == h.seq);

    CHECK_FALSE(decode_region_header(golden, seed + 1, d)); // another store's seed
    block bad = golden;
    bad[0] ^= std::byte{1};
    CHECK_FALSE(decode_region_header(bad, seed, d));
    bad = golden;
    bad[20] ^= std::byte{1};
    CHECK_FALSE(decode_region_header(bad, seed, d));
}

TEST_CASE("a record header is encoded to its golden bytes and decoded back", "[storage][format]") {
    const auto r = sample_record();
    REQUIRE(record_header_bytes(r) == record_golden.size() / 2);
    const block golden = golden_block(record_golden);
    check_encodes_to(
        [&](block& b) { encode_record_header(r, record_location, record_generation, seed, b); },
        golden);

    record_info d;
    REQUIRE(decode_record_header(golden, record_location, record_generation, seed, 1u << 20, d) ==
            header_check::valid);
    check_record(d, r);
}

TEST_CASE("a record header decoder tells stale, misplaced and damaged headers apart",
          "[storage][format]") {
    const block golden = golden_block(record_golden);
    record_info d;
    auto decode = [&](const block& b, std::uint64_t location, std::uint64_t gen,
                      std::uint64_t max_value = 1u << 20) {
        return decode_record_header(b, location, gen, seed, max_value, d);
    };
    CHECK(decode(block{}, record_location, record_generation) == header_check::absent);
    CHECK(decode(golden, record_location, record_generation + 1) == header_check::absent);
    CHECK(decode(golden, record_location + meta_block, record_generation) == header_check::corrupt);
    CHECK(decode(golden, record_location, record_generation, 299999) == header_check::corrupt);
    block bad = golden;
    bad[80] ^= std::byte{1}; // a key byte
    CHECK(decode(bad, record_location, record_generation) == header_check::corrupt);
    bad = golden;
    bad[8] = std::byte{71}; // a length below the fixed part
    CHECK(decode(bad, record_location, record_generation) == header_check::corrupt);
}

TEST_CASE("a region summary is encoded to its golden bytes and decoded back", "[storage][format]") {
    const auto entries = sample_summary();
    const auto v = encode_summary(entries, record_generation, seed);
    check_bytes(v, from_hex(summary_golden));

    const auto golden = from_hex(summary_golden);
    std::vector<summary_entry> d;
    REQUIRE(decode_summary(golden, record_generation, seed, 1u << 20, d));
    REQUIRE(d.size() == entries.size());
    for (std::size_t i = 0; i < d.size(); ++i) {
        CHECK(d[i].region_offset == entries[i].region_offset);
        check_record(d[i].info, entries[i].info);
    }

    CHECK_FALSE(decode_summary(golden, record_generation + 1, seed, 1u << 20, d));
    CHECK_FALSE(decode_summary(golden, record_generation, seed + 1, 1u << 20, d));
    CHECK_FALSE(decode_summary(std::span(golden).first(31), record_generation, seed, 1u << 20, d));
    auto bad = golden;
    bad[100] ^= std::byte{1};
    CHECK_FALSE(decode_summary(bad, record_generation, seed, 1u << 20, d));

    const auto empty = encode_summary({}, record_generation, seed);
    CHECK(empty.size() == 32);
    REQUIRE(decode_summary(empty, record_generation, seed, 1u << 20, d));
    CHECK(d.empty());
}

TEST_CASE("a region trailer is encoded to its golden bytes and decoded back", "[storage][format]") {
    const region_trailer t{5, 0x7ff000, 200};
    const block golden =
        golden_block("4d54524c00000000050000000000000000f07f0000000000c800000000000000"
                     "616c12e64ca25200");
    check_encodes_to([&](block& b) { encode_trailer(t, seed, b); }, golden);

    region_trailer d;
    REQUIRE(decode_trailer(golden, seed, d));
    CHECK(d.generation == t.generation);
    CHECK(d.summary_offset == t.summary_offset);
    CHECK(d.summary_len == t.summary_len);

    CHECK_FALSE(decode_trailer(golden, seed + 1, d));
    block bad = golden;
    bad[3] ^= std::byte{1};
    CHECK_FALSE(decode_trailer(bad, seed, d));
}
