// SPDX-License-Identifier: Apache-2.0
// Round trips through a real in-process server (memory store, 2 shards) and one client:
// values of every size, overwrite, ranges, scatter gets, metadata, misses, exists, del,
// if_absent, match_prefix, odd keys, Unix sockets, per-server transport choice and the
// asynchronous API.
#include "support/catch.hpp"
#include "support/integration.hpp"
#include "support/round_trip_checks.hpp"
#include "support/seed.hpp"
#include "support/server_fixture.hpp"

#include <poll.h>
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>

using namespace memkv;
using memkv::test::as_bytes;
using memkv::test::mismatch;
using memkv::test::pattern;
using memkv::test::server_fixture;

namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * 1024;

std::span<const std::byte> sub(const std::vector<std::byte>& v, std::size_t off, std::size_t n) {
    return std::span<const std::byte>(v).subspan(off, n);
}

} // namespace

TEST_CASE("Values of every size round-trip byte for byte", "[integration][round_trip][sizes]") {
    server_fixture fx;
    auto c = fx.client();
    memkv::test::check_sizes_round_trip(*c, "size");
}

TEST_CASE("An overwrite replaces the value and its size", "[integration][round_trip]") {
    server_fixture fx;
    auto c = fx.client();
    const auto v1 = pattern(1, 3 * MiB + 5);
    const auto v2 = pattern(2, 4097);
    const auto v3 = pattern(3, 0);
    REQUIRE(c->put("over", v1).has_value());
    REQUIRE(c->put("over", v2).has_value());
    auto got = c->get("over");
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    CHECK(mismatch(**got, v2) == "");

    // Through exists: the size is the new one.
    operation op;
    op.kind = op_kind::exists;
    op.key = "over";
    REQUIRE(c->run({&op, 1}).has_value());
    CHECK(!op.status);
    CHECK(op.exists);
    CHECK(op.size == v2.size());

    // Down to an empty value and back up to a large one.
    REQUIRE(c->put("over", v3).has_value());
    got = c->get("over");
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    CHECK((*got)->empty());
    REQUIRE(c->put("over", v1).has_value());
    got = c->get("over");
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    CHECK(mismatch(**got, v1) == "");
}

TEST_CASE("Range reads return exactly the requested bytes", "[integration][round_trip][range]") {
    server_fixture fx;
    auto c = fx.client();
    const std::size_t size = 3'000'001; // three 1 MiB buffers, twelve 256 KiB CRC chunks
    const auto v = pattern(77, size);
    REQUIRE(c->put("range", v).has_value());

    struct range_case {
        std::size_t off, len; // requested (len 0 = to the end)
        std::size_t want_len; // bytes expected from off
    };
    const std::vector<range_case> cases{
        {0, 100, 100},               // start
        {0, 0, size},                // whole value
        {12345, 1, 1},               // one byte in the middle
        {1'500'000, 4096, 4096},     // middle
        {256 * KiB - 10, 20, 20},    // across the first CRC chunk boundary
        {3 * 256 * KiB - 1, 2, 2},   // across a CRC chunk boundary, 2 bytes
        {MiB - 7, 14, 14},           // across the first buffer boundary
        {MiB - 1, MiB + 2, MiB + 2}, // spans three buffers
        {2 * MiB - 5, 10, 10},       // across the second buffer boundary
        {100, 2'500'000, 2'500'000}, // many chunks and buffers
        {size - 10, 0, 10},          // the end, length 0 = to the end
        {size - 10, 100, 10},        // clipped to the end
        {size - 1, 1, 1},            // the last byte
        {MiB, 0, size - MiB},        // from a buffer boundary to the end
        {size, 0, 0},                // offset == size: empty
        {size, 5, 0},                // offset == size with a length: empty
    };
    for (const auto& rc : cases) {
        INFO("offset " << rc.off << " length " << rc.len);
        auto got = c->get_range("range", rc.off, rc.len);
        REQUIRE(got.has_value());
        REQUIRE(got->has_value());
        CHECK(mismatch(**got, sub(v, rc.off, rc.want_len)) == "");

        // The same range through an operation: value_size is the stored size.
        operation op;
        op.kind = op_kind::get;
        op.key = "range";
        op.offset = rc.off;
        op.length = rc.len;
        REQUIRE(c->run({&op, 1}).has_value());
        CHECK(!op.status);
        CHECK(op.size == rc.want_len);
        CHECK(op.value_size == size);
    }

    SECTION("an offset past the end is an error and not data") {
        for (std::size_t off : {size + 1, size + MiB, std::size_t{1} << 40}) {
            INFO("offset " << off);
            auto got = c->get_range("range", off, 0);
            REQUIRE_FALSE(got.has_value());
            CHECK(got.error() == errc::invalid_argument);
            auto got2 = c->get_range("range", off, 7);
            REQUIRE_FALSE(got2.has_value());
            CHECK(got2.error() == errc::invalid_argument);
        }
        // The connection is still good.
        auto ok = c->get_range("range", 0, 10);
        REQUIRE(ok.has_value());
        REQUIRE(ok->has_value());
        CHECK(mismatch(**ok, sub(v, 0, 10)) == "");
    }

    SECTION("a range of a missing key is a miss") {
        auto got = c->get_range("range-absent", 10, 10);
        REQUIRE(got.has_value());
        CHECK_FALSE(got->has_value());
    }
}

TEST_CASE("Scatter gets fill several caller fragments in order",
          "[integration][round_trip][scatter]") {
    server_fixture fx;
    auto c = fx.client();

    SECTION("three fragments of odd sizes") {
        const auto v = pattern(5, 100'003);
        REQUIRE(c->put("scatter3", v).has_value());
        std::vector<std::byte> a(1), b(50'000), d(50'002);
        auto n = c->get_into("scatter3", {std::span(a), std::span(b), std::span(d)});
        REQUIRE(n.has_value());
        REQUIRE(n->has_value());
        CHECK(**n == v.size());
        CHECK(mismatch(a, sub(v, 0, 1)) == "");
        CHECK(mismatch(b, sub(v, 1, 50'000)) == "");
        CHECK(mismatch(d, sub(v, 50'001, 50'002)) == "");
    }

    SECTION("64 fragments of 16 KiB hold a 1 MiB value") {
        const auto v = pattern(6, MiB);
        REQUIRE(c->put("scatter64", v).has_value());
        std::vector<std::byte> area(MiB + 64 * 64, std::byte{0xEE});
        std::vector<std::span<std::byte>> frags;
        // Fragments with gaps between them: a write outside a fragment shows in a gap.
        for (std::size_t i = 0; i < 64; ++i)
            frags.emplace_back(area.data() + i * (16 * KiB + 64), 16 * KiB);
        auto n = c->get_into("scatter64", frags);
        REQUIRE(n.has_value());
        REQUIRE(n->has_value());
        CHECK(**n == MiB);
        for (std::size_t i = 0; i < 64; ++i) {
            INFO("fragment " << i);
            CHECK(mismatch(frags[i], sub(v, i * 16 * KiB, 16 * KiB)) == "");
            for (std::size_t g = 0; g < 64; ++g)
                REQUIRE(area[i * (16 * KiB + 64) + 16 * KiB + g] == std::byte{0xEE});
        }
    }

    SECTION("a range lands in fragments that cross buffer boundaries") {
        const auto v = pattern(7, 3 * MiB);
        REQUIRE(c->put("scatter-range", v).has_value());
        std::vector<std::byte> a(7), b(MiB), d(MiB);
        const std::size_t off = MiB - 3, len = 7 + 2 * MiB - 100;
        auto n = c->get_into("scatter-range", {std::span(a), std::span(b), std::span(d)}, off, len);
        REQUIRE(n.has_value());
        REQUIRE(n->has_value());
        CHECK(**n == len);
        CHECK(mismatch(a, sub(v, off, 7)) == "");
        CHECK(mismatch(b, sub(v, off + 7, MiB)) == "");
        CHECK(mismatch(std::span<const std::byte>(d).first(MiB - 100),
                       sub(v, off + 7 + MiB, MiB - 100)) == "");
    }

    SECTION("fragments larger than the value are filled from the start") {
        const auto v = pattern(8, 5000);
        REQUIRE(c->put("scatter-big", v).has_value());
        std::vector<std::byte> a(3000), b(3000, std::byte{0x11});
        auto n = c->get_into("scatter-big", {std::span(a), std::span(b)});
        REQUIRE(n.has_value());
        REQUIRE(n->has_value());
        CHECK(**n == 5000);
        CHECK(mismatch(a, sub(v, 0, 3000)) == "");
        CHECK(mismatch(std::span<const std::byte>(b).first(2000), sub(v, 3000, 2000)) == "");
        CHECK(std::all_of(b.begin() + 2000, b.end(),
                          [](std::byte x) { return x == std::byte{0x11}; }));
    }
}

TEST_CASE("Fragments too small for the value fail promptly and leave the connection usable",
          "[integration][round_trip][scatter]") {
    // Regression: the client used to drop the payload of such a request (frame_action::discard
    // skips on_payload()), so a one-chunk value completed only at the request timeout and a
    // multi-chunk one failed the offset check as a "protocol violation" that tore down every
    // connection to the server.
    server_fixture fx;
    client_config cc;
    cc.request_timeout = std::chrono::milliseconds(3000);
    auto c = fx.client(cc);
    const auto bystander = pattern(10, 100);
    REQUIRE(c->put("bystander", bystander).has_value());
    std::size_t size = 0;
    SECTION("a value of several chunks") {
        size = 2 * MiB + 3;
    }
    SECTION("a value of one chunk") {
        size = 300'000;
    }
    const auto v = pattern(9, size);
    REQUIRE(c->put("small-frags", v).has_value());

    std::vector<std::byte> a(size / 2), b(1000);
    const auto t0 = std::chrono::steady_clock::now();
    auto n = c->get_into("small-frags", {std::span(a), std::span(b)});
    const auto elapsed = std::chrono::steady_clock::now() - t0;
    REQUIRE_FALSE(n.has_value());
    INFO("error: " << n.error().message());
    CHECK(n.error() == errc::too_large);
    CHECK(elapsed < std::chrono::milliseconds(1500)); // not the request timeout
    auto other = c->get("bystander");
    INFO("bystander: " << (other ? std::string("ok") : other.error().message()));
    REQUIRE(other.has_value());
    REQUIRE(other->has_value());
    CHECK(mismatch(**other, bystander) == "");
}

TEST_CASE("Metadata of up to 256 bytes comes back with get and exists",
          "[integration][round_trip][metadata]") {
    server_fixture fx;
    auto c = fx.client();
    const std::vector<std::size_t> meta_sizes{0, 1, 17, 256};
    std::vector<std::vector<std::byte>> metas;
    std::vector<std::string> keys;
    for (auto ms : meta_sizes) {
        keys.push_back("meta-" + std::to_string(ms));
        metas.push_back(pattern(1000 + ms, ms));
        put_options opt;
        opt.meta = metas.back();
        REQUIRE(c->put(keys.back(), pattern(ms, 3 * ms + 1), opt).has_value());
    }
    for (std::size_t i = 0; i < keys.size(); ++i) {
        INFO("metadata size " << meta_sizes[i]);
        std::vector<std::byte> meta{std::byte{0x42}}; // must be replaced, even by nothing
        auto got = c->get(keys[i], &meta);
        REQUIRE(got.has_value());
        REQUIRE(got->has_value());
        CHECK(mismatch(**got, pattern(meta_sizes[i], 3 * meta_sizes[i] + 1)) == "");
        CHECK(mismatch(meta, metas[i]) == "");
    }

    // exists in a submitted batch: presence, size and metadata per key, absent keys empty.
    std::vector<operation> ops(keys.size() + 1);
    for (std::size_t i = 0; i < keys.size(); ++i) {
        ops[i].kind = op_kind::exists;
        ops[i].key = keys[i];
    }
    ops.back().kind = op_kind::exists;
    ops.back().key = "meta-absent";
    REQUIRE(c->run(ops).has_value());
    for (std::size_t i = 0; i < keys.size(); ++i) {
        INFO("metadata size " << meta_sizes[i]);
        CHECK(!ops[i].status);
        CHECK(ops[i].exists);
        CHECK(ops[i].size == 3 * meta_sizes[i] + 1);
        CHECK(mismatch(ops[i].meta_out, metas[i]) == "");
    }
    CHECK(!ops.back().status);
    CHECK_FALSE(ops.back().exists);
    CHECK(ops.back().size == 0);
    CHECK(ops.back().meta_out.empty());

    SECTION("a range read returns the metadata too") {
        operation op;
        op.kind = op_kind::get;
        op.key = "meta-256";
        op.offset = 10;
        op.length = 5;
        REQUIRE(c->run({&op, 1}).has_value());
        CHECK(!op.status);
        CHECK(mismatch(op.meta_out, metas.back()) == "");
    }
    SECTION("an overwrite replaces the metadata") {
        put_options opt;
        const auto m2 = pattern(4242, 3);
        opt.meta = m2;
        REQUIRE(c->put("meta-256", pattern(1, 10), opt).has_value());
        std::vector<std::byte> meta;
        auto got = c->get("meta-256", &meta);
        REQUIRE(got.has_value());
        REQUIRE(got->has_value());
        CHECK(mismatch(meta, m2) == "");
    }
}

TEST_CASE("Metadata of 257 bytes is rejected without harming the connection",
          "[integration][round_trip][metadata]") {
    // Regression: the client used to send it; the server refused the whole batch frame and
    // closed the connection, failing the put and everything else in flight with
    // errc::protocol / errc::unavailable.
    server_fixture fx;
    auto c = fx.client();
    REQUIRE(c->put("meta-ok", pattern(1, 10)).has_value());
    const auto meta = pattern(257, 257);
    put_options opt;
    opt.meta = meta;
    auto r = c->put("meta-257", pattern(2, 10), opt);
    REQUIRE_FALSE(r.has_value());
    INFO("error: " << r.error().message());
    CHECK((r.error() == errc::invalid_argument || r.error() == errc::too_large));
    auto miss = c->get("meta-257");
    REQUIRE(miss.has_value());
    CHECK_FALSE(miss->has_value());
    auto ok = c->get("meta-ok");
    REQUIRE(ok.has_value());
    REQUIRE(ok->has_value());
    CHECK(mismatch(**ok, pattern(1, 10)) == "");
    // The server saw no protocol error: the client refused it first.
    CHECK(fx.server->counters(0).protocol_errors.load() +
              fx.server->counters(1).protocol_errors.load() ==
          0);
}

TEST_CASE("Misses and deletes and exists report exactly what is stored",
          "[integration][round_trip][exists]") {
    server_fixture fx;
    auto c = fx.client();

    SECTION("a miss is an empty optional") {
        auto g = c->get("never-stored");
        REQUIRE(g.has_value());
        CHECK_FALSE(g->has_value());
        std::vector<std::byte> buf(10);
        auto n = c->get_into("never-stored", {std::span(buf)});
        REQUIRE(n.has_value());
        CHECK_FALSE(n->has_value());
    }

    SECTION("del then get is a miss and del of an absent key deletes nothing") {
        REQUIRE(c->put("gone", pattern(1, 5 * MiB)).has_value());
        auto deleted = c->del("gone");
        REQUIRE(deleted.has_value());
        REQUIRE(*deleted);
        auto g = c->get("gone");
        REQUIRE(g.has_value());
        CHECK_FALSE(g->has_value());
        auto d = c->del("gone");
        REQUIRE(d.has_value());
        CHECK_FALSE(*d);
        auto d2 = c->del("never-there");
        REQUIRE(d2.has_value());
        CHECK_FALSE(*d2);
        // And it can be stored again.
        REQUIRE(c->put("gone", pattern(2, 10)).has_value());
        auto again = c->get("gone");
        REQUIRE(again.has_value());
        REQUIRE(again->has_value());
        CHECK(mismatch(**again, pattern(2, 10)) == "");
    }

    SECTION("an exists batch of 1000 keys with half present answers in order") {
        auto rng = memkv::test::rng(0xE1);
        std::vector<std::string> keys;
        std::vector<bool> present;
        std::vector<operation> puts;
        for (int i = 0; i < 1000; ++i) {
            keys.push_back("ex-" + std::to_string(rng()));
            present.push_back(rng() & 1);
        }
        const auto value = pattern(3, 64);
        for (std::size_t i = 0; i < keys.size(); ++i) {
            if (!present[i]) continue;
            operation op;
            op.kind = op_kind::put;
            op.key = keys[i];
            op.value = value;
            puts.push_back(std::move(op));
        }
        // In batches of 25: see "A batch of many small puts completes without stalling".
        for (std::size_t first = 0; first < puts.size(); first += 25) {
            auto part =
                std::span(puts).subspan(first, std::min<std::size_t>(25, puts.size() - first));
            REQUIRE(c->run(part).has_value());
            for (auto& op : part)
                REQUIRE(!op.status);
        }
        auto e = c->exists(keys);
        REQUIRE(e.has_value());
        REQUIRE(e->size() == keys.size());
        std::size_t wrong = 0;
        for (std::size_t i = 0; i < keys.size(); ++i)
            if ((*e)[i] != present[i]) ++wrong;
        CHECK(wrong == 0);
        // Both shards took part.
        CHECK(fx.server->counters(0).exists_keys.load() > 0);
        CHECK(fx.server->counters(1).exists_keys.load() > 0);
        CHECK(fx.server->counters(0).exists_keys.load() +
                  fx.server->counters(1).exists_keys.load() ==
              1000);
    }
}

TEST_CASE("An if_absent put of an existing key keeps the old value and reports success",
          "[integration][round_trip][if_absent]") {
    server_fixture fx;
    auto c = fx.client();
    const auto old_value = pattern(1, 2 * MiB + 1);
    const auto new_value = pattern(2, 3 * MiB);
    put_options ia;
    ia.if_absent = true;

    // On an absent key it stores.
    REQUIRE(c->put("ia", old_value, ia).has_value());
    // On a present key: success, nothing written.
    REQUIRE(c->put("ia", new_value, ia).has_value());
    auto got = c->get("ia");
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    CHECK(mismatch(**got, old_value) == "");

    // The raw status of the operation says why.
    operation op;
    op.kind = op_kind::put;
    op.key = "ia";
    op.value = new_value;
    op.options.if_absent = true;
    REQUIRE(c->run({&op, 1}).has_value());
    CHECK(op.status == errc::exists);
    got = c->get("ia");
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    CHECK(mismatch(**got, old_value) == "");

    const auto s = memkv::test::shard_of("ia", 2);
    CHECK(fx.server->counters(s).put_if_absent_hits.load() == 2);

    // The connection is in sync after the refused payloads: more traffic works.
    REQUIRE(c->put("ia-after", new_value).has_value());
    got = c->get("ia-after");
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    CHECK(mismatch(**got, new_value) == "");
}

TEST_CASE("match_prefix returns the length of the present prefix across shards",
          "[integration][round_trip][match_prefix]") {
    server_fixture fx;
    auto c = fx.client();
    std::vector<std::string> keys;
    for (int i = 0; i < 40; ++i)
        keys.push_back("chunk-hash-" + std::to_string(i * 7919));
    std::size_t on_shard[2] = {0, 0};
    for (int i = 0; i < 25; ++i) {
        REQUIRE(c->put(keys[i], pattern(i, 1000)).has_value());
        ++on_shard[memkv::test::shard_of(keys[i], 2)];
    }
    REQUIRE(on_shard[0] > 0);
    REQUIRE(on_shard[1] > 0);
    // A key past the gap is present: it must not extend the prefix.
    REQUIRE(c->put(keys[30], pattern(30, 1000)).has_value());

    auto m = c->match_prefix(keys);
    REQUIRE(m.has_value());
    CHECK(*m == 25);
    m = c->match_prefix(std::span(keys).first(10));
    REQUIRE(m.has_value());
    CHECK(*m == 10);
    m = c->match_prefix(std::span(keys).first(0));
    REQUIRE(m.has_value());
    CHECK(*m == 0);
    auto deleted = c->del(keys[7]);
    REQUIRE(deleted.has_value());
    REQUIRE(*deleted);
    m = c->match_prefix(keys);
    REQUIRE(m.has_value());
    CHECK(*m == 7);
    deleted = c->del(keys[0]);
    REQUIRE(deleted.has_value());
    REQUIRE(*deleted);
    m = c->match_prefix(keys);
    REQUIRE(m.has_value());
    CHECK(*m == 0);
}

TEST_CASE("Keys are arbitrary bytes up to 1024 long", "[integration][round_trip][keys]") {
    server_fixture fx;
    auto c = fx.client();
    std::vector<std::string> keys{
        std::string("\0", 1),
        std::string("a\0b", 3),
        std::string("a\0c", 3), // differs from the previous only after the NUL
        std::string("\xff\xfe\x00\x01\x80", 5),
        std::string(255, '\xff'),
        std::string(1024, 'k'),
        std::string(1023, 'k') + std::string("\0", 1),
    };
    for (std::size_t i = 0; i < keys.size(); ++i) {
        INFO("key " << i);
        REQUIRE(c->put(keys[i], pattern(i, 100 + i)).has_value());
    }
    for (std::size_t i = 0; i < keys.size(); ++i) {
        INFO("key " << i);
        auto got = c->get(keys[i]);
        REQUIRE(got.has_value());
        REQUIRE(got->has_value());
        CHECK(mismatch(**got, pattern(i, 100 + i)) == "");
    }
    auto e = c->exists(keys);
    REQUIRE(e.has_value());
    for (std::size_t i = 0; i < keys.size(); ++i)
        CHECK((*e)[i]);
    auto deleted = c->del(keys[1]);
    REQUIRE(deleted.has_value());
    REQUIRE(*deleted);
    auto miss = c->get(keys[1]);
    REQUIRE(miss.has_value());
    CHECK_FALSE(miss->has_value());
    auto neighbour = c->get(keys[2]);
    REQUIRE(neighbour.has_value());
    CHECK(neighbour->has_value());

    SECTION("a 1025-byte key is rejected by every operation") {
        const std::string big(1025, 'k');
        auto p = c->put(big, pattern(1, 10));
        REQUIRE_FALSE(p.has_value());
        CHECK(p.error() == errc::invalid_argument);
        auto g = c->get(big);
        REQUIRE_FALSE(g.has_value());
        CHECK(g.error() == errc::invalid_argument);
        auto d = c->del(big);
        REQUIRE_FALSE(d.has_value());
        CHECK(d.error() == errc::invalid_argument);
        auto x = c->exists(std::vector<std::string>{big});
        REQUIRE_FALSE(x.has_value());
        CHECK(x.error() == errc::invalid_argument);
    }
    SECTION("an empty key is rejected") {
        auto p = c->put("", pattern(1, 10));
        REQUIRE_FALSE(p.has_value());
        CHECK(p.error() == errc::invalid_argument);
    }
    SECTION("the client still works after rejected keys") {
        CHECK_FALSE(c->put(std::string(2000, 'x'), pattern(1, 10)).has_value());
        auto got = c->get(keys[5]);
        REQUIRE(got.has_value());
        REQUIRE(got->has_value());
        CHECK(mismatch(**got, pattern(5, 105)) == "");
    }
}

TEST_CASE("Round trips work over the Unix socket endpoint", "[integration][round_trip][unix]") {
    server_fixture fx(server_fixture::make_config(2), 1ull << 30, /*with_unix=*/true);
    REQUIRE(fx.unix_endpoint.rfind("unix:", 0) == 0);
    client_config cc;
    cc.servers = {fx.unix_endpoint};
    auto c = fx.client(cc);
    memkv::test::check_sizes_round_trip(*c, "unix");

    // Ranges, scatter and metadata over the same path.
    const auto v = pattern(11, 2 * MiB + 17);
    const auto meta = pattern(12, 256);
    put_options opt;
    opt.meta = meta;
    REQUIRE(c->put("unix-range", v, opt).has_value());
    auto r = c->get_range("unix-range", MiB - 3, 10);
    REQUIRE(r.has_value());
    REQUIRE(r->has_value());
    CHECK(mismatch(**r, sub(v, MiB - 3, 10)) == "");
    std::vector<std::byte> a(1000), b(v.size() - 1000);
    auto n = c->get_into("unix-range", {std::span(a), std::span(b)});
    REQUIRE(n.has_value());
    REQUIRE(n->has_value());
    CHECK(mismatch(a, sub(v, 0, 1000)) == "");
    CHECK(mismatch(b, sub(v, 1000, v.size() - 1000)) == "");
    std::vector<std::byte> m;
    auto got = c->get("unix-range", &m);
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    CHECK(mismatch(m, meta) == "");
    // Both shards were reached over the Unix socket.
    CHECK(fx.server->counters(0).puts.load() > 0);
    CHECK(fx.server->counters(1).puts.load() > 0);
}

TEST_CASE("One client reaches one server over TCP and another over a Unix socket",
          "[integration][round_trip][transport_set]") {
    server_fixture tcp_server;
    server_fixture unix_server(server_fixture::make_config(2), 1ull << 30, /*with_unix=*/true);
    client_config cc;
    cc.servers = {tcp_server.tcp_endpoint, unix_server.unix_endpoint};
    auto c = tcp_server.client(cc);
    REQUIRE(c->server_count() == 2);

    std::vector<std::string> keys;
    std::size_t per_server[2] = {0, 0};
    for (int i = 0; i < 200; ++i) {
        keys.push_back("ts-" + std::to_string(i));
        ++per_server[c->locate(keys.back()).first];
    }
    REQUIRE(per_server[0] > 0);
    REQUIRE(per_server[1] > 0);
    for (std::size_t i = 0; i < keys.size(); ++i)
        REQUIRE(c->put(keys[i], pattern(i, 1000 + 37 * i)).has_value());
    for (std::size_t i = 0; i < keys.size(); ++i) {
        auto got = c->get(keys[i]);
        REQUIRE(got.has_value());
        REQUIRE(got->has_value());
        CHECK(mismatch(**got, pattern(i, 1000 + 37 * i)) == "");
    }
    auto puts_of = [](const server_fixture& f) {
        return f.server->counters(0).puts.load() + f.server->counters(1).puts.load();
    };
    CHECK(puts_of(tcp_server) == per_server[0]);
    CHECK(puts_of(unix_server) == per_server[1]);

    // Large values over each path.
    for (std::size_t s = 0; s < 2; ++s) {
        std::string key;
        for (int i = 0;; ++i) {
            key = "ts-big-" + std::to_string(i);
            if (c->locate(key).first == s) break;
        }
        const auto v = pattern(100 + s, 16 * MiB + 3);
        REQUIRE(c->put(key, v).has_value());
        auto got = c->get(key);
        REQUIRE(got.has_value());
        REQUIRE(got->has_value());
        CHECK(mismatch(**got, v) == "");
    }
    auto m = c->match_prefix(keys);
    REQUIRE(m.has_value());
    CHECK(*m == keys.size());
}

TEST_CASE("Asynchronous batches complete through callbacks or polling and the completion fd",
          "[integration][round_trip][async]") {
    server_fixture fx;
    auto c = fx.client();
    const auto big = pattern(1, 5 * MiB + 3);
    const auto small = pattern(2, 4097);
    REQUIRE(c->put("async-present", big).has_value());
    REQUIRE(c->put("async-doomed", small).has_value());

    auto make_mixed = [&](std::vector<operation>& ops, const std::string& tag) {
        ops.resize(7);
        ops[0].kind = op_kind::put;
        ops[0].key = "async-new-" + tag;
        ops[0].value = big;
        ops[1].kind = op_kind::put;
        ops[1].key = "async-small-" + tag;
        ops[1].value = small;
        ops[2].kind = op_kind::get;
        ops[2].key = "async-present";
        ops[3].kind = op_kind::get;
        ops[3].key = "async-absent";
        ops[4].kind = op_kind::del;
        ops[4].key = "async-doomed";
        ops[5].kind = op_kind::exists;
        ops[5].key = "async-present";
        ops[6].kind = op_kind::exists;
        ops[6].key = "async-absent";
    };
    auto check_mixed = [&](std::vector<operation>& ops, const std::string& tag) {
        INFO("batch " << tag);
        CHECK(!ops[0].status);
        CHECK(!ops[1].status);
        CHECK(!ops[2].status);
        CHECK(mismatch(ops[2].data, big) == "");
        CHECK(ops[3].status == errc::not_found);
        CHECK(!ops[4].status);
        CHECK(!ops[5].status);
        CHECK(ops[5].exists);
        CHECK(ops[5].size == big.size());
        CHECK(!ops[6].status);
        CHECK_FALSE(ops[6].exists);
        auto n = c->get("async-new-" + tag);
        REQUIRE(n.has_value());
        REQUIRE(n->has_value());
        CHECK(mismatch(**n, big) == "");
        auto doomed = c->get("async-doomed");
        REQUIRE(doomed.has_value());
        CHECK_FALSE(doomed->has_value());
    };

    SECTION("submit with a callback") {
        std::vector<operation> ops;
        make_mixed(ops, "cb");
        std::promise<std::size_t> done;
        std::atomic<int> calls{0};
        auto id = c->submit(ops, [&](std::span<operation> finished) {
            calls.fetch_add(1);
            done.set_value(finished.size());
        });
        REQUIRE(id.has_value());
        auto f = done.get_future();
        REQUIRE(f.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
        CHECK(f.get() == ops.size());
        check_mixed(ops, "cb");
        CHECK(calls.load() == 1);
        // Callback batches are not reported through polling.
        const auto polled = c->poll_completed();
        CHECK(std::find(polled.begin(), polled.end(), *id) == polled.end());
    }

    SECTION("submit and then wait on the completion fd and poll") {
        std::vector<operation> ops;
        make_mixed(ops, "poll");
        auto id = c->submit(ops);
        REQUIRE(id.has_value());
        bool seen = false;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
        while (!seen && std::chrono::steady_clock::now() < deadline) {
            pollfd p{c->completion_fd(), POLLIN, 0};
            const int r = ::poll(&p, 1, 1000);
            REQUIRE(r >= 0);
            if (r == 0) continue;
            CHECK((p.revents & POLLIN) != 0);
            for (auto done : c->poll_completed())
                if (done == *id) seen = true;
        }
        REQUIRE(seen);
        // Drained: nothing else is reported and the fd is no longer readable.
        CHECK(c->poll_completed().empty());
        pollfd p{c->completion_fd(), POLLIN, 0};
        CHECK(::poll(&p, 1, 0) == 0);
        check_mixed(ops, "poll");
    }

    SECTION("several batches in flight complete independently") {
        constexpr int n = 16;
        std::vector<std::vector<operation>> batches(n);
        std::vector<std::uint64_t> ids;
        for (int i = 0; i < n; ++i) {
            batches[i].resize(2);
            batches[i][0].kind = op_kind::put;
            batches[i][0].key = "multi-" + std::to_string(i);
            batches[i][0].value = i % 2 ? big : small;
            batches[i][1].kind = op_kind::get;
            batches[i][1].key = "async-present";
            auto id = c->submit(batches[i]);
            REQUIRE(id.has_value());
            ids.push_back(*id);
        }
        std::vector<std::uint64_t> seen;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        while (seen.size() < ids.size() && std::chrono::steady_clock::now() < deadline) {
            pollfd p{c->completion_fd(), POLLIN, 0};
            if (::poll(&p, 1, 1000) <= 0) continue;
            for (auto d : c->poll_completed())
                seen.push_back(d);
        }
        std::sort(seen.begin(), seen.end());
        std::sort(ids.begin(), ids.end());
        CHECK(seen == ids);
        for (int i = 0; i < n; ++i) {
            INFO("batch " << i);
            CHECK(!batches[i][0].status);
            CHECK(!batches[i][1].status);
            CHECK(mismatch(batches[i][1].data, big) == "");
        }
    }

    SECTION("an empty batch completes") {
        std::vector<operation> none;
        std::promise<void> done;
        REQUIRE(c->submit(none, [&](std::span<operation>) { done.set_value(); }).has_value());
        CHECK(done.get_future().wait_for(std::chrono::seconds(10)) == std::future_status::ready);
    }
}

TEST_CASE("Synchronous calls leave the completion fd quiet", "[integration][round_trip][async]") {
    // Regression: batches behind put/get/del used to write the completion eventfd too, so an
    // event loop polling completion_fd() woke for batches it never submitted.
    server_fixture fx;
    auto c = fx.client();
    (void)c->poll_completed();
    REQUIRE(c->put("quiet", pattern(1, 10)).has_value());
    auto got = c->get("quiet");
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    pollfd p{c->completion_fd(), POLLIN, 0};
    CHECK(::poll(&p, 1, 0) == 0);
    CHECK(c->poll_completed().empty());
}

TEST_CASE("Synchronous calls from a completion callback fail instead of deadlocking",
          "[integration][round_trip][async]") {
    // The callback runs on the client's progress thread, which a synchronous call would wait for.
    std::promise<std::array<std::error_code, 3>> inside; // outlives the client and its callback
    server_fixture fx;
    auto c = fx.client();
    REQUIRE(c->put("in-callback", pattern(1, 10)).has_value());
    std::vector<operation> ops(1);
    ops[0].kind = op_kind::get;
    ops[0].key = "in-callback";
    auto status = [](const auto& r) { return r ? std::error_code{} : r.error(); };
    REQUIRE(c->submit(ops, [&](std::span<operation>) {
                 std::vector<operation> nested(1);
                 nested[0].kind = op_kind::exists;
                 nested[0].key = "in-callback";
                 inside.set_value(
                     {status(c->get("in-callback")), status(c->run(nested)), status(c->stats())});
             }).has_value());
    auto f = inside.get_future();
    REQUIRE(f.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
    for (const auto& ec : f.get())
        CHECK(ec == errc::invalid_argument);
    // Outside the callback the same calls work.
    auto got = c->get("in-callback");
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    REQUIRE(c->stats().has_value());
}

TEST_CASE("A batch of many small puts completes without stalling",
          "[integration][round_trip][stall]") {
    // Regression: each put holds a 1 MiB bounce buffer until its write completes; once the pool
    // ran out the channel paused, and the store I/O issued when update_interest() resumed it
    // was drained only after the next epoll_wait(), which slept its full 1000 ms: 400 puts of
    // 64 bytes took about 3 s.
    server_fixture fx;
    auto c = fx.client();
    const auto v = pattern(1, 64);
    std::vector<operation> ops(400);
    for (std::size_t i = 0; i < ops.size(); ++i) {
        ops[i].kind = op_kind::put;
        ops[i].key = "tiny-" + std::to_string(i);
        ops[i].value = v;
    }
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE(c->run(ops).has_value());
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    for (auto& op : ops)
        REQUIRE(!op.status);
    INFO("400 puts of 64 bytes took " << ms << " ms");
    CHECK(ms < 900); // a generous bound: one stall of the 1 s epoll timeout fails it
}

TEST_CASE("Batches and exists of many long keys are split to fit a frame body",
          "[integration][round_trip][batch]") {
    // Regression: a batch frame was cut only at limits.max_batch sub-requests and an exists
    // frame at exists_chunk() keys, which bounds the reply (sizes + metadata) but not the
    // request; 1500 keys of 1 KB each made a body of about 1.5 MB, over limits.max_body (1 MiB).
    // The server refused the frame as too_large and closed the connection: every get failed
    // with errc::protocol, exists with unavailable. Frames are now also cut by body size.
    server_fixture fx(server_fixture::make_config(1)); // every key on one connection
    auto c = fx.client();
    std::vector<std::string> keys;
    for (int i = 0; i < 1500; ++i)
        keys.push_back(std::string(990, 'k') + std::to_string(100000 + i));
    const auto v = pattern(1, 10);
    REQUIRE(c->put(keys[7], v).has_value());

    SECTION("a batch of gets") {
        std::vector<operation> ops(keys.size());
        for (std::size_t i = 0; i < keys.size(); ++i) {
            ops[i].kind = op_kind::get;
            ops[i].key = keys[i];
        }
        REQUIRE(c->run(ops).has_value());
        std::size_t wrong = 0;
        for (std::size_t i = 0; i < keys.size(); ++i)
            if (ops[i].status != (i == 7 ? std::error_code{} : make_error_code(errc::not_found)))
                ++wrong;
        INFO("first status: " << ops[0].status.message());
        CHECK(wrong == 0);
        CHECK(mismatch(ops[7].data, v) == "");
    }
    SECTION("exists") {
        auto e = c->exists(keys);
        INFO("error: " << (e ? std::string("none") : e.error().message()));
        REQUIRE(e.has_value());
        for (std::size_t i = 0; i < keys.size(); ++i)
            CHECK((*e)[i] == (i == 7));
    }
    SECTION("a batch of puts with metadata, then match_prefix") {
        const std::vector<std::byte> meta(200, std::byte{0x4d});
        std::vector<operation> ops(1200);
        for (std::size_t i = 0; i < ops.size(); ++i) {
            ops[i].kind = op_kind::put;
            ops[i].key = keys[i];
            ops[i].value = v;
            ops[i].options.meta = meta;
        }
        REQUIRE(c->run(ops).has_value());
        std::size_t failed = 0;
        for (const auto& op : ops)
            failed += op.status ? 1 : 0;
        INFO("first status: " << ops[0].status.message());
        CHECK(failed == 0);
        auto m = c->match_prefix(keys);
        INFO("error: " << (m ? std::string("none") : m.error().message()));
        REQUIRE(m.has_value());
        CHECK(*m == ops.size());
    }
    CHECK(fx.server->counters(0).protocol_errors.load() == 0);
}

TEST_CASE("Batches completed through polling, waiting or a callback leave no trace in the client",
          "[integration][round_trip][async]") {
    // Regression: the client kept the id of every completed batch in a set that only wait()
    // emptied, so a caller that polled (or used completion_fd()) grew it by one id per batch.
    server_fixture fx;
    auto c = fx.client();
    REQUIRE(c->put("tracked", pattern(1, 10)).has_value());
    constexpr std::size_t total = 100000, window = 1000;
    std::vector<operation> ops(window);
    for (auto& op : ops) {
        op.kind = op_kind::exists;
        op.key = "tracked";
    }
    std::size_t most = 0, seen = 0;
    for (std::size_t round = 0; round < total / window; ++round) {
        for (auto& op : ops) // one batch per operation
            REQUIRE(c->submit({&op, 1}).has_value());
        for (std::size_t got = 0; got < window;) {
            pollfd p{c->completion_fd(), POLLIN, 0};
            REQUIRE(::poll(&p, 1, 10000) == 1);
            got += c->poll_completed().size();
        }
        seen += window;
        most = std::max(most, c->tracked_batches());
    }
    CHECK(seen == total);
    CHECK(most == 0);
    CHECK(c->tracked_batches() == 0);
    for (const auto& op : ops)
        CHECK((!op.status && op.exists));

    // wait() on a polled batch returns at once; on a callback batch, once its callback ran.
    auto id = c->submit({ops.data(), 1});
    REQUIRE(id.has_value());
    while (c->poll_completed().empty())
        std::this_thread::yield();
    CHECK(c->tracked_batches() == 0);
    c->wait(*id);
    std::atomic<bool> called{false};
    id = c->submit({ops.data(), 1}, [&](std::span<operation>) { called = true; });
    REQUIRE(id.has_value());
    c->wait(*id);
    CHECK(called.load());
    CHECK(c->tracked_batches() == 0);
}

TEST_CASE("A put answered before its value is sent never reads the caller's buffer afterwards",
          "[integration][round_trip][if_absent]") {
    // Regression: the server may answer a put before its value has arrived (exists for an
    // if_absent hit, wrong_shard, no_space). The client used to complete the operation at once
    // while data frames borrowing op.value still sat in its send queue, and stopped sending the
    // rest (against docs/protocol.md §5): a caller that freed its buffer on completion had it
    // read later (ASan: heap-use-after-free in frame_channel::flush(); without ASan, EFAULT
    // from sendmsg tearing down every connection to the server). Here the buffer is made
    // inaccessible (PROT_NONE) in the completion callback: any later read by the client makes
    // sendmsg fail with EFAULT and the other put fail.
    server_fixture fx(server_fixture::make_config(2), 4ull << 30); // no eviction: 6 x 64 MiB
    auto c = fx.client();
    const std::string existing = "early-existing";
    const auto shard = memkv::test::shard_of(existing, 2);
    REQUIRE(c->put(existing, pattern(1, 10)).has_value());
    const auto others = memkv::test::keys_on_shard("early-other", shard, 2, 5);
    const std::size_t big = 64 * MiB;
    const auto v = pattern(2, big);

    for (std::size_t round = 0; round < others.size(); ++round) {
        INFO("round " << round);
        void* mem =
            ::mmap(nullptr, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        REQUIRE(mem != MAP_FAILED);
        std::memcpy(mem, v.data(), big);
        std::vector<operation> a(1), k(1);
        a[0].kind = op_kind::put;
        a[0].key = others[round];
        a[0].value = v;
        k[0].kind = op_kind::put;
        k[0].key = existing;
        k[0].value = std::span<const std::byte>(static_cast<const std::byte*>(mem), big);
        k[0].options.if_absent = true;
        memkv::test::completion_counter done;
        REQUIRE(c->submit(a, [&](std::span<operation>) { done.signal(); }).has_value());
        REQUIRE(c->submit(k, [&, mem](std::span<operation>) {
                     // The operation is complete: the caller may now unmap or reuse the buffer.
                     ::mprotect(mem, big, PROT_NONE);
                     done.signal();
                 }).has_value());
        REQUIRE(done.wait_for(2, std::chrono::seconds(60)) == 2);
        INFO("evicted regions " << fx.server->counters(shard).evicted_regions.load() << ", entries "
                                << fx.server->counters(shard).entries.load());
        CHECK(k[0].status == errc::exists);
        INFO("other put: " << (a[0].status ? a[0].status.message() : std::string("ok")));
        CHECK(!a[0].status);
        ::munmap(mem, big);
    }
    auto got = c->get(existing);
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    CHECK(mismatch(**got, pattern(1, 10)) == "");
}
