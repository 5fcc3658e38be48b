#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# memkv's full check, as CI runs it (.ci/run):
#   1. installs the Debian 12 dependencies (scripts/install-deps.sh; a no-op when present);
#   2. configures and builds build/ci-gcc with g++ (RelWithDebInfo, warnings as errors);
#   3. configures and builds build/ci-clang with clang++ (warnings as errors; not run: it catches
#      clang-only warnings);
#   4. builds the client's thread and fork tests with ThreadSanitizer (build/ci-tsan) and runs
#      them: a data race fails the script here;
#   5. runs the test suite of build/ci-gcc with CTest: the last command, so the output ends with
#      CTest's summary and the script exits with its status.
# MEMKV_JOBS sets the build parallelism (default: nproc).
set -euo pipefail

cd "$(dirname "$0")/.."
jobs=${MEMKV_JOBS:-$(nproc)}

banner() { printf '\n==== %s ====\n' "$*"; }

banner "dependencies"
scripts/install-deps.sh

banner "configure build/ci-gcc (g++, RelWithDebInfo, MEMKV_WERROR=ON)"
cmake -S . -B build/ci-gcc -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++ \
  -DMEMKV_WERROR=ON
banner "build build/ci-gcc (-j${jobs})"
cmake --build build/ci-gcc -j "${jobs}"

banner "configure build/ci-clang (clang++, RelWithDebInfo, MEMKV_WERROR=ON)"
cmake -S . -B build/ci-clang -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DMEMKV_WERROR=ON
banner "build build/ci-clang (-j${jobs}; built, not run)"
cmake --build build/ci-clang -j "${jobs}"

banner "configure, build and run build/ci-tsan (g++, ThreadSanitizer: the client under threads and fork)"
cmake -S . -B build/ci-tsan -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++ \
  -DMEMKV_SANITIZE=thread
cmake --build build/ci-tsan -j "${jobs}" --target test_threads test_multiprocess
# setarch -R: GCC 12's TSan cannot map its shadow under high mmap randomisation (mmap_rnd_bits > 28).
setarch "$(uname -m)" -R ctest --test-dir build/ci-tsan --output-on-failure \
  -R '^(test_threads|test_multiprocess)$' --timeout 600

banner "test build/ci-gcc"
ctest --test-dir build/ci-gcc --output-on-failure -j2 --timeout 600
