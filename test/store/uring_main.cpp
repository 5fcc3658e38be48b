// SPDX-License-Identifier: Apache-2.0
// Test runner for the io_uring stores: exits 77 (skipped, as liburing's tests do) when io_uring
// cannot be set up here (EPERM/ENOSYS: a sandbox, or kernel.io_uring_disabled), or when the test
// executable's own memkv::test::probe_requirements() returns 77; otherwise prints the seed and
// runs Catch2 like support/main.cpp.
#define CATCH_CONFIG_RUNNER
#include "support/catch.hpp"
#include "support/seed.hpp"

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
    return Catch::Session().run(argc, argv);
}
