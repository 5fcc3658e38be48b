// SPDX-License-Identifier: Apache-2.0
// CRC32C (Castagnoli), the checksum of payload bytes on the wire and of stored value chunks.
// Hardware-accelerated through ISA-L.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace memkv {

/// Standard CRC32C (Castagnoli, reflected, initial value and final XOR 0xFFFFFFFF) of `data`.
/// `crc` is a previous result to continue from, so `crc32c(b, crc32c(a)) == crc32c(a || b)`;
/// the default 0 starts a new checksum (the CRC32C of no bytes is 0).
/// Example: `crc32c("123456789")` is 0xE3069283. Any length; thread-safe.
std::uint32_t crc32c(std::span<const std::byte> data, std::uint32_t crc = 0) noexcept;

/// As above, over the `n` bytes at `data` (which may be null when `n` is 0).
std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc = 0) noexcept;

} // namespace memkv
