// SPDX-License-Identifier: Apache-2.0
// Round-trip checks shared by integration tests that run them over several transports and
// process layouts. Uses Catch2 assertions: call from a test case only.
#pragma once

#include "support/catch.hpp"
#include "support/integration.hpp"
#include "support/server_fixture.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace memkv::test {

/// Value sizes every path must carry byte for byte: empty, tiny, page, odd, around the 256 KiB
/// CRC chunk and the 1 MiB buffer, large and the 64 MiB cap.
inline const std::vector<std::size_t>& round_trip_sizes() {
    static const std::vector<std::size_t> sizes{
        0,          1,        4096,           4097,      (256u << 10) - 1,
        256u << 10, 1u << 20, (1u << 20) + 1, 3'000'001, 16u << 20,
        64u << 20};
    return sizes;
}

/// Puts a value of every size in `sizes` under "<prefix>-<size>", reads each back with get and
/// with get_into (one exact fragment), checks the reported sizes, then exists and del.
template <class Client>
void check_sizes_round_trip(Client& c, const std::string& prefix,
                            const std::vector<std::size_t>& sizes = round_trip_sizes()) {
    for (const auto size : sizes) {
        INFO("value size " << size);
        const auto key = prefix + "-" + std::to_string(size);
        const auto value = pattern(size ^ 0x5157, size);
        REQUIRE(c.put(key, value).has_value());

        auto got = c.get(key);
        REQUIRE(got.has_value());
        REQUIRE(got->has_value());
        CHECK(mismatch(**got, value) == "");

        std::vector<std::byte> dst(size + 1, std::byte{0xAB});
        auto n = c.get_into(key, {std::span<std::byte>(dst.data(), size)});
        REQUIRE(n.has_value());
        REQUIRE(n->has_value());
        CHECK(**n == size);
        CHECK(mismatch(std::span<const std::byte>(dst.data(), size), value) == "");
        CHECK(dst[size] == std::byte{0xAB}); // nothing written past the fragment
    }
    std::vector<std::string> keys;
    for (const auto size : sizes)
        keys.push_back(prefix + "-" + std::to_string(size));
    auto e = c.exists(keys);
    REQUIRE(e.has_value());
    for (std::size_t i = 0; i < keys.size(); ++i)
        CHECK((*e)[i]);
    for (const auto& k : keys) {
        INFO("key " << k);
        auto deleted = c.del(k);
        REQUIRE(deleted.has_value());
        CHECK(*deleted);
        auto miss = c.get(k);
        REQUIRE(miss.has_value());
        CHECK_FALSE(miss->has_value());
        auto again = c.del(k);
        REQUIRE(again.has_value());
        CHECK_FALSE(*again);
    }
}

} // namespace memkv::test
