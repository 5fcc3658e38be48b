// SPDX-License-Identifier: Apache-2.0
// No head-of-line blocking: while a 64 MiB value streams on a connection (GET or PUT), 4 KiB
// GETs on the same connection (keys of the same shard) complete before it.
#include "support/catch.hpp"
#include "support/integration.hpp"
#include "support/server_fixture.hpp"

#include <chrono>
#include <mutex>
#include <string>
#include <vector>

using namespace memkv;
using memkv::test::mismatch;
using memkv::test::pattern;
using memkv::test::server_fixture;
using memkv::test::shard_of;

namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * 1024;
constexpr std::uint32_t shards = 2;
constexpr std::size_t small_count = 20;
using clock_type = std::chrono::steady_clock;

/// Records the order and time in which submitted batches complete.
class completion_log {
public:
    /// A callback that records `index` when its batch completes.
    default_client::callback record(std::size_t index) {
        return [this, index](std::span<operation>) {
            {
                std::lock_guard lock(mutex_);
                order_.push_back({index, clock_type::now()});
            }
            done_.signal();
        };
    }
    bool wait_all(std::size_t n) { return done_.wait_for(n, std::chrono::seconds(60)) >= n; }
    /// Position at which `index` completed (n if it did not).
    std::size_t position(std::size_t index) {
        std::lock_guard lock(mutex_);
        for (std::size_t i = 0; i < order_.size(); ++i)
            if (order_[i].first == index) return i;
        return order_.size();
    }
    clock_type::time_point time(std::size_t index) {
        std::lock_guard lock(mutex_);
        for (const auto& [i, t] : order_)
            if (i == index) return t;
        return clock_type::time_point::max();
    }

private:
    std::mutex mutex_;
    std::vector<std::pair<std::size_t, clock_type::time_point>> order_;
    memkv::test::completion_counter done_;
};

double ms_between(clock_type::time_point a, clock_type::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
}

/// The small keys (same shard as `big_key`) and their 4 KiB values, stored.
std::vector<std::string> store_small(default_client& c, const std::string& big_key) {
    auto keys =
        memkv::test::keys_on_shard("hol-small", shard_of(big_key, shards), shards, small_count);
    for (std::size_t i = 0; i < keys.size(); ++i)
        REQUIRE(c.put(keys[i], pattern(i, 4 * KiB)).has_value());
    return keys;
}

/// One round: the big operation `ops[0]` is submitted first, then each small GET in a batch of
/// its own. Every small GET submitted during the first half of the big transfer must complete
/// before the big one (a small GET submitted near its end cannot overtake it, and on a busy
/// 2-core machine the submitting thread may be descheduled for a while). Returns how many small
/// GETs were submitted early enough to count.
std::size_t run_round(default_client& c, std::vector<operation>& ops, const char* what) {
    completion_log log;
    std::vector<clock_type::time_point> submitted(ops.size());
    const auto t0 = clock_type::now();
    for (std::size_t i = 0; i < ops.size(); ++i) {
        REQUIRE(c.submit({&ops[i], 1}, log.record(i)).has_value());
        submitted[i] = clock_type::now();
    }
    REQUIRE(log.wait_all(ops.size()));
    const auto big_done = log.time(0);
    const auto half = t0 + (big_done - t0) / 2;

    std::string timeline;
    for (std::size_t i = 1; i < ops.size(); ++i)
        timeline += " " + std::to_string(static_cast<int>(ms_between(t0, submitted[i]))) + "->" +
                    std::to_string(static_cast<int>(ms_between(t0, log.time(i))));
    INFO(what << " done after " << ms_between(t0, big_done)
              << " ms; small GETs submitted->completed (ms):" << timeline);
    std::size_t early = 0;
    for (std::size_t i = 1; i < ops.size(); ++i) {
        INFO("small GET " << i);
        CHECK(!ops[i].status);
        if (submitted[i] >= half) continue;
        ++early;
        CHECK(log.time(i) < big_done);
    }
    CHECK(!ops[0].status);
    return early;
}

} // namespace

TEST_CASE("Small GETs complete while a 64 MiB GET streams on the same connection",
          "[integration][head_of_line]") {
    // Each sent piece schedules the next read, which memory_store completes at once: the shard
    // handles one batch of completions per loop iteration, and the GET's read-ahead counts its
    // queued pieces (its connection stays under the in-flight cap), so requests that arrive
    // meanwhile are read between pieces instead of after the whole value.
    server_fixture fx(server_fixture::make_config(shards));
    auto c = fx.client();
    const std::string big_key = "hol-big-get";
    const auto shard = shard_of(big_key, shards);
    const auto big = pattern(64, 64 * MiB);
    REQUIRE(c->put(big_key, big).has_value());
    const auto small_keys = store_small(*c, big_key);
    std::vector<std::byte> big_dst(big.size());
    std::vector<std::vector<std::byte>> small_dst(small_count, std::vector<std::byte>(4 * KiB));

    std::size_t early = 0;
    for (int round = 0; round < 6; ++round) {
        INFO("round " << round);
        const auto ooo_before = fx.server->counters(shard).out_of_order_replies.load();
        std::fill(big_dst.begin(), big_dst.end(), std::byte{0});
        std::vector<operation> ops(1 + small_count);
        ops[0].kind = op_kind::get;
        ops[0].key = big_key;
        ops[0].fragments = {std::span(big_dst)};
        for (std::size_t i = 0; i < small_count; ++i) {
            ops[1 + i].kind = op_kind::get;
            ops[1 + i].key = small_keys[i];
            ops[1 + i].fragments = {std::span(small_dst[i])};
        }
        const auto n = run_round(*c, ops, "big GET");
        early += n;
        for (std::size_t i = 0; i < small_count; ++i)
            CHECK(mismatch(small_dst[i], pattern(i, 4 * KiB)) == "");
        CHECK(ops[0].size == big.size());
        CHECK(mismatch(big_dst, big) == "");
        // The server answered the early small requests while the big one was pending.
        CHECK(fx.server->counters(shard).out_of_order_replies.load() - ooo_before >= n);
    }
    CHECK(early > 0); // at least some rounds were conclusive
}

TEST_CASE("Small GETs complete while a 64 MiB PUT streams on the same connection",
          "[integration][head_of_line]") {
    server_fixture fx(server_fixture::make_config(shards));
    auto c = fx.client();
    const std::string big_key = "hol-big-put";
    const auto shard = shard_of(big_key, shards);
    const auto small_keys = store_small(*c, big_key);

    std::size_t early = 0;
    for (int round = 0; round < 3; ++round) {
        INFO("round " << round);
        const auto big = pattern(65 + round, 64 * MiB);
        const auto ooo_before = fx.server->counters(shard).out_of_order_replies.load();
        std::vector<operation> ops(1 + small_count);
        ops[0].kind = op_kind::put;
        ops[0].key = big_key;
        ops[0].value = big;
        for (std::size_t i = 0; i < small_count; ++i) {
            ops[1 + i].kind = op_kind::get;
            ops[1 + i].key = small_keys[i];
        }
        const auto n = run_round(*c, ops, "big PUT");
        early += n;
        for (std::size_t i = 0; i < small_count; ++i)
            CHECK(mismatch(ops[1 + i].data, pattern(i, 4 * KiB)) == "");
        CHECK(fx.server->counters(shard).out_of_order_replies.load() - ooo_before >= n);
        // The big value arrived whole.
        auto got = c->get(big_key);
        REQUIRE(got.has_value());
        REQUIRE(got->has_value());
        CHECK(mismatch(**got, big) == "");
    }
    CHECK(early > 0);
}

TEST_CASE("One connection's 64 MiB PUT holds no more buffers than its in-flight cap",
          "[integration][head_of_line][backpressure]") {
    // The cap (server_config::connection_inflight_cap, 16 MiB = 16 buffers) holds within one
    // read of the socket too: the value's writes complete only after it returns, so the shard
    // pauses the connection instead of taking the whole pool (64 buffers).
    server_fixture fx(server_fixture::make_config(shards));
    auto c = fx.client();
    const std::string key = "bp-big-put";
    const auto shard = shard_of(key, shards);
    const auto big = pattern(7, 64 * MiB);
    REQUIRE(c->put(key, big).has_value());
    const auto cap_buffers =
        fx.server->config().connection_inflight_cap / fx.server->config().buffer_size;
    const auto high = fx.server->counters(shard).pool_high_water.load();
    INFO("pool_high_water " << high << ", cap " << cap_buffers << " buffers");
    CHECK(high <= cap_buffers + 2); // a frame may straddle two buffers
    auto got = c->get(key);
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    CHECK(mismatch(**got, big) == "");
}
