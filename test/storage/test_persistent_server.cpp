// SPDX-License-Identifier: Apache-2.0
// A real server (in process, TCP on loopback) and the real client over each persistent store:
// file_store on a file and block_store on a loop device. One test body per behaviour, run for
// both (TEMPLATE_TEST_CASE over store_kinds.hpp): round trips from 0 bytes to 64 MiB byte for
// byte with metadata, range reads (the client verifies the per-chunk CRCs), overwrite, delete, a
// restart after clean shutdown with identical contents, and filling a small store past its
// capacity with TRIM on and off (FIFO region eviction; TRIM seen as holes in the file / the loop's
// backing file).
// CTest runs the two kinds as two tests; the block one skips (77) without loop devices.
#include "support/skip.hpp"
#include "storage/store_kinds.hpp"
#include "support/catch.hpp"
#include "support/integration.hpp"
#include "support/server_fixture.hpp"

#include <memkv/memkv.hpp>
#include <memkv/storage/format.hpp>

#include <unistd.h>

#include <sys/statfs.h>

#include <linux/magic.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

using memkv::test::block_kind;
using memkv::test::file_kind;
using memkv::test::mismatch;
using memkv::test::pattern;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t KiB = 1024, MiB = 1024 * KiB;
constexpr std::uint64_t chunk = memkv::storage::crc_chunk_size;
constexpr std::uint32_t shards = 2;

/// The default geometry: 64 MiB values, 128 MiB regions, three regions per shard (nothing in
/// the round-trip test is evicted, so a restart must bring back everything).
constexpr std::uint64_t big_capacity = memkv::storage::data_offset + shards * 3 * 128 * MiB;
memkv::server_config big_config() {
    auto c = memkv::test::make_config(shards);
    c.buffers_per_shard = 32;
    return c;
}

/// A small store: 1 MiB values, 2 MiB regions, four regions per shard. A record of 700 KiB
/// takes 704 KiB, so a region holds two and the 600-odd KiB between the second record and the
/// region's trailer is never written: once a region was reclaimed (punched) and reused, that
/// part stays a hole.
constexpr std::uint64_t small_regions = 4;
constexpr std::uint64_t small_capacity =
    memkv::storage::data_offset + shards * small_regions * 2 * MiB;
memkv::server_config small_config() {
    auto c = memkv::test::make_config(shards);
    c.limits.max_value = 1 * MiB;
    c.region_size = 2 * MiB;
    c.buffers_per_shard = 16;
    return c;
}

/// A started server over a store of kind `Kind` and a client of it (destroyed first).
template <class Kind>
struct live_server {
    std::optional<typename Kind::server_type> server;
    std::optional<memkv::default_client> client;

    live_server(const Kind& kind, const memkv::server_config& cfg) {
        auto s = Kind::server_type::create(cfg, kind.store_config());
        INFO(Kind::name << " server over " << kind.describe() << ": "
                        << (s ? "created" : s.error().message()));
        REQUIRE(s);
        server = std::move(*s);
        auto started = server->start();
        REQUIRE(started);
        memkv::client_config cc;
        cc.servers = {server->endpoints()[0]};
        auto c = memkv::default_client::create(std::move(cc));
        REQUIRE(c);
        client = std::move(*c);
    }
    /// Clean shutdown: the client goes, then the server drains, seals and closes its store.
    void stop() {
        client.reset();
        if (server) server->stop();
        server.reset();
    }

    std::uint64_t sum(memkv::shard_counters::counter memkv::shard_counters::*field) const {
        std::uint64_t n = 0;
        for (std::uint32_t i = 0; i < server->shard_count(); ++i)
            n += (server->counters(i).*field).load(std::memory_order_relaxed);
        return n;
    }
};

/// What the test stored: the oracle every read is compared with.
struct stored {
    std::vector<std::byte> value, meta;
};
using model = std::map<std::string, stored>;

template <class Client>
void put_checked(Client& c, model& m, const std::string& key, std::vector<std::byte> value,
                 std::vector<std::byte> meta) {
    INFO("put " << key << " (" << value.size() << " bytes, " << meta.size() << " of metadata)");
    memkv::put_options opt;
    opt.meta = meta;
    auto r = c.put(key, value, opt);
    INFO("put: " << (r ? "ok" : r.error().message()));
    REQUIRE(r);
    m[key] = stored{std::move(value), std::move(meta)};
}

/// Every key of `m` is a hit with exactly its bytes and metadata (get, and get_into one exact
/// fragment); every key of `gone` is a miss.
template <class Client>
void check_contents(Client& c, const model& m, const std::set<std::string>& gone) {
    std::vector<std::string> keys;
    for (const auto& [key, want] : m) {
        INFO("key " << key << " (" << want.value.size() << " bytes)");
        keys.push_back(key);
        std::vector<std::byte> meta;
        auto got = c.get(key, &meta);
        INFO("get: " << (got ? (*got ? "hit" : "miss") : got.error().message()));
        REQUIRE(got);
        REQUIRE(*got);
        CHECK(mismatch(**got, want.value) == "");
        CHECK(mismatch(meta, want.meta) == "");
        std::vector<std::byte> dst(want.value.size() + 1, std::byte{0xAB});
        auto n = c.get_into(key, {std::span<std::byte>(dst.data(), want.value.size())});
        REQUIRE(n);
        REQUIRE(*n);
        CHECK(**n == want.value.size());
        CHECK(mismatch(std::span<const std::byte>(dst.data(), want.value.size()), want.value) ==
              "");
        CHECK(dst.back() == std::byte{0xAB});
    }
    auto e = c.exists(keys);
    REQUIRE(e);
    CHECK(std::count(e->begin(), e->end(), true) == static_cast<long>(keys.size()));
    for (const auto& key : gone) {
        INFO("deleted key " << key);
        auto miss = c.get(key);
        REQUIRE(miss);
        CHECK_FALSE(*miss);
    }
}

/// Range reads of `value` under `key`: single bytes at both ends, ranges across and inside the
/// 256 KiB CRC chunks, unaligned offsets, "to the end", and a range scattered over two
/// fragments. The client verifies each chunk's CRC; a mismatch would be an error, never data.
template <class Client>
void check_ranges(Client& c, const std::string& key, const std::vector<std::byte>& value) {
    const std::uint64_t n = value.size();
    if (n < 2) return;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges{
        {0, 1}, {n - 1, 1}, {1, n - 2}, {n / 2 + 1, 0}};
    if (n > 2 * chunk + 10) {
        ranges.push_back({chunk - 1, 2});                 // across a chunk boundary
        ranges.push_back({chunk, chunk});                 // exactly one chunk
        ranges.push_back({chunk + 17, chunk - 40});       // inside one chunk
        ranges.push_back({chunk / 2 + 3, chunk * 3 / 2}); // over three chunks
        ranges.push_back({n - chunk - 5, chunk + 5});     // the tail
    }
    if (n > 8 * MiB) ranges.push_back({3 * MiB + 4093, 4 * MiB + 11});
    for (const auto& [off, len] : ranges) {
        INFO("key " << key << ": range [" << off << ", +" << len << ") of " << n);
        const std::uint64_t want_len = len == 0 ? n - off : len;
        const std::span<const std::byte> want(value.data() + off, want_len);
        auto got = c.get_range(key, off, len);
        INFO("get_range: " << (got ? (*got ? "ok" : "miss") : got.error().message()));
        REQUIRE(got);
        REQUIRE(*got);
        CHECK(mismatch(**got, want) == "");
    }
    // Scatter: a range into two fragments.
    const std::uint64_t off = n / 3, a = std::min<std::uint64_t>(n - off, 5000) / 2,
                        b = std::min<std::uint64_t>(n - off, 5000) - a;
    std::vector<std::byte> fa(a), fb(b);
    auto got = c.get_into(key, {std::span<std::byte>(fa), std::span<std::byte>(fb)}, off, a + b);
    REQUIRE(got);
    REQUIRE(*got);
    CHECK(**got == a + b);
    CHECK(mismatch(fa, std::span<const std::byte>(value.data() + off, a)) == "");
    CHECK(mismatch(fb, std::span<const std::byte>(value.data() + off + a, b)) == "");
}

/// Waits until `pred()` holds (shard counters are published by the shard's loop right after
/// it handled a request) or 5 s passed.
template <class Pred>
bool eventually(Pred pred) {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(10ms);
    }
    return true;
}

/// Whether $MEMKV_TEST_DIR is on a filesystem known to punch holes.
bool punches_holes() {
    struct statfs fs {};
    if (::statfs(memkv::test::test_dir_base().c_str(), &fs) != 0) return false;
    return fs.f_type == EXT4_SUPER_MAGIC || fs.f_type == XFS_SUPER_MAGIC ||
           fs.f_type == BTRFS_SUPER_MAGIC || fs.f_type == TMPFS_MAGIC;
}

} // namespace

TEMPLATE_TEST_CASE("a server over a persistent store round-trips values from 0 bytes to 64 MiB, "
                   "serves ranges, overwrites, deletes, and restarts with identical contents",
                   "[storage][server][persistent]", file_kind, block_kind) {
    std::string why;
    auto kind = TestType::make(big_capacity, why);
    if (!kind) MEMKV_SKIP(std::string(TestType::name) + ": " + why);
    const auto t0 = std::chrono::steady_clock::now();
    live_server<TestType> srv(*kind, big_config());
    auto& c = *srv.client;
    model m;
    std::set<std::string> gone;

    // Round trips, with metadata of 0 to 256 bytes.
    const std::vector<std::size_t> sizes{
        0,     1,         4095,    4 * KiB,     4097,      64 * KiB, 64 * KiB + 1,    chunk - 1,
        chunk, chunk + 1, 1 * MiB, 1 * MiB + 1, 3'000'001, 16 * MiB, 16 * MiB + 4093, 64 * MiB};
    for (std::size_t i = 0; i < sizes.size(); ++i) {
        const auto key = "value-" + std::to_string(sizes[i]);
        const std::size_t meta_len = sizes[i] == 64 * MiB ? 256 : (i * 37) % 200;
        put_checked(c, m, key, pattern(i + 1, sizes[i]), pattern(i + 1000, meta_len));
    }
    check_contents(c, m, gone);
    for (const auto& [key, s] : m)
        check_ranges(c, key, s.value);
    // The bounce buffers are io_uring fixed buffers (root: no RLIMIT_MEMLOCK limit on pinning).
    if (::geteuid() == 0)
        CHECK(srv.sum(&memkv::shard_counters::buffers_registered) == srv.server->shard_count());

    // Overwrites: other sizes, other bytes, other metadata; the new value wins everywhere.
    put_checked(c, m, "value-1048576", pattern(501, 3'000'001), pattern(502, 7));
    put_checked(c, m, "value-16777216", pattern(503, 4 * KiB), {});
    put_checked(c, m, "value-4096", pattern(504, 64 * KiB + 3), pattern(505, 256));
    put_checked(c, m, "value-65536", pattern(506, 64 * KiB), pattern(507, 1));
    put_checked(c, m, "value-0", pattern(508, 5), pattern(509, 3));
    // Deletes: a miss afterwards, and deleting again deletes nothing.
    for (const std::string key : {"value-4097", "value-262145", "value-16781309"}) {
        INFO("del " << key);
        auto deleted = c.del(key);
        REQUIRE(deleted);
        REQUIRE(*deleted);
        m.erase(key);
        gone.insert(key);
        auto again = c.del(key);
        REQUIRE(again);
        CHECK_FALSE(*again);
    }
    check_contents(c, m, gone);
    check_ranges(c, "value-1048576", m["value-1048576"].value);
    CHECK(srv.sum(&memkv::shard_counters::evicted_regions) == 0);
    CHECK(srv.sum(&memkv::shard_counters::checksum_errors) == 0);
    CHECK(eventually([&] { return srv.sum(&memkv::shard_counters::entries) == m.size(); }));

    // Clean shutdown, then a new server on the same file / device: identical contents.
    srv.stop();
    live_server<TestType> again(*kind, big_config());
    const auto& rec = again.server->recovered();
    CHECK(rec.entries == m.size());
    CHECK(rec.corrupt_records == 0);
    check_contents(*again.client, m, gone);
    check_ranges(*again.client, "value-67108864", m["value-67108864"].value);
    check_ranges(*again.client, "value-3000001", m["value-3000001"].value);
    // Versions continue after the restart: an overwrite wins over the recovered value, and a
    // second restart keeps it.
    put_checked(*again.client, m, "value-1", pattern(601, 4097), pattern(602, 9));
    again.stop();
    live_server<TestType> third(*kind, big_config());
    check_contents(*third.client, m, gone);
    CHECK(third.server->recovered().entries == m.size());
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "%s: round trips, ranges, overwrite, delete and 2 restarts: %.1f s\n",
                 TestType::name, secs);
}

// No ": " in test names: Catch2 2.x's console reporter indents continuation lines past it and
// loops forever when that leaves no room.
TEMPLATE_TEST_CASE("filling a small persistent store past its capacity evicts the oldest "
                   "regions with TRIM on and off, the writer sees no error, the newest keys hit, "
                   "evicted keys miss, and only TRIM makes holes",
                   "[storage][server][persistent][eviction]", file_kind, block_kind) {
    std::string why;
    auto kind = TestType::make(small_capacity, why);
    if (!kind) MEMKV_SKIP(std::string(TestType::name) + ": " + why);
    // Each mode once; the store's own default (off for files, on for devices) is reached
    // through trim_mode::by_store, the other through an explicit setting.
    const bool trim = GENERATE(true, false);
    const auto mode = trim ? memkv::trim_mode::on : memkv::trim_mode::off;
    auto cfg = small_config();
    if (trim != memkv::trim_by_default<typename TestType::store_type>) cfg.trim = mode;
    INFO(
        TestType::name << ", TRIM " << (trim ? "on" : "off")
                       << (cfg.trim == memkv::trim_mode::by_store ? " (the store's default)" : ""));
    live_server<TestType> srv(*kind, cfg);
    REQUIRE(srv.server->config().trim == mode);
    auto& c = *srv.client;
    const auto before = memkv::test::allocation_of(kind->backing_file());

    // 64 values of 700 KiB and a few bytes (45 MiB, almost three times the 16 MiB store).
    // Each shard holds at most 2 records in each of its 4 regions.
    constexpr int n = 64;
    constexpr std::uint64_t per_region = 2, live_max = per_region * small_regions;
    std::vector<std::string> keys;
    std::map<std::string, std::vector<std::byte>> values;
    for (int i = 0; i < n; ++i) {
        const auto key = "fill-" + std::to_string(i);
        auto value = pattern(7000 + i, 700 * KiB + (i % 7) * 513);
        auto r = c.put(key, value);
        INFO("put " << key << ": " << (r ? "ok" : r.error().message()));
        REQUIRE(r); // the writer never sees an error: a put evicts rather than fails
        keys.push_back(key);
        values[key] = std::move(value);
    }
    // Later keys of the same shard, for each key: a key followed by at least live_max of them
    // cannot be live any more; one followed by fewer than per_region * 2 must be (its region and
    // the next are the newest two of the shard).
    std::vector<std::uint64_t> later(n, 0);
    for (int i = 0; i < n; ++i)
        for (int j = i + 1; j < n; ++j)
            later[i] +=
                memkv::test::shard_of(keys[j], shards) == memkv::test::shard_of(keys[i], shards);
    auto check_fill = [&](memkv::default_client& cl) {
        int hits = 0, misses = 0;
        for (int i = 0; i < n; ++i) {
            INFO("key " << keys[i] << ", followed by " << later[i] << " keys of its shard");
            auto got = cl.get(keys[i]);
            CHECK(got.has_value()); // a hit or a miss, never an error
            const bool hit = got && *got;
            if (hit) {
                ++hits;
                CHECK(mismatch(**got, values[keys[i]]) == ""); // a hit is always the right bytes
            } else {
                ++misses;
            }
            if (later[i] >= live_max) CHECK_FALSE(hit);
            if (later[i] < 2 * per_region) CHECK(hit);
        }
        return std::pair{hits, misses};
    };
    const auto [hits, misses] = check_fill(c);
    CHECK(hits >= static_cast<int>(shards * 2 * per_region));
    CHECK(misses >= n - static_cast<int>(shards * live_max));

    // The counters saw it: regions evicted, entries dropped, bytes discarded (TRIM issued) or
    // none at all.
    CHECK(eventually([&] { return srv.sum(&memkv::shard_counters::evicted_regions) > 0; }));
    const auto evicted_regions = srv.sum(&memkv::shard_counters::evicted_regions);
    const auto evicted_entries = srv.sum(&memkv::shard_counters::evicted_entries);
    const auto discarded = srv.sum(&memkv::shard_counters::discarded_bytes);
    CHECK(evicted_entries >= static_cast<std::uint64_t>(misses));
    if (trim)
        CHECK(discarded >= evicted_regions * (2 * MiB - memkv::storage::meta_block));
    else
        CHECK(discarded == 0);
    auto stats = c.stats();
    REQUIRE(stats);
    std::uint64_t reported = 0;
    for (const auto& e : *stats)
        if (e.name.ends_with(".evicted_regions")) reported += e.value;
    CHECK(reported == evicted_regions);

    // With TRIM, the file store punched holes in its (preallocated) file and the loop device
    // punched them in its (preallocated) backing file; without, every block stays allocated.
    const auto after = memkv::test::allocation_of(kind->backing_file());
    std::fprintf(stderr,
                 "%s, TRIM %s: %d puts, %d hits, %d misses, %llu regions evicted (%llu entries), "
                 "%llu bytes discarded; %s: %llu bytes, allocated %llu before, %llu after\n",
                 TestType::name, trim ? "on" : "off", n, hits, misses,
                 (unsigned long long)evicted_regions, (unsigned long long)evicted_entries,
                 (unsigned long long)discarded, kind->backing_file().c_str(),
                 (unsigned long long)after.size, (unsigned long long)before.allocated,
                 (unsigned long long)after.allocated);
    if (!trim) {
        CHECK(after.allocated >= before.allocated);
    } else if (punches_holes()) {
        CHECK(before.allocated >= after.size - MiB); // preallocated: holes come from TRIM
        CHECK(after.allocated + after.size / 4 <= after.size);
    } else {
        WARN(memkv::test::test_dir_base() << " may not punch holes: TRIM checked by counters only");
    }

    // After a clean restart, evicted keys are still misses and the newest still hit.
    srv.stop();
    live_server<TestType> again(*kind, cfg);
    check_fill(*again.client);
}

// A clean shutdown (the server drains for up to drain_timeout, then closes connections) while a
// 64 MiB PUT is still arriving: the drain reads the rest of the value and stores it, the PUT
// succeeds, and after a restart the key is whole. (Were it cut short, the key would have to be
// absent, never partial: checked too.)
TEMPLATE_TEST_CASE("a clean shutdown while a 64 MiB put is arriving finishes the put, and the "
                   "key is whole after a restart",
                   "[storage][server][persistent][shutdown]", file_kind, block_kind) {
    std::string why;
    auto kind = TestType::make(big_capacity, why);
    if (!kind) MEMKV_SKIP(std::string(TestType::name) + ": " + why);
    const auto value = pattern(4242, 64 * MiB);
    const auto small = pattern(4243, 4096);
    auto cfg = big_config();
    cfg.drain_timeout = 60s; // room for the rest of the value on a slow machine
    live_server<TestType> srv(*kind, cfg);
    REQUIRE(srv.client->put("small", small));

    const auto written_before = srv.sum(&memkv::shard_counters::bytes_written);
    std::atomic<bool> done{false};
    memkv::result<void> put_result = memkv::errc::internal;
    std::thread writer([&] {
        put_result = srv.client->put("big", value);
        done = true;
    });
    // Stop once part of the value reached the store (not all of it, if the machine allows).
    const auto give_up = std::chrono::steady_clock::now() + 10s;
    while (!done && srv.sum(&memkv::shard_counters::bytes_written) < written_before + 8 * MiB &&
           std::chrono::steady_clock::now() < give_up)
        std::this_thread::sleep_for(100us);
    const bool arriving = !done;
    const auto written_at_stop = srv.sum(&memkv::shard_counters::bytes_written) - written_before;
    const auto t_stop = std::chrono::steady_clock::now();
    srv.server->stop();
    const std::chrono::duration<double> stop_took = std::chrono::steady_clock::now() - t_stop;
    writer.join();
    srv.stop();

    live_server<TestType> again(*kind, big_config());
    auto got = again.client->get("big");
    std::fprintf(stderr,
                 "%s: stopped in %.2f s with the put %s (%llu bytes written to the store); the "
                 "put %s; after the restart the key %s\n",
                 TestType::name, stop_took.count(),
                 arriving ? "still arriving" : "already answered",
                 static_cast<unsigned long long>(written_at_stop),
                 put_result ? "succeeded" : put_result.error().message().c_str(),
                 got ? (*got ? "is whole" : "is absent") : got.error().message().c_str());
    if (!arriving) WARN("the put finished before the stop: only the restart was checked");
    CHECK(put_result); // the drain finished it
    if (put_result || (got && *got)) {
        REQUIRE(got);
        REQUIRE(*got);
        CHECK((*got)->size() == value.size());
        CHECK(mismatch(**got, value) == "");
    } else {
        REQUIRE(got);
        CHECK_FALSE(*got);
    }
    auto kept = again.client->get("small");
    REQUIRE(kept);
    REQUIRE(*kept);
    CHECK(mismatch(**kept, small) == "");
}
