// SPDX-License-Identifier: Apache-2.0
// Configured caps on every length the protocol carries. Checked before anything is allocated.
#pragma once

#include <cstddef>
#include <cstdint>

namespace memkv::protocol {

/// Caps on declared lengths. Both ends check them before allocating; a frame over a cap is
/// answered with `errc::too_large` and the connection is closed.
struct limits {
    std::uint32_t max_key = 1024;          ///< key bytes (namespaced key)
    std::uint32_t max_meta = 256;          ///< per-value metadata bytes
    std::uint64_t max_value = 64ull << 20; ///< value bytes
    std::uint32_t max_batch = 4096;        ///< keys per exists or sub-requests per batch
    std::uint32_t max_body = 1u << 20;     ///< MACed body bytes per frame
    std::uint32_t max_chunk = 1u << 20;    ///< payload bytes per frame (protocol v1: 1 MiB)
};

/// Payload bytes per frame that senders produce by default; chunks of different requests
/// interleave on one connection at this granularity.
inline constexpr std::uint32_t default_chunk = 1u << 20;

} // namespace memkv::protocol
