// SPDX-License-Identifier: Apache-2.0
// Shared setup of the security tests: an in-process server with a key ring, a valid client that
// must keep round-tripping values while the attacks run, and timing bookkeeping.
#pragma once

#include "security/raw_connection.hpp"
#include "support/catch.hpp"
#include "support/seed.hpp"
#include "support/server_fixture.hpp"

#include <memkv/memkv.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define MEMKV_SEC_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MEMKV_SEC_ASAN 1
#endif
#endif
#ifndef MEMKV_SEC_ASAN
#define MEMKV_SEC_ASAN 0
#endif

namespace memkv::test::security {

/// How much RSS may grow over a suite: 64 MiB, plus ASan's quarantine of freed memory (256 MiB
/// by default) in sanitizer builds.
inline constexpr std::uint64_t rss_slack = (64ull << 20) + (MEMKV_SEC_ASAN ? (256ull << 20) : 0);

/// A key-ring entry with a deterministic secret (every byte `fill`).
inline auth::key_entry make_key(std::uint32_t id, std::string tenant, std::uint8_t fill) {
    auth::key_entry e;
    e.id = id;
    e.tenant = std::move(tenant);
    e.secret.fill(std::byte{fill});
    return e;
}

/// A ring of the given entries.
inline std::shared_ptr<auth::key_ring> make_ring(std::initializer_list<auth::key_entry> keys) {
    auto ring = std::make_shared<auth::key_ring>();
    for (const auto& k : keys)
        REQUIRE(ring->add(k));
    return ring;
}

/// Close latencies of a group of cases.
struct timing {
    explicit timing(std::string name) : group(std::move(name)) {}
    std::string group;
    std::size_t cases = 0;
    double max_ms = 0, sum_ms = 0;
    std::string slowest;

    void add(const std::string& name, double ms) {
        ++cases;
        sum_ms += ms;
        if (ms > max_ms) {
            max_ms = ms;
            slowest = name;
        }
    }
    void print() const {
        std::printf("[security] %-34s %4zu cases, close latency mean %.2f ms, max %.2f ms (%s)\n",
                    group.c_str(), cases, cases ? sum_ms / static_cast<double>(cases) : 0.0, max_ms,
                    slowest.c_str());
        std::fflush(stdout);
    }
};

/// A 2-shard server whose clients must prove key `key` (handshake timeout 1 s), a valid client
/// of it, and a key owned by each shard.
struct suite_env {
    static constexpr std::uint32_t shards = 2;
    auth::key_entry key = make_key(7, "acme", 0x5a);
    server_fixture fx;
    std::optional<default_client> valid;
    std::array<std::string, shards> shard_key; // a key each shard owns
    std::uint64_t rounds = 0;
    std::uint64_t rss_start = 0, high_water_start = 0;

    static server_config config(const auth::key_entry& k) {
        auto cfg = test::make_config(shards);
        cfg.keys = make_ring({k});
        cfg.handshake_timeout = milliseconds(1000);
        return cfg;
    }

    suite_env() : fx(config(key)) {
        valid = client();
        for (std::uint32_t s = 0; s < shards; ++s)
            shard_key[s] = owned_key(s, shards, "target");
        // Warm up: both shards serve puts and gets, so the baselines include what a valid
        // client needs (one bounce buffer per shard for these small values).
        for (int i = 0; i < 8; ++i)
            roundtrip();
        for (std::uint32_t s = 0; s < shards; ++s)
            REQUIRE(valid->put(shard_key[s], test::pattern(1000 + s, 4096)));
        rss_start = rss_bytes();
        high_water_start = pool_high_water();
    }

    /// A new client of the server with the valid key (always engaged: a failure aborts).
    std::optional<default_client> client() const {
        client_config cc;
        cc.key = key;
        cc.request_timeout = milliseconds(5000);
        return fx.client(std::move(cc));
    }

    const std::string& endpoint() const { return fx.tcp_endpoint; }

    /// Sum of the shards' buffer-pool high-water marks.
    std::uint64_t pool_high_water() const {
        std::uint64_t sum = 0;
        for (std::uint32_t s = 0; s < shards; ++s)
            sum += fx.server->counters(s).pool_high_water.load();
        return sum;
    }

    /// The valid client stores a fresh value and reads it back.
    void roundtrip() { roundtrip_with(*valid); }
    void roundtrip_with(default_client& c) {
        const auto n = rounds++;
        const std::string k = "valid-" + std::to_string(n);
        const auto v = test::pattern(n, 4096 + n % 512);
        auto p = c.put(k, v);
        INFO("valid put " << k << ": " << (p ? "ok" : p.error().message()));
        REQUIRE(p);
        auto g = c.get(k);
        INFO("valid get " << k << ": " << (g ? (*g ? "ok" : "miss") : g.error().message()));
        REQUIRE(g);
        REQUIRE(*g);
        REQUIRE(**g == v);
    }

    /// A raw connection, authenticated and attached to `shard`.
    raw_connection attached(std::uint32_t shard) {
        auto c = raw_connection::connect(endpoint());
        c.open_session(&key, shard);
        return c;
    }

    /// RSS and pool high water stayed flat over everything done since construction.
    void check_flat(const char* what) {
        const auto rss = rss_bytes();
        const auto hw = pool_high_water();
        const double grew_mib =
            (static_cast<double>(rss) - static_cast<double>(rss_start)) / (1024.0 * 1024.0);
        std::printf("[security] %s: RSS %.1f -> %.1f MiB (%+.1f MiB); pool high water %llu -> "
                    "%llu buffers\n",
                    what, static_cast<double>(rss_start) / 1048576.0,
                    static_cast<double>(rss) / 1048576.0, grew_mib,
                    static_cast<unsigned long long>(high_water_start),
                    static_cast<unsigned long long>(hw));
        std::fflush(stdout);
        CHECK(rss < rss_start + rss_slack);
        // The valid client's values are small: one bounce buffer per shard at a time. A
        // declared length that reached an allocation would show here (or in RSS).
        CHECK(hw <= std::max<std::uint64_t>(high_water_start, shards));
    }
};

} // namespace memkv::test::security
