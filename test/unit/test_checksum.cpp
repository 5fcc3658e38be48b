// SPDX-License-Identifier: Apache-2.0
// Tests of memkv::crc32c against the check value and a bitwise reference implementation.
#include "support/catch.hpp"
#include "support/seed.hpp"

#include <memkv/checksum.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <vector>

namespace {

/// Bit-at-a-time CRC32C (reflected polynomial 0x82F63B78), continuing from a previous result.
std::uint32_t crc32c_reference(std::span<const std::byte> data, std::uint32_t crc = 0) {
    crc = ~crc;
    for (std::byte b : data) {
        crc ^= std::to_integer<std::uint32_t>(b);
        for (int k = 0; k < 8; ++k)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

std::vector<std::byte> random_bytes(std::mt19937_64& rng, std::size_t n) {
    std::vector<std::byte> v(n);
    for (auto& b : v)
        b = static_cast<std::byte>(rng());
    return v;
}

} // namespace

TEST_CASE("crc32c of \"123456789\" is the check value 0xE3069283", "[checksum]") {
    const char* s = "123456789";
    CHECK(memkv::crc32c(s, 9) == 0xE3069283u);
    CHECK(memkv::crc32c(std::as_bytes(std::span(s, 9))) == 0xE3069283u);
    CHECK(crc32c_reference(std::as_bytes(std::span(s, 9))) == 0xE3069283u);
}

TEST_CASE("crc32c of no bytes is zero and leaves a running value unchanged", "[checksum]") {
    CHECK(memkv::crc32c(nullptr, 0) == 0u);
    CHECK(memkv::crc32c(std::span<const std::byte>{}) == 0u);
    CHECK(memkv::crc32c(nullptr, 0, 0xE3069283u) == 0xE3069283u);
}

TEST_CASE("crc32c of 32 zero bytes and 32 0xFF bytes match the iSCSI test vectors", "[checksum]") {
    // RFC 3720, appendix B.4.
    std::array<std::byte, 32> zeros{};
    std::array<std::byte, 32> ones{};
    ones.fill(std::byte{0xFF});
    CHECK(memkv::crc32c(zeros) == 0x8A9136AAu);
    CHECK(memkv::crc32c(ones) == 0x62A8AB43u);
}

TEST_CASE("crc32c continued from a previous result equals crc32c of the concatenation",
          "[checksum]") {
    auto rng = memkv::test::rng(0xC4C);
    const auto data = random_bytes(rng, 10000);
    const std::span<const std::byte> all(data);
    const auto whole = memkv::crc32c(all);
    for (int i = 0; i < 200; ++i) {
        const std::size_t cut = rng() % (data.size() + 1);
        const auto first = memkv::crc32c(all.first(cut));
        CHECK(memkv::crc32c(all.subspan(cut), first) == whole);
    }
    // Byte by byte.
    std::uint32_t crc = 0;
    for (std::size_t i = 0; i < data.size(); ++i)
        crc = memkv::crc32c(all.subspan(i, 1), crc);
    CHECK(crc == whole);
}

TEST_CASE("crc32c matches a bitwise reference for random lengths, offsets and contents",
          "[checksum]") {
    auto rng = memkv::test::rng(0xC4C2);
    for (int i = 0; i < 500; ++i) {
        const std::size_t n = i < 100 ? static_cast<std::size_t>(i) : rng() % 70000;
        const std::size_t offset = rng() % 16; // unaligned starts exercise ISA-L's edges
        const auto buf = random_bytes(rng, n + offset);
        const auto data = std::span<const std::byte>(buf).subspan(offset);
        const std::uint32_t seed = (rng() & 1) ? static_cast<std::uint32_t>(rng()) : 0u;
        INFO("length " << n << ", offset " << offset << ", crc " << seed);
        REQUIRE(memkv::crc32c(data, seed) == crc32c_reference(data, seed));
        REQUIRE(memkv::crc32c(data.data(), data.size(), seed) == crc32c_reference(data, seed));
    }
}
