// SPDX-License-Identifier: Apache-2.0
// Test runner for the tests over io_uring stores, in place of main.cpp: exits 77 (skipped, as
// liburing's tests do) when io_uring cannot be set up here (EPERM/ENOSYS: a sandbox, or
// kernel.io_uring_disabled), when the executable's own memkv::test::probe_requirements() returns
// 77, or when no test failed but one skipped (MEMKV_SKIP in skip.hpp: no loop devices, no
// hugepages); otherwise prints the seed and runs Catch2 like main.cpp.
#define CATCH_CONFIG_RUNNER
#include "support/catch.hpp"
#include "support/seed.hpp"
#include "support/skip.hpp"

#include <liburing.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace memkv::test {
/// Further requirements of a test executable; it defines its own to skip (77) or fail.
[[gnu::weak]] int probe_requirements() {
    return 0;
}
} // namespace memkv::test

int main(int argc, char** argv) {
    io_uring ring;
    const int r = io_uring_queue_init(8, &ring, 0);
    if (r == -EPERM || r == -ENOSYS || r == -EACCES) {
        std::fprintf(stderr, "skipped: io_uring is not available here: %s\n", std::strerror(-r));
        return 77;
    }
    if (r < 0) {
        std::fprintf(stderr, "io_uring_queue_init: %s\n", std::strerror(-r));
        return 1;
    }
    io_uring_queue_exit(&ring);
    if (const int rc = memkv::test::probe_requirements(); rc != 0) return rc;
    std::fprintf(stderr, "memkv test seed: %llu (set MEMKV_TEST_SEED to replay)\n",
                 static_cast<unsigned long long>(memkv::test::seed()));
    const int rc = Catch::Session().run(argc, argv);
    if (rc == 0 && memkv::test::skipped_tests() > 0) {
        std::fprintf(stderr, "%d test case(s) skipped: exit 77\n",
                     memkv::test::skipped_tests().load());
        return 77;
    }
    return rc;
}
