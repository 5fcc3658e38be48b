// SPDX-License-Identifier: Apache-2.0
// Tests of the key ring, the frame MAC and the handshake's pure functions, including known-answer
// vectors computed independently (Python hmac/hashlib, HKDF written out per RFC 5869).
#include "support/catch.hpp"
#include "support/temp_env.hpp"
#include "support/seed.hpp"

#include <memkv/auth/frame_mac.hpp>
#include <memkv/auth/handshake.hpp>
#include <memkv/auth/key_ring.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <unistd.h>
#include <vector>

using namespace memkv::auth;

using memkv::test::env_guard;
using memkv::test::temp_file;

namespace {

constexpr std::string_view hex_a =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
constexpr std::string_view hex_b =
    "FFEEDDCCBBAA99887766554433221100ffeeddccbbaa99887766554433221100";

template <std::size_t N = 32>
std::array<std::byte, N> from_hex(std::string_view hex) {
    REQUIRE(hex.size() == 2 * N);
    auto nibble = [](char c) {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        return c - 'A' + 10;
    };
    std::array<std::byte, N> out{};
    for (std::size_t i = 0; i < N; ++i)
        out[i] = static_cast<std::byte>(nibble(hex[2 * i]) * 16 + nibble(hex[2 * i + 1]));
    return out;
}

template <std::size_t N>
std::array<std::byte, N> iota_bytes(unsigned start) {
    std::array<std::byte, N> out{};
    for (std::size_t i = 0; i < N; ++i)
        out[i] = static_cast<std::byte>(start + i);
    return out;
}

template <std::size_t N>
std::array<std::byte, N> random_array(std::mt19937_64& rng) {
    std::array<std::byte, N> out{};
    for (auto& b : out)
        b = static_cast<std::byte>(rng());
    return out;
}

hello sample_hello() {
    hello h;
    h.min_version = 1;
    h.max_version = 1;
    h.transport = 2;
    h.key_id = 7;
    h.client_nonce = iota_bytes<nonce_size>(0x20);
    return h;
}

challenge sample_challenge() {
    challenge c;
    c.version = 1;
    c.shard_count = 4;
    c.server_flags = 0;
    c.server_nonce = iota_bytes<nonce_size>(0x40);
    return c;
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Key ring

TEST_CASE("a key file with comments and blank lines parses into its entries", "[auth]") {
    const std::string text = "# memkv keys\n"
                             "\n"
                             "1 default " +
                             std::string(hex_a) +
                             "\n"
                             "   \t\n"
                             "42\tteam-a.prod_1   " +
                             std::string(hex_b) + "   # rotated in March\r\n" + "4294967295 x " +
                             std::string(hex_a); // no final newline
    std::string why;
    auto ring = key_ring::parse(text, &why);
    INFO(why);
    REQUIRE(ring);
    REQUIRE(ring->size() == 3);
    CHECK_FALSE(ring->empty());
    const key_entry* e = ring->find(42);
    REQUIRE(e != nullptr);
    CHECK(e->tenant == "team-a.prod_1");
    CHECK(e->secret == from_hex(hex_b));
    REQUIRE(ring->find(1) != nullptr);
    CHECK(ring->find(1)->secret == iota_bytes<32>(0));
    CHECK(ring->find(1)->tenant == "default");
    CHECK(ring->find(4294967295u) != nullptr);
    CHECK(ring->find(2) == nullptr);
    CHECK(ring->find(0) == nullptr);
    CHECK(ring->entries()[1].id == 42);
}

TEST_CASE("an empty or comment-only key file parses into an empty ring", "[auth]") {
    auto empty = key_ring::parse("");
    REQUIRE(empty);
    CHECK(empty->empty());
    auto comments = key_ring::parse("# nothing here\n\n   # still nothing\n");
    REQUIRE(comments);
    CHECK(comments->size() == 0);
}

TEST_CASE("bad key-file lines are rejected with a message naming the line", "[auth]") {
    const std::string a(hex_a);
    struct bad {
        std::string text;
        const char* why;
    };
    const bad cases[] = {
        {"1 t " + a.substr(0, 63), "short hex"},
        {"1 t " + a + "0", "long hex"},
        {"1 t " + a.substr(0, 62) + "zz", "non-hex digit"},
        {"1 t/x " + a, "bad tenant character"},
        {"1 " + std::string(65, 't') + " " + a, "tenant too long"},
        {"0 t " + a, "id 0"},
        {"-1 t " + a, "negative id"},
        {"4294967296 t " + a, "id too large"},
        {"1x t " + a, "id with trailing junk"},
        {"1 " + a, "missing field"},
        {"1 t " + a + " extra", "extra field"},
        {"1 t " + a + "\n2 u " + a + "\n1 v " + a, "duplicate id"},
    };
    for (const auto& c : cases) {
        INFO(c.why);
        std::string why;
        const std::string text = "# header\n\n" + c.text + "\n";
        auto ring = key_ring::parse(text, &why);
        REQUIRE_FALSE(ring);
        CHECK(ring.error() == memkv::errc::invalid_argument);
        INFO(why);
        // The bad line is the last line of the text (3, or 5 for the duplicate case).
        const bool names_line =
            why.find("line 3:") != std::string::npos || why.find("line 5:") != std::string::npos;
        CHECK(names_line);
        CHECK(why.find(a) == std::string::npos); // never echoes the secret
    }
}

TEST_CASE("a duplicate id names the duplicate", "[auth]") {
    std::string why;
    const std::string text = "5 a " + std::string(hex_a) + "\n5 b " + std::string(hex_b) + "\n";
    auto ring = key_ring::parse(text, &why);
    REQUIRE_FALSE(ring);
    CHECK(why.find("line 2") != std::string::npos);
    CHECK(why.find("duplicate") != std::string::npos);
}

TEST_CASE("key_ring::add refuses id 0, duplicate ids and invalid tenants", "[auth]") {
    key_ring ring;
    key_entry e{1, from_hex(hex_a), "t"};
    REQUIRE(ring.add(e));
    CHECK(ring.add(e).error() == memkv::errc::invalid_argument);
    key_entry zero{0, from_hex(hex_a), "t"};
    CHECK(ring.add(zero).error() == memkv::errc::invalid_argument);
    key_entry bad_tenant{2, from_hex(hex_a), "a b"};
    CHECK(ring.add(bad_tenant).error() == memkv::errc::invalid_argument);
    key_entry empty_tenant{3, from_hex(hex_a), ""};
    CHECK(ring.add(empty_tenant).error() == memkv::errc::invalid_argument);
    CHECK(ring.size() == 1);
    // Growth keeps every entry intact.
    for (std::uint32_t id = 10; id < 40; ++id) {
        key_entry k{id, iota_bytes<32>(id), "t" + std::to_string(id)};
        REQUIRE(ring.add(k));
    }
    REQUIRE(ring.size() == 31);
    for (std::uint32_t id = 10; id < 40; ++id) {
        const auto* k = ring.find(id);
        REQUIRE(k != nullptr);
        CHECK(k->secret == iota_bytes<32>(id));
        CHECK(k->tenant == "t" + std::to_string(id));
    }
}

TEST_CASE("valid_tenant accepts 1 to 64 characters of [A-Za-z0-9._-]", "[auth]") {
    CHECK(valid_tenant("a"));
    CHECK(valid_tenant("Model-7b.v2_fp16"));
    CHECK(valid_tenant(std::string(64, 'x')));
    CHECK_FALSE(valid_tenant(""));
    CHECK_FALSE(valid_tenant(std::string(65, 'x')));
    CHECK_FALSE(valid_tenant("a:b"));
    CHECK_FALSE(valid_tenant("a b"));
    CHECK_FALSE(valid_tenant("caf\xc3\xa9"));
}

TEST_CASE("MEMKV_AUTH_KEY accepts HEX64, ID:HEX64 and ID:TENANT:HEX64", "[auth]") {
    auto plain = key_ring::parse_key_spec(hex_a);
    REQUIRE(plain);
    CHECK(plain->id == 1);
    CHECK(plain->tenant == "default");
    CHECK(plain->secret == from_hex(hex_a));

    auto with_id = key_ring::parse_key_spec("9:" + std::string(hex_b));
    REQUIRE(with_id);
    CHECK(with_id->id == 9);
    CHECK(with_id->tenant == "default");
    CHECK(with_id->secret == from_hex(hex_b));

    auto full = key_ring::parse_key_spec(" 12:llama-70b:" + std::string(hex_a) + "\n");
    REQUIRE(full);
    CHECK(full->id == 12);
    CHECK(full->tenant == "llama-70b");
    CHECK(full->secret == from_hex(hex_a));
}

TEST_CASE("malformed MEMKV_AUTH_KEY values are rejected", "[auth]") {
    const std::string a(hex_a);
    const std::string cases[] = {
        "",
        a.substr(0, 63),
        a + "00",
        "0:" + a,
        "x:" + a,
        ":" + a,
        "1::" + a,
        "1:bad tenant:" + a,
        "1:t:" + a.substr(0, 62) + "gg",
        "1:t:x:" + a,
        "1:t:" + a + ":",
    };
    for (const auto& spec : cases) {
        INFO("spec: '" << spec << "'");
        std::string why;
        auto e = key_ring::parse_key_spec(spec, &why);
        REQUIRE_FALSE(e);
        CHECK(e.error() == memkv::errc::invalid_argument);
        CHECK_FALSE(why.empty());
    }
}

TEST_CASE("key_ring::from_file reads a key file and reports a missing one", "[auth]") {
    temp_file file("3 tenant-x " + std::string(hex_b) + "\n");
    auto ring = key_ring::from_file(file.path());
    REQUIRE(ring);
    REQUIRE(ring->size() == 1);
    CHECK(ring->find(3)->tenant == "tenant-x");

    std::string why;
    auto missing = key_ring::from_file(file.path() + ".does-not-exist", &why);
    REQUIRE_FALSE(missing);
    CHECK(missing.error() == std::error_code(ENOENT, std::system_category()));
    CHECK(why.find("does-not-exist") != std::string::npos);

    temp_file bad("3 tenant-x " + std::string(hex_b).substr(1) + "\n");
    auto invalid = key_ring::from_file(bad.path(), &why);
    REQUIRE_FALSE(invalid);
    CHECK(invalid.error() == memkv::errc::invalid_argument);
    CHECK(why.find(bad.path()) != std::string::npos);
    CHECK(why.find("line 1") != std::string::npos);
}

TEST_CASE("key_ring::from_environment unions MEMKV_AUTH_KEY and MEMKV_AUTH_KEY_FILE", "[auth]") {
    temp_file file("2 file-tenant " + std::string(hex_b) + "\n");
    {
        env_guard k("MEMKV_AUTH_KEY", nullptr);
        env_guard f("MEMKV_AUTH_KEY_FILE", nullptr);
        auto ring = key_ring::from_environment();
        REQUIRE(ring);
        CHECK(ring->empty());
    }
    {
        env_guard k("MEMKV_AUTH_KEY", std::string(hex_a).c_str());
        env_guard f("MEMKV_AUTH_KEY_FILE", "");
        auto ring = key_ring::from_environment();
        REQUIRE(ring);
        REQUIRE(ring->size() == 1);
        CHECK(ring->find(1)->secret == from_hex(hex_a));
    }
    {
        env_guard k("MEMKV_AUTH_KEY", nullptr);
        env_guard f("MEMKV_AUTH_KEY_FILE", file.path().c_str());
        auto ring = key_ring::from_environment();
        REQUIRE(ring);
        REQUIRE(ring->size() == 1);
        CHECK(ring->find(2)->tenant == "file-tenant");
    }
    {
        env_guard k("MEMKV_AUTH_KEY", ("5:env-tenant:" + std::string(hex_a)).c_str());
        env_guard f("MEMKV_AUTH_KEY_FILE", file.path().c_str());
        auto ring = key_ring::from_environment();
        REQUIRE(ring);
        REQUIRE(ring->size() == 2);
        CHECK(ring->find(5)->tenant == "env-tenant");
        CHECK(ring->find(2)->tenant == "file-tenant");
    }
    {
        env_guard k("MEMKV_AUTH_KEY", ("2:" + std::string(hex_a)).c_str());
        env_guard f("MEMKV_AUTH_KEY_FILE", file.path().c_str());
        std::string why;
        auto ring = key_ring::from_environment(&why);
        REQUIRE_FALSE(ring);
        CHECK(ring.error() == memkv::errc::invalid_argument);
        CHECK(why.find("MEMKV_AUTH_KEY") != std::string::npos);
    }
    {
        env_guard k("MEMKV_AUTH_KEY", "not-a-key");
        env_guard f("MEMKV_AUTH_KEY_FILE", nullptr);
        std::string why;
        auto ring = key_ring::from_environment(&why);
        REQUIRE_FALSE(ring);
        CHECK(why.rfind("MEMKV_AUTH_KEY:", 0) == 0);
    }
}

TEST_CASE("random_bytes fills buffers with fresh bytes", "[auth]") {
    std::array<std::byte, 32> a{};
    std::array<std::byte, 32> b{};
    REQUIRE(random_bytes(a));
    REQUIRE(random_bytes(b));
    CHECK(a != b);
    CHECK(a != std::array<std::byte, 32>{});
    REQUIRE(random_bytes(std::span<std::byte>{}));
}

TEST_CASE("equal_constant_time compares contents and sizes", "[auth]") {
    const auto a = iota_bytes<32>(0);
    auto b = a;
    CHECK(equal_constant_time(a, b));
    b[31] ^= std::byte{1};
    CHECK_FALSE(equal_constant_time(a, b));
    CHECK_FALSE(equal_constant_time(std::span(a), std::span(a).first(31)));
    CHECK(equal_constant_time(std::span<const std::byte>{}, std::span<const std::byte>{}));
}

// ---------------------------------------------------------------------------------------------
// Frame MAC

TEST_CASE("frame_mac matches an independently computed HMAC-SHA256 vector", "[auth]") {
    const auto key = from_hex("59d431490c80c9eac640be86cd8e22572ee746568b0a1fcb2d76c19b37e0262d");
    auto mac = frame_mac::create(key);
    REQUIRE(mac);
    const auto header = iota_bytes<56>(0);
    const std::array<std::byte, 3> body{std::byte{'a'}, std::byte{'b'}, std::byte{'c'}};
    CHECK(mac->compute(5, header, body) == 0x48a2e1f6598242f3ull);
    // Repeated calls start afresh from the keyed state.
    CHECK(mac->compute(5, header, body) == 0x48a2e1f6598242f3ull);
    // A header prefix split differently from the body gives the same MAC of the same bytes.
    std::array<std::byte, 59> joined{};
    std::copy(header.begin(), header.end(), joined.begin());
    std::copy(body.begin(), body.end(), joined.begin() + 56);
    CHECK(mac->compute(5, joined, {}) == 0x48a2e1f6598242f3ull);
    CHECK(mac->compute(5, std::span(joined).first(20), std::span(joined).subspan(20)) ==
          0x48a2e1f6598242f3ull);
}

TEST_CASE("frame_mac verifies its own MAC and rejects every single-bit change", "[auth]") {
    auto rng = memkv::test::rng(0xF3A);
    const auto key = random_array<32>(rng);
    auto mac = frame_mac::create(key);
    REQUIRE(mac);
    auto header = random_array<56>(rng);
    std::vector<std::byte> body(1 + rng() % 300);
    for (auto& b : body)
        b = static_cast<std::byte>(rng());
    const std::uint64_t seq = rng();
    const std::uint64_t tag = mac->compute(seq, header, body);
    REQUIRE(mac->verify(seq, header, body, tag));

    for (std::size_t bit = 0; bit < header.size() * 8; ++bit) {
        header[bit / 8] ^= std::byte(1u << (bit % 8));
        CHECK_FALSE(mac->verify(seq, header, body, tag));
        header[bit / 8] ^= std::byte(1u << (bit % 8));
    }
    for (std::size_t bit = 0; bit < body.size() * 8; ++bit) {
        body[bit / 8] ^= std::byte(1u << (bit % 8));
        CHECK_FALSE(mac->verify(seq, header, body, tag));
        body[bit / 8] ^= std::byte(1u << (bit % 8));
    }
    for (int bit = 0; bit < 64; ++bit) {
        CHECK_FALSE(mac->verify(seq, header, body, tag ^ (std::uint64_t{1} << bit)));
        CHECK_FALSE(mac->verify(seq ^ (std::uint64_t{1} << bit), header, body, tag));
    }
    CHECK_FALSE(mac->verify(seq + 1, header, body, tag));
    // Dropping or appending a body byte fails too.
    CHECK_FALSE(mac->verify(seq, header, std::span(body).first(body.size() - 1), tag));
    body.push_back(std::byte{0});
    CHECK_FALSE(mac->verify(seq, header, body, tag));
    body.pop_back();
    REQUIRE(mac->verify(seq, header, body, tag));
}

TEST_CASE("frame_mac under a different key neither matches nor verifies", "[auth]") {
    auto rng = memkv::test::rng(0xF3B);
    auto key = random_array<32>(rng);
    auto mac = frame_mac::create(key);
    key[0] ^= std::byte{1};
    auto other = frame_mac::create(key);
    REQUIRE(mac);
    REQUIRE(other);
    const auto header = random_array<56>(rng);
    const auto body = random_array<64>(rng);
    const auto tag = mac->compute(1, header, body);
    CHECK(other->compute(1, header, body) != tag);
    CHECK_FALSE(other->verify(1, header, body, tag));
    CHECK(mac->verify(1, header, body, tag));
}

TEST_CASE("a moved frame_mac keeps working and the moved-from one verifies nothing", "[auth]") {
    const auto key = iota_bytes<32>(9);
    auto created = frame_mac::create(key);
    REQUIRE(created);
    const auto header = iota_bytes<56>(1);
    const auto tag = created->compute(3, header, {});
    frame_mac moved(std::move(*created));
    CHECK(moved.verify(3, header, {}, tag));
    CHECK_FALSE(created->verify(3, header, {}, created->compute(3, header, {})));
    auto again = frame_mac::create(iota_bytes<32>(10));
    REQUIRE(again);
    *again = std::move(moved);
    CHECK(again->verify(3, header, {}, tag));
}

// ---------------------------------------------------------------------------------------------
// Handshake

TEST_CASE("hello, challenge and proof messages round-trip through encode and decode", "[auth]") {
    auto rng = memkv::test::rng(0x4A5);
    hello h;
    h.min_version = 1;
    h.max_version = 3;
    h.transport = 2;
    h.key_id = static_cast<std::uint32_t>(rng());
    h.client_nonce = random_array<nonce_size>(rng);
    std::array<std::byte, hello_size> hb{};
    encode(h, hb);
    CHECK(hb[0] == std::byte{'M'});
    CHECK(hb[3] == std::byte{'H'});
    auto h2 = decode_hello(hb);
    REQUIRE(h2);
    CHECK(h2->min_version == 1);
    CHECK(h2->max_version == 3);
    CHECK(h2->transport == 2);
    CHECK(h2->key_id == h.key_id);
    CHECK(h2->client_nonce == h.client_nonce);

    challenge c;
    c.version = 2;
    c.shard_count = 17;
    c.server_flags = 0xA5A5A5A5u;
    c.server_nonce = random_array<nonce_size>(rng);
    c.server_proof = random_array<proof_size>(rng);
    std::array<std::byte, challenge_size> cb{};
    encode(c, cb);
    CHECK(cb[3] == std::byte{'C'});
    auto c2 = decode_challenge(cb);
    REQUIRE(c2);
    CHECK(c2->version == 2);
    CHECK(c2->shard_count == 17);
    CHECK(c2->server_flags == 0xA5A5A5A5u);
    CHECK(c2->server_nonce == c.server_nonce);
    CHECK(c2->server_proof == c.server_proof);

    c.version = 0; // "no common version" still decodes
    encode(c, cb);
    REQUIRE(decode_challenge(cb));
    CHECK(decode_challenge(cb)->version == 0);

    proof_message p;
    p.client_proof = random_array<proof_size>(rng);
    std::array<std::byte, proof_message_size> pb{};
    encode(p, pb);
    CHECK(pb[3] == std::byte{'P'});
    auto p2 = decode_proof_message(pb);
    REQUIRE(p2);
    CHECK(p2->client_proof == p.client_proof);
}

TEST_CASE("the handshake messages have the documented byte layout", "[auth]") {
    std::array<std::byte, hello_size> hb{};
    encode(sample_hello(), hb);
    const auto expect = [](std::span<const std::byte> bytes, std::size_t at,
                           std::initializer_list<unsigned> values) {
        for (unsigned v : values)
            CHECK(std::to_integer<unsigned>(bytes[at++]) == v);
    };
    expect(hb, 0, {0x4D, 0x4B, 0x56, 0x48, 1, 1, 2, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0x20, 0x21});
    expect(hb, 47, {0x3F, 0, 0});

    challenge c = sample_challenge();
    c.server_flags = 0x01020304;
    c.server_proof = iota_bytes<proof_size>(0x80);
    std::array<std::byte, challenge_size> cb{};
    encode(c, cb);
    expect(cb, 0, {0x4D, 0x4B, 0x56, 0x43, 1, 0, 0, 0, 4, 0, 0, 0, 4, 3, 2, 1, 0x40});
    expect(cb, 47, {0x5F, 0x80});
    expect(cb, 79, {0x9F, 0, 0});
}

TEST_CASE("decoding rejects a bad magic, nonzero reserved bytes and bad version ranges", "[auth]") {
    std::array<std::byte, hello_size> hb{};
    encode(sample_hello(), hb);
    REQUIRE(decode_hello(hb));
    for (std::size_t i = 0; i < 4; ++i) {
        auto bad = hb;
        bad[i] ^= std::byte{0x20};
        CHECK(decode_hello(bad).error() == memkv::errc::protocol);
    }
    for (std::size_t i : {7, 12, 13, 14, 15, 48, 55, 63}) {
        INFO("hello reserved byte " << i);
        auto bad = hb;
        bad[i] = std::byte{1};
        CHECK(decode_hello(bad).error() == memkv::errc::protocol);
    }
    {
        hello h = sample_hello();
        h.min_version = 3;
        h.max_version = 2;
        encode(h, hb);
        CHECK(decode_hello(hb).error() == memkv::errc::protocol);
        h.min_version = 0;
        encode(h, hb);
        CHECK(decode_hello(hb).error() == memkv::errc::protocol);
    }

    std::array<std::byte, challenge_size> cb{};
    encode(sample_challenge(), cb);
    REQUIRE(decode_challenge(cb));
    auto bad_magic = cb;
    bad_magic[3] = std::byte{'H'};
    CHECK(decode_challenge(bad_magic).error() == memkv::errc::protocol);
    for (std::size_t i : {5, 6, 7, 80, 88, 95}) {
        INFO("challenge reserved byte " << i);
        auto bad = cb;
        bad[i] = std::byte{0x80};
        CHECK(decode_challenge(bad).error() == memkv::errc::protocol);
    }

    std::array<std::byte, proof_message_size> pb{};
    encode(proof_message{}, pb);
    REQUIRE(decode_proof_message(pb));
    auto bad_proof_magic = pb;
    bad_proof_magic[0] = std::byte{0};
    CHECK(decode_proof_message(bad_proof_magic).error() == memkv::errc::protocol);
    for (std::size_t i : {4, 10, 15, 48, 63}) {
        INFO("proof reserved byte " << i);
        auto bad = pb;
        bad[i] = std::byte{1};
        CHECK(decode_proof_message(bad).error() == memkv::errc::protocol);
    }
    // A hello is not a challenge-sized message's magic either way round.
    std::array<std::byte, proof_message_size> hello_as_proof{};
    encode(sample_hello(), hello_as_proof);
    CHECK(decode_proof_message(hello_as_proof).error() == memkv::errc::protocol);
}

TEST_CASE("the transcript proofs and session keys match independently computed vectors", "[auth]") {
    const auto secret = iota_bytes<32>(0);
    std::array<std::byte, hello_size> hb{};
    encode(sample_hello(), hb);
    challenge c = sample_challenge();
    std::array<std::byte, challenge_size> cb{};
    encode(c, cb);
    const proof sp = compute_server_proof(secret, hb, std::span(cb).first(48));
    CHECK(sp == from_hex("24c8ce0c52c7ef935b368329cb8709f87bf9661f0860aa9fbeb3e6ba3f1292e6"));
    // Passing the whole challenge uses only its first 48 bytes.
    CHECK(compute_server_proof(secret, hb, cb) == sp);

    c.server_proof = sp;
    encode(c, cb);
    const proof cp = compute_client_proof(secret, hb, std::span(cb).first(80));
    CHECK(cp == from_hex("c54b2baa0903c1caac89a121e208b00e06f1856b54233acce0cbe8624f897997"));
    CHECK(compute_client_proof(secret, hb, cb) == cp);

    auto keys =
        derive_session_keys(secret, iota_bytes<nonce_size>(0x20), iota_bytes<nonce_size>(0x40));
    REQUIRE(keys);
    CHECK(keys->client_to_server ==
          from_hex("59d431490c80c9eac640be86cd8e22572ee746568b0a1fcb2d76c19b37e0262d"));
    CHECK(keys->server_to_client ==
          from_hex("ba34103ce45bec0edeb035f5b55717bea4c08f2d991209021fc131cfc8f52e15"));
}

TEST_CASE("proofs change when any byte of the hello or the challenge changes", "[auth]") {
    auto rng = memkv::test::rng(0x9F0);
    const auto secret = random_array<32>(rng);
    const auto hb = random_array<hello_size>(rng);
    const auto cb = random_array<challenge_size>(rng);
    const proof sp = compute_server_proof(secret, hb, cb);
    const proof cp = compute_client_proof(secret, hb, cb);
    CHECK(sp != cp);

    for (std::size_t i = 0; i < hb.size(); ++i) {
        auto h2 = hb;
        h2[i] ^= std::byte{1};
        CHECK(compute_server_proof(secret, h2, cb) != sp);
        CHECK(compute_client_proof(secret, h2, cb) != cp);
    }
    for (std::size_t i = 0; i < cb.size(); ++i) {
        auto c2 = cb;
        c2[i] ^= std::byte{0x80};
        INFO("challenge byte " << i);
        // The server proof covers [0, 48), the client proof [0, 80).
        CHECK((compute_server_proof(secret, hb, c2) != sp) == (i < 48));
        CHECK((compute_client_proof(secret, hb, c2) != cp) == (i < 80));
    }
    auto other = secret;
    other[5] ^= std::byte{4};
    CHECK(compute_server_proof(other, hb, cb) != sp);
    CHECK(compute_client_proof(other, hb, cb) != cp);
    CHECK(compute_server_proof(no_auth_secret, hb, cb) != sp);
}

TEST_CASE("session keys are deterministic and depend on the secret and both nonces", "[auth]") {
    auto rng = memkv::test::rng(0x5E5);
    const auto secret = random_array<32>(rng);
    const auto cn = random_array<nonce_size>(rng);
    const auto sn = random_array<nonce_size>(rng);
    auto k1 = derive_session_keys(secret, cn, sn);
    auto k2 = derive_session_keys(secret, cn, sn);
    REQUIRE(k1);
    REQUIRE(k2);
    CHECK(k1->client_to_server == k2->client_to_server);
    CHECK(k1->server_to_client == k2->server_to_client);
    CHECK(k1->client_to_server != k1->server_to_client);

    auto cn2 = cn;
    cn2[0] ^= std::byte{1};
    auto sn2 = sn;
    sn2[31] ^= std::byte{1};
    auto secret2 = secret;
    secret2[17] ^= std::byte{1};
    for (const auto& k :
         {derive_session_keys(secret, cn2, sn), derive_session_keys(secret, cn, sn2),
          derive_session_keys(secret2, cn, sn), derive_session_keys(secret, sn, cn)}) {
        REQUIRE(k);
        CHECK(k->client_to_server != k1->client_to_server);
        CHECK(k->server_to_client != k1->server_to_client);
    }
    auto dev = derive_session_keys(no_auth_secret, cn, sn);
    REQUIRE(dev);
    CHECK(dev->client_to_server != dev->server_to_client);
}

TEST_CASE("a full handshake between a client and a server agrees on keys that MAC frames",
          "[auth]") {
    // Client side.
    key_ring client_ring;
    REQUIRE(client_ring.add(key_entry{7, from_hex(hex_a), "tenant"}));
    const key_entry& ck = *client_ring.find(7);
    hello h;
    h.min_version = 1;
    h.max_version = 1;
    h.key_id = ck.id;
    REQUIRE(random_bytes(h.client_nonce));
    std::array<std::byte, hello_size> hb{};
    encode(h, hb);

    // Server side: look up the key, answer with a challenge carrying its proof.
    auto server_ring = key_ring::parse("7 tenant " + std::string(hex_a));
    REQUIRE(server_ring);
    auto sh = decode_hello(hb);
    REQUIRE(sh);
    const key_entry* sk = server_ring->find(sh->key_id);
    REQUIRE(sk != nullptr);
    challenge c;
    c.version = 1;
    c.shard_count = 2;
    REQUIRE(random_bytes(c.server_nonce));
    std::array<std::byte, challenge_size> cb{};
    encode(c, cb);
    c.server_proof = compute_server_proof(sk->secret, hb, std::span(cb).first(48));
    encode(c, cb);

    // Client checks the server, then proves itself.
    auto cc = decode_challenge(cb);
    REQUIRE(cc);
    CHECK(equal_constant_time(cc->server_proof, compute_server_proof(ck.secret, hb, cb)));
    proof_message pm{compute_client_proof(ck.secret, hb, cb)};
    std::array<std::byte, proof_message_size> pb{};
    encode(pm, pb);

    // Server checks the client.
    auto sp = decode_proof_message(pb);
    REQUIRE(sp);
    CHECK(equal_constant_time(sp->client_proof, compute_client_proof(sk->secret, hb, cb)));
    // A client holding another secret fails.
    CHECK_FALSE(
        equal_constant_time(sp->client_proof, compute_client_proof(from_hex(hex_b), hb, cb)));

    auto client_keys = derive_session_keys(ck.secret, h.client_nonce, cc->server_nonce);
    auto server_keys = derive_session_keys(sk->secret, sh->client_nonce, c.server_nonce);
    REQUIRE(client_keys);
    REQUIRE(server_keys);
    auto client_tx = frame_mac::create(client_keys->client_to_server);
    auto server_rx = frame_mac::create(server_keys->client_to_server);
    auto server_tx = frame_mac::create(server_keys->server_to_client);
    REQUIRE(client_tx);
    REQUIRE(server_rx);
    REQUIRE(server_tx);
    const auto header = iota_bytes<56>(3);
    const auto tag = client_tx->compute(0, header, {});
    CHECK(server_rx->verify(0, header, {}, tag));
    CHECK_FALSE(server_tx->verify(0, header, {}, tag)); // directions have different keys
}
