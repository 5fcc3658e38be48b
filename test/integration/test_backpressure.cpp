// SPDX-License-Identifier: Apache-2.0
// The per-connection bounds never stall or kill a well-behaved client: PUTs whose frames are
// smaller than the server's buffers (partly filled buffers over the in-flight cap), and a batch
// of thousands of GETs beside a PUT (the bound on PUTs counts PUTs only).
#include "support/catch.hpp"
#include "support/integration.hpp"
#include "support/server_fixture.hpp"

#include <chrono>
#include <string>
#include <vector>

using namespace memkv;
using memkv::test::mismatch;
using memkv::test::pattern;
using memkv::test::server_fixture;

namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * KiB;

/// Puts `n` values of `size` bytes in one batch on a one-shard server whose buffers are
/// `buffer` bytes, from a client sending frames of `chunk` bytes; every PUT must succeed (well
/// before the timeout) and every value read back whole.
void put_many(std::size_t buffer, std::uint32_t chunk, std::size_t n, std::size_t size) {
    auto cfg = server_fixture::make_config(1);
    cfg.buffer_size = buffer;
    server_fixture fx(cfg, 2ull << 30);
    client_config cc;
    cc.chunk_size = chunk;
    cc.request_timeout = std::chrono::milliseconds(20000);
    auto c = fx.client(cc);
    std::vector<std::vector<std::byte>> values;
    std::vector<operation> ops(n);
    for (std::size_t i = 0; i < n; ++i) {
        values.push_back(pattern(i + 1, size));
        ops[i].kind = op_kind::put;
        ops[i].key = "bp-" + std::to_string(i);
        ops[i].value = values.back();
    }
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE(c->run(ops));
    const auto ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    INFO(n << " PUTs of " << size << " bytes in frames of " << chunk << " into buffers of "
           << buffer << ": " << ms << " ms");
    for (std::size_t i = 0; i < n; ++i) {
        INFO("PUT " << i << ": " << ops[i].status.message());
        CHECK_FALSE(ops[i].status);
    }
    CHECK(ms < 10000); // a stall would end only at the 20 s timeout
    for (std::size_t i = 0; i < n; ++i) {
        auto g = c->get(ops[i].key);
        REQUIRE(g);
        REQUIRE(*g);
        CHECK(mismatch(**g, values[i]) == "");
    }
    CHECK(fx.server->counters(0).protocol_errors.load() == 0);
}

} // namespace

TEST_CASE("PUTs in frames smaller than the server's buffers, more than the in-flight cap holds, "
          "all complete: partly filled buffers never stop a connection",
          "[integration][backpressure]") {
    SECTION("256 KiB frames, 1 MiB buffers, 32 PUTs of 2 MiB in one batch") {
        put_many(MiB, 256 * KiB, 32, 2 * MiB);
    }
    SECTION("1 MiB frames, 4 MiB buffers, 8 PUTs of 8 MiB in one batch") {
        put_many(4 * MiB, static_cast<std::uint32_t>(MiB), 8, 8 * MiB);
    }
}

TEST_CASE("4096 GETs and a PUT in one batch on one shard are all answered: the bound on a "
          "connection's PUTs does not count its GETs",
          "[integration][backpressure]") {
    server_fixture fx(server_fixture::make_config(1));
    auto c = fx.client();
    const auto v = pattern(7, 4096);
    REQUIRE(c->put("present", v));
    std::vector<operation> ops(4097);
    for (std::size_t i = 0; i < 4096; ++i) {
        ops[i].kind = op_kind::get;
        ops[i].key = i % 2 ? "present" : "absent-" + std::to_string(i);
    }
    ops[4096].kind = op_kind::put;
    ops[4096].key = "put-beside";
    ops[4096].value = v;
    REQUIRE(c->run(ops));
    std::size_t hits = 0, misses = 0;
    for (std::size_t i = 0; i < 4096; ++i) {
        INFO("GET " << i << ": " << ops[i].status.message());
        if (!ops[i].status) {
            ++hits;
            CHECK(mismatch(ops[i].data, v) == "");
        } else {
            CHECK(ops[i].status == errc::not_found);
            ++misses;
        }
    }
    CHECK(hits == 2048);
    CHECK(misses == 2048);
    CHECK_FALSE(ops[4096].status);
    CHECK(fx.server->counters(0).protocol_errors.load() == 0);
}
