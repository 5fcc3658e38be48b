// SPDX-License-Identifier: Apache-2.0
// Test runner for the storage tests that run servers over io_uring stores: exits 77 (skipped)
// when io_uring cannot be set up here, and when no test failed but one skipped (MEMKV_SKIP in
// skip.hpp: no loop devices, no hugepages); otherwise prints the seed and runs Catch2 like
// support/main.cpp.
#define CATCH_CONFIG_RUNNER
#include "storage/skip.hpp"
#include "support/catch.hpp"
#include "support/seed.hpp"

#include <liburing.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

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
