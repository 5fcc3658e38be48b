// SPDX-License-Identifier: Apache-2.0
// Test runner: prints and applies the random seed (MEMKV_TEST_SEED) so every randomised test
// replays from what it printed.
#define CATCH_CONFIG_RUNNER
#include "support/catch.hpp"
#include "support/seed.hpp"

#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
    std::fprintf(stderr, "memkv test seed: %llu (set MEMKV_TEST_SEED to replay)\n",
                 static_cast<unsigned long long>(memkv::test::seed()));
    return Catch::Session().run(argc, argv);
}
