// SPDX-License-Identifier: Apache-2.0
// CRC32C on top of ISA-L's crc32_iscsi.
#include <memkv/checksum.hpp>

#include <isa-l/crc.h>

namespace memkv {

std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc) noexcept {
    // ISA-L's crc32_iscsi neither inverts its initial value nor its result; the standard CRC32C
    // does both, which is also what makes a previous result the right value to continue from.
    // ISA-L takes an int length: feed it at most 1 GiB at a time.
    constexpr std::size_t max_chunk = std::size_t{1} << 30;
    auto* p = static_cast<unsigned char*>(const_cast<void*>(data));
    unsigned int state = ~crc;
    while (n > 0) {
        const std::size_t chunk = n < max_chunk ? n : max_chunk;
        state = crc32_iscsi(p, static_cast<int>(chunk), state);
        p += chunk;
        n -= chunk;
    }
    return ~state;
}

std::uint32_t crc32c(std::span<const std::byte> data, std::uint32_t crc) noexcept {
    return crc32c(data.data(), data.size(), crc);
}

} // namespace memkv
