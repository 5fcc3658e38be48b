// SPDX-License-Identifier: Apache-2.0
// The seed of randomised tests: MEMKV_TEST_SEED if set, else time-based; printed by main().
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <random>

namespace memkv::test {

inline std::uint64_t seed() {
    static const std::uint64_t s = []() -> std::uint64_t {
        if (const char* env = std::getenv("MEMKV_TEST_SEED")) return std::strtoull(env, nullptr, 0);
        return static_cast<std::uint64_t>(
            std::chrono::steady_clock::now().time_since_epoch().count());
    }();
    return s;
}

/// A generator seeded from seed() and a per-test salt.
inline std::mt19937_64 rng(std::uint64_t salt = 0) {
    return std::mt19937_64(seed() ^ salt);
}

} // namespace memkv::test
