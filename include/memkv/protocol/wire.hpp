// SPDX-License-Identifier: Apache-2.0
// Little-endian loads and stores for the wire formats (no alignment assumed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace memkv::protocol {

inline void store_le16(std::byte* p, std::uint16_t v) noexcept {
    p[0] = std::byte(v);
    p[1] = std::byte(v >> 8);
}
inline void store_le32(std::byte* p, std::uint32_t v) noexcept {
    for (int i = 0; i < 4; ++i)
        p[i] = std::byte(v >> (8 * i));
}
inline void store_le64(std::byte* p, std::uint64_t v) noexcept {
    for (int i = 0; i < 8; ++i)
        p[i] = std::byte(v >> (8 * i));
}
inline std::uint16_t load_le16(const std::byte* p) noexcept {
    return static_cast<std::uint16_t>(std::to_integer<unsigned>(p[0]) |
                                      (std::to_integer<unsigned>(p[1]) << 8));
}
inline std::uint32_t load_le32(const std::byte* p) noexcept {
    std::uint32_t v = 0;
    for (int i = 3; i >= 0; --i)
        v = (v << 8) | std::to_integer<std::uint32_t>(p[i]);
    return v;
}
inline std::uint64_t load_le64(const std::byte* p) noexcept {
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i)
        v = (v << 8) | std::to_integer<std::uint64_t>(p[i]);
    return v;
}

} // namespace memkv::protocol
