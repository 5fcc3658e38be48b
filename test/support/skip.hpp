// SPDX-License-Identifier: Apache-2.0
// Skipping a test case that needs what this machine lacks (loop devices, hugepages, root):
// Catch2 2.x has no SKIP, so uring_main.cpp exits 77 (CTest: skipped) when no test failed and
// at least one skipped. Register each hardware-dependent part as its own CTest test.
#pragma once

#include "support/catch.hpp"

#include <atomic>
#include <cstdio>
#include <string>

namespace memkv::test {

/// Test cases that skipped in this run.
inline std::atomic<int>& skipped_tests() {
    static std::atomic<int> n{0};
    return n;
}

/// Records that the running test case is skipped, and why (printed on stderr).
inline void note_skip(const std::string& why) {
    skipped_tests().fetch_add(1);
    std::fprintf(stderr, "skipped: %s\n", why.c_str());
}

} // namespace memkv::test

/// Skips the running test case (returns from it): the executable exits 77 unless a test failed.
#define MEMKV_SKIP(why)                                                                            \
    do {                                                                                           \
        ::memkv::test::note_skip(why);                                                             \
        WARN("skipped: " << (why));                                                                \
        return;                                                                                    \
    } while (0)
