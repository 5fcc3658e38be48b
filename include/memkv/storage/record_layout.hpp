// SPDX-License-Identifier: Apache-2.0
// How a value is checksummed and timed on the drive: CRC32C chunks and wall-clock expiry.
#pragma once

#include <chrono>
#include <cstdint>

namespace memkv::storage {

/// Values are checksummed in chunks of this many bytes (the last chunk may be shorter), so that
/// range reads can be verified without reading the whole value.
inline constexpr std::uint32_t crc_chunk_size = 256u << 10;

/// Number of CRC chunks of a value of `len` bytes.
constexpr std::uint64_t crc_chunks(std::uint64_t len) noexcept {
    return (len + crc_chunk_size - 1) / crc_chunk_size;
}

/// Wall-clock milliseconds (TTLs are stored on the drive, so they use the wall clock).
inline std::uint64_t unix_ms() noexcept {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
}

} // namespace memkv::storage
