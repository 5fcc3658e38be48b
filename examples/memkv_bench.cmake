# SPDX-License-Identifier: Apache-2.0
# memkv-bench: the end-to-end benchmark (block size x TCP write/read GiB/s, latency percentiles,
# JSON). Included from examples/CMakeLists.txt; see docs/BENCHMARKS.md.
add_executable(memkv-bench memkv_bench.cpp)
target_link_libraries(memkv-bench PRIVATE memkv::memkv memkv_warnings CLI11::CLI11)
target_compile_definitions(memkv-bench PRIVATE MEMKV_VERSION="${PROJECT_VERSION}")
