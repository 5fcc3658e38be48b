// SPDX-License-Identifier: Apache-2.0
// Region metadata I/O never holds a shard up: with flushes and discards that take 200 ms (the
// fault-injecting store), small GETs on one connection complete while another connection of
// the same shard keeps regions being sealed and reclaimed. Prints the latencies it measured,
// without and with the reclaims running (docs/BENCHMARKS.md, "Region metadata off the shard
// thread").
#include "support/catch.hpp"
#include "support/fault_store.hpp"
#include "support/seed.hpp"
#include "support/server_fixture.hpp"
#include "support/shared_memory_store.hpp"

#include <memkv/memkv.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <optional>
#include <thread>
#include <vector>

using namespace memkv;

namespace {

using faulty_store = test::fault_store<test::shared_memory_store>;
using faulty_server = server<tcp_transport, faulty_store>;
using clock_type = std::chrono::steady_clock;
constexpr auto slow = std::chrono::milliseconds(200);

/// GET latencies in milliseconds, sorted.
struct latencies {
    std::vector<double> ms;
    double quantile(double q) const {
        return ms.empty() ? 0 : ms[std::min(ms.size() - 1, std::size_t(q * double(ms.size())))];
    }
    double max() const { return ms.empty() ? 0 : ms.back(); }
};

/// Times GETs of `key` on `c` for `span`.
latencies time_gets(default_client& c, const std::string& key, std::chrono::milliseconds span) {
    latencies out;
    const auto end = clock_type::now() + span;
    while (clock_type::now() < end) {
        const auto t0 = clock_type::now();
        auto g = c.get(key);
        const auto t1 = clock_type::now();
        REQUIRE(g);
        REQUIRE(*g);
        out.ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::sort(out.ms.begin(), out.ms.end());
    return out;
}

} // namespace

TEST_CASE("4 KiB GETs complete in well under a 200 ms flush while the same shard seals and "
          "reclaims regions without pause",
          "[storage][async_metadata]") {
    auto plan = std::make_shared<test::fault_plan>(test::seed());
    plan->flush_delay = slow;
    plan->discard_delay = slow;
    faulty_store::config fc;
    fc.inner.device = std::make_shared<test::shared_memory_device>(40ull << 20);
    fc.plan = plan;
    server_config cfg;
    cfg.listen = {"127.0.0.1:0"};
    cfg.shards = 1;                  // the GETs and the writes share the shard
    cfg.limits.max_value = 1u << 20; // regions of 2 MiB: a seal and a reclaim every 2 values
    cfg.buffers_per_shard = 16;
    cfg.trim = trim_mode::on; // every reclaim flushes and discards
    auto srv = faulty_server::create(cfg, fc);
    REQUIRE(srv);
    REQUIRE(srv->start());
    client_config cc;
    cc.servers = {srv->endpoints()[0]};
    auto reader = default_client::create(cc);
    auto writer = default_client::create(cc);
    REQUIRE(reader);
    REQUIRE(writer);
    const auto small = test::pattern(1, 4096);
    REQUIRE(reader->put("small", small));

    const auto quiet = time_gets(*reader, "small", std::chrono::milliseconds(1500));

    // A second connection fills the store over and over: 19 regions of 2 MiB, 1 MiB values.
    std::atomic<bool> stop{false};
    std::atomic<int> puts{0}, failures{0};
    std::thread fill([&] {
        const auto v = test::pattern(2, 1u << 20);
        for (int i = 0; !stop.load(); ++i) {
            if (writer->put("fill-" + std::to_string(i), v))
                ++puts;
            else
                ++failures;
        }
    });
    // The first reclaims start once the store is full; the GET key is rewritten now and then,
    // so that FIFO eviction never takes it.
    while (srv->counters(0).evicted_regions.load() < 2)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    const auto evicted0 = srv->counters(0).evicted_regions.load();
    latencies busy;
    for (int round = 0; round < 6; ++round) {
        REQUIRE(reader->put("small", small));
        auto part = time_gets(*reader, "small", std::chrono::milliseconds(500));
        busy.ms.insert(busy.ms.end(), part.ms.begin(), part.ms.end());
    }
    std::sort(busy.ms.begin(), busy.ms.end());
    const auto evicted = srv->counters(0).evicted_regions.load() - evicted0;
    stop = true;
    fill.join();

    std::printf("4 KiB GET latency (ms), flushes and discards taking 200 ms:\n"
                "  no reclaims: %zu GETs, p50 %.3f, p99 %.3f, max %.3f\n"
                "  reclaiming:  %zu GETs, p50 %.3f, p99 %.3f, max %.3f (%llu regions reclaimed, "
                "%d puts)\n",
                quiet.ms.size(), quiet.quantile(0.5), quiet.quantile(0.99), quiet.max(),
                busy.ms.size(), busy.quantile(0.5), busy.quantile(0.99), busy.max(),
                static_cast<unsigned long long>(evicted), puts.load());
    CHECK(failures == 0);
    // Each reclaim costs 400 ms of slow I/O and each seal 200 ms: several ran while the GETs
    // were timed (3 s), so a shard that waited for them would have held GETs for 200 ms.
    CHECK(evicted >= 3);
    CHECK(busy.ms.size() > 100);
    CHECK(busy.max() < 100.0);
}
