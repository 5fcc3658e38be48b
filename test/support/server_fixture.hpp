// SPDX-License-Identifier: Apache-2.0
// An in-process memkv server on loopback, and helpers to build values for tests.
#pragma once

#include <memkv/memkv.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace memkv::test {

/// A loopback configuration on an ephemeral port.
inline server_config make_config(std::uint32_t shards = 2) {
    server_config cfg;
    cfg.listen = {"127.0.0.1:0"};
    cfg.shards = shards;
    return cfg;
}

/// A memory_store server over TCP (and a Unix socket when `with_unix`) on an ephemeral port.
struct server_fixture {
    std::optional<memory_server> server;
    std::string tcp_endpoint;
    std::string unix_endpoint;

    static server_config make_config(std::uint32_t shards = 2) { return test::make_config(shards); }

    explicit server_fixture(server_config cfg = test::make_config(),
                            std::uint64_t capacity = 1ull << 30, bool with_unix = false) {
        if (with_unix)
            cfg.listen.push_back("unix:/tmp/memkv-test-" + std::to_string(::getpid()) + "-" +
                                 std::to_string(counter()++) + ".sock");
        auto s = memory_server::create(cfg, {.capacity = capacity});
        if (!s) fail("create", s.error());
        server = std::move(*s);
        if (auto r = server->start(); !r) fail("start", r.error());
        tcp_endpoint = server->endpoints()[0];
        if (with_unix) unix_endpoint = server->endpoints()[1];
    }

    /// A client of this server (shares nothing with other clients). Always engaged (a failure
    /// aborts); an optional so that a test can reset() it.
    std::optional<default_client> client(client_config cc = {}) const {
        if (cc.servers.empty()) cc.servers = {tcp_endpoint};
        auto c = default_client::create(std::move(cc));
        if (!c) fail("client", c.error());
        return std::move(*c);
    }

    [[noreturn]] static void fail(const char* what, std::error_code ec) {
        std::fprintf(stderr, "server_fixture: %s failed: %s\n", what, ec.message().c_str());
        std::abort();
    }
    static int& counter() {
        static int n = 0;
        return n;
    }
};

/// Deterministic pseudo-random bytes for (seed, size): any corruption or mix-up shows.
inline std::vector<std::byte> pattern(std::uint64_t seed, std::size_t size) {
    std::vector<std::byte> v(size);
    std::mt19937_64 g(seed * 0x9E3779B97F4A7C15ull + size);
    std::size_t i = 0;
    for (; i + 8 <= size; i += 8) {
        const auto x = g();
        std::memcpy(v.data() + i, &x, 8);
    }
    for (; i < size; ++i)
        v[i] = std::byte(g());
    return v;
}

} // namespace memkv::test
