// SPDX-License-Identifier: Apache-2.0
// Micro-benchmarks of the per-frame integrity costs: the frame MAC (header + MACed body) and
// CRC32C over payload-sized buffers.
#include <memkv/auth/frame_mac.hpp>
#include <memkv/checksum.hpp>

#include <benchmark/benchmark.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace {

std::vector<std::byte> pattern(std::size_t n) {
    std::vector<std::byte> v(n);
    std::uint32_t x = 0x9E3779B9u;
    for (auto& b : v) {
        x = x * 1664525u + 1013904223u;
        b = static_cast<std::byte>(x >> 24);
    }
    return v;
}

/// frame_mac::compute over a 56-byte header prefix and a body of state.range(0) bytes.
void bm_frame_mac(benchmark::State& state) {
    std::array<std::byte, 32> key{};
    key[0] = std::byte{1};
    auto mac = memkv::auth::frame_mac::create(key);
    if (!mac) {
        state.SkipWithError("frame_mac::create failed");
        return;
    }
    const auto header = pattern(56);
    const auto body = pattern(static_cast<std::size_t>(state.range(0)));
    std::uint64_t seq = 0;
    for (auto _ : state) {
        auto m = mac->compute(seq++, header, body);
        benchmark::DoNotOptimize(m);
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                            static_cast<std::int64_t>(8 + header.size() + body.size()));
}
BENCHMARK(bm_frame_mac)->Arg(0)->Arg(64)->Arg(1024);

/// crc32c over state.range(0) bytes.
void bm_crc32c(benchmark::State& state) {
    const auto data = pattern(static_cast<std::size_t>(state.range(0)));
    std::uint32_t crc = 0;
    for (auto _ : state) {
        crc = memkv::crc32c(data, crc);
        benchmark::DoNotOptimize(crc);
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                            static_cast<std::int64_t>(data.size()));
}
BENCHMARK(bm_crc32c)->Arg(4 << 10)->Arg(256 << 10)->Arg(1 << 20);

} // namespace

BENCHMARK_MAIN();
