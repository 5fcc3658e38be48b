// SPDX-License-Identifier: Apache-2.0
// The placement function: the literal test vectors of docs/protocol.md, and the properties that
// make rendezvous hashing and the shard function fit for purpose (minimal movement, balance).
#include "support/catch.hpp"
#include "support/seed.hpp"

#include <memkv/protocol/placement.hpp>

#include <array>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

using memkv::key_hash;
using memkv::placement;
using memkv::rendezvous_score;
using memkv::server_seed;
using memkv::shard_for;

namespace {

struct hash_vector {
    std::string key;
    std::uint64_t hash;
    std::array<std::uint32_t, 4> shards; ///< for 1, 2, 4 and 7 shards
    std::size_t owner3;                  ///< among servers[0..3)
    std::size_t owner4;                  ///< among servers[0..4)
};

std::string repeat(const std::string& s, int n) {
    std::string out;
    for (int i = 0; i < n; ++i)
        out += s;
    return out;
}

std::string byte_range(int n) {
    std::string out;
    for (int i = 0; i < n; ++i)
        out.push_back(static_cast<char>(i));
    return out;
}

// Copied literally from docs/protocol.md, section "Test vectors".
const std::vector<hash_vector>& vectors() {
    static const std::vector<hash_vector> v = {
        {"", 0x2d06800538d394c2, {0, 0, 0, 1}, 2, 2},
        {"a", 0xe6c632b61e964e1f, {0, 1, 3, 6}, 2, 3},
        {"abc", 0x78af5f94892f3950, {0, 0, 1, 3}, 0, 0},
        {"key1", 0x384d070cd5d829e2, {0, 0, 0, 1}, 1, 1},
        {"memkv-key-00001", 0x8dd9f9367ba51149, {0, 1, 2, 3}, 1, 1},
        {"tenant-a/llama-3-8b/fp16/chunk/0000000000000001", 0x6a66ddbb25581860, {0, 0, 1, 2}, 1, 3},
        {"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
         0xb9b6fd51dbd07ec5,
         {0, 1, 2, 5},
         2,
         3},
        {std::string(200, 'x'), 0x50ef124fb1e4de53, {0, 0, 1, 2}, 2, 2},
        {repeat("0123456789abcdef", 64), 0x540ffccbf24ea528, {0, 0, 1, 2}, 0, 0},
        {byte_range(32), 0x3523581fe96e4c05, {0, 0, 0, 1}, 2, 2},
        {"block-0", 0x3f14b116efffd1dd, {0, 0, 0, 1}, 0, 0},
        {"block-1", 0xa5733bda406e3714, {0, 1, 2, 4}, 0, 0},
        {"block-2", 0x8c1393eba01494cf, {0, 1, 2, 3}, 0, 0},
        {"block-3", 0x134c442eb024eba5, {0, 0, 0, 0}, 0, 0},
        {"block-4", 0xbdf3e38400a78ebc, {0, 1, 2, 5}, 1, 1},
        {"block-5", 0xd518e518fbf71290, {0, 1, 3, 5}, 2, 2},
        {"block-6", 0xbc3b02255d55a247, {0, 1, 2, 5}, 0, 0},
        {"block-7", 0x8d7566bb289e842d, {0, 1, 2, 3}, 2, 2},
        {"block-8", 0x1be311725c1fdcc8, {0, 0, 0, 0}, 1, 1},
        {"block-9", 0xd8f2a36e29a01f45, {0, 1, 3, 5}, 1, 1},
        {"block-10", 0x3d80d5abd9b38176, {0, 0, 0, 1}, 1, 1},
        {"block-11", 0x8413541f5a57d23b, {0, 1, 2, 3}, 1, 1},
    };
    return v;
}

const std::vector<std::string> servers3 = {"10.0.0.1:9900", "10.0.0.2:9900", "10.0.0.3:9900"};
const std::vector<std::string> servers4 = {"10.0.0.1:9900", "10.0.0.2:9900", "10.0.0.3:9900",
                                           "10.0.0.4:9900"};

std::vector<std::uint64_t> random_hashes(std::uint64_t salt, std::size_t n) {
    auto g = memkv::test::rng(salt);
    std::vector<std::uint64_t> out;
    out.reserve(n);
    std::array<std::byte, 16> key{};
    for (std::size_t i = 0; i < n; ++i) {
        for (auto& b : key)
            b = std::byte(static_cast<std::uint8_t>(g()));
        out.push_back(key_hash(key));
    }
    return out;
}

} // namespace

TEST_CASE("Key hashes match the documented XXH3-64 test vectors", "[placement]") {
    for (const auto& v : vectors()) {
        INFO("key of " << v.key.size() << " bytes: " << v.key.substr(0, 40));
        REQUIRE(key_hash(v.key) == v.hash);
        const auto bytes = std::as_bytes(std::span<const char>(v.key.data(), v.key.size()));
        REQUIRE(key_hash(bytes) == v.hash);
    }
}

TEST_CASE("Shards match the documented test vectors for 1, 2, 4 and 7 shards", "[placement]") {
    const std::array<std::uint32_t, 4> counts = {1, 2, 4, 7};
    for (const auto& v : vectors()) {
        for (std::size_t i = 0; i < counts.size(); ++i) {
            INFO("hash " << v.hash << " over " << counts[i] << " shards");
            REQUIRE(shard_for(v.hash, counts[i]) == v.shards[i]);
        }
    }
    // edges of the multiply-shift
    constexpr auto max = std::numeric_limits<std::uint64_t>::max();
    STATIC_REQUIRE(shard_for(0, 7) == 0);
    STATIC_REQUIRE(shard_for(max, 7) == 6);
    STATIC_REQUIRE(shard_for(max, std::numeric_limits<std::uint32_t>::max()) ==
                   std::numeric_limits<std::uint32_t>::max() - 1);
    STATIC_REQUIRE(shard_for(std::uint64_t{1} << 63, 2) == 1);
    STATIC_REQUIRE(shard_for(std::uint64_t{1} << 63, 7) == 3);
    STATIC_REQUIRE(shard_for(max, 1) == 0);
    STATIC_REQUIRE(shard_for(12345, 0) == 0);
}

TEST_CASE("The shard function is the high half of a 128-bit product", "[placement]") {
    auto g = memkv::test::rng(0x7001);
    for (int i = 0; i < 100000; ++i) {
        const std::uint64_t h = g();
        const auto n = static_cast<std::uint32_t>(i % 3 == 0 ? g() : 1 + g() % 1024);
        __extension__ typedef unsigned __int128 u128;
        const auto expected = static_cast<std::uint32_t>((u128{h} * n) >> 64);
        REQUIRE(shard_for(h, n) == expected);
        if (n > 0) REQUIRE(shard_for(h, n) < n);
    }
}

TEST_CASE("Server seeds and rendezvous scores match the documented test vectors", "[placement]") {
    const placement p(servers4);
    const std::array<std::uint64_t, 4> seeds = {0x49302fc7282a264b, 0x3806d59dc8f6eb08,
                                                0x79c9b1fa12185fff, 0xf0fe41ba99f99ac7};
    for (std::size_t i = 0; i < 4; ++i) {
        REQUIRE(server_seed(servers4[i]) == seeds[i]);
        REQUIRE(p.seed(i) == seeds[i]);
        REQUIRE(p.identity(i) == servers4[i]);
    }
    struct score_vector {
        const char* key;
        std::array<std::uint64_t, 4> scores;
    };
    const score_vector scores[] = {
        {"abc", {0xaaea6e9407949309, 0x95e587415e9e0b80, 0x43eeac1a3997d43a, 0x8917140f5e156565}},
        {"a", {0x33f5f48cfa33a477, 0x0d8c846dac759273, 0x4321eac2352d0187, 0x9fef5f012ec68bb9}},
        {"block-0",
         {0xf14a2aca48e7abdc, 0x55fbf7ce954c6204, 0xbf181da0cd153737, 0x4c7ac5063d74533d}},
    };
    for (const auto& s : scores) {
        for (std::size_t i = 0; i < 4; ++i)
            REQUIRE(rendezvous_score(key_hash(s.key), seeds[i]) == s.scores[i]);
    }
    STATIC_REQUIRE(memkv::fmix64(0) == 0);
    STATIC_REQUIRE(memkv::fmix64(1) == 0xb456bcfc34c2cb2c);
}

TEST_CASE("Owners match the documented test vectors for three and four servers", "[placement]") {
    const placement p3(servers3);
    const placement p4(servers4);
    REQUIRE(p3.size() == 3);
    REQUIRE(p4.size() == 4);
    for (const auto& v : vectors()) {
        INFO("hash " << v.hash);
        REQUIRE(p3.server_for(v.hash) == v.owner3);
        REQUIRE(p4.server_for(v.hash) == v.owner4);
    }
}

TEST_CASE("Ties go to the lower index and one server owns everything", "[placement]") {
    const placement dup({"10.0.0.9:9900", "10.0.0.9:9900"});
    const placement one({"unix:/run/memkv.sock"});
    for (const auto h : random_hashes(0x7002, 1000)) {
        REQUIRE(dup.server_for(h) == 0);
        REQUIRE(one.server_for(h) == 0);
    }
}

TEST_CASE("Adding a fourth server moves a quarter of the keys, all onto it", "[placement]") {
    const placement p3(servers3);
    const placement p4(servers4);
    const auto hashes = random_hashes(0x7003, 100000);
    std::size_t moved = 0;
    for (const auto h : hashes) {
        const auto before = p3.server_for(h);
        const auto after = p4.server_for(h);
        if (before != after) {
            ++moved;
            REQUIRE(after == 3);
        }
    }
    const double fraction = static_cast<double>(moved) / static_cast<double>(hashes.size());
    INFO("moved " << moved << " of " << hashes.size());
    REQUIRE(fraction >= 0.22);
    REQUIRE(fraction <= 0.28);
}

TEST_CASE("Removing a server moves only that server's keys", "[placement]") {
    const placement p4(servers4);
    for (std::size_t removed = 0; removed < 4; ++removed) {
        std::vector<std::string> rest;
        for (std::size_t i = 0; i < 4; ++i)
            if (i != removed) rest.push_back(servers4[i]);
        const placement p3(rest);
        for (const auto h : random_hashes(0x7004 + removed, 25000)) {
            const auto& before = p4.identity(p4.server_for(h));
            const auto& after = p3.identity(p3.server_for(h));
            if (before != servers4[removed]) {
                REQUIRE(after == before);
            } else {
                REQUIRE(after != servers4[removed]);
            }
        }
    }
}

TEST_CASE("Server order does not change the owner identity", "[placement]") {
    const placement a(servers4);
    const placement b({servers4[2], servers4[0], servers4[3], servers4[1]});
    for (const auto h : random_hashes(0x7005, 10000))
        REQUIRE(a.identity(a.server_for(h)) == b.identity(b.server_for(h)));
}

TEST_CASE("Keys spread evenly over shards and servers", "[placement]") {
    const auto hashes = random_hashes(0x7006, 100000);
    std::array<std::size_t, 4> shards{};
    std::array<std::size_t, 4> owners{};
    const placement p4(servers4);
    for (const auto h : hashes) {
        ++shards[shard_for(h, 4)];
        ++owners[p4.server_for(h)];
    }
    for (std::size_t i = 0; i < 4; ++i) {
        INFO("shard " << i << ": " << shards[i] << ", server " << i << ": " << owners[i]);
        REQUIRE(shards[i] >= 23750);
        REQUIRE(shards[i] <= 26250);
        REQUIRE(owners[i] >= 23750);
        REQUIRE(owners[i] <= 26250);
    }
}
