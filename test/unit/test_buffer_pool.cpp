// SPDX-License-Identifier: Apache-2.0
// buffer_pool: buffers are 4 KiB aligned, never overlap each other's headroom, lie inside
// memory() with their headroom, and come back once each.
#include "support/catch.hpp"

#include <memkv/detail/buffer_pool.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

using memkv::detail::buffer_pool;

TEST_CASE("buffer_pool lays out buffers with their headroom inside one mapping", "[unit][pool]") {
    for (const std::size_t headroom : {std::size_t{0}, std::size_t{4096}}) {
        for (const bool huge : {false, true}) {
            INFO("headroom " << headroom << ", try hugepages " << huge);
            constexpr std::size_t size = 64 << 10, count = 9;
            auto p = buffer_pool::create({size, count, huge, headroom});
            REQUIRE(p);
            CHECK(p->capacity() == count);
            CHECK(p->headroom() == headroom);
            CHECK(p->stride() == size + headroom);
            const auto m = p->memory();
            CHECK(m.size() >= count * (size + headroom));
            std::vector<std::byte*> got;
            while (auto* b = p->acquire())
                got.push_back(b);
            REQUIRE(got.size() == count);
            CHECK(p->available() == 0);
            std::sort(got.begin(), got.end());
            for (std::size_t i = 0; i < got.size(); ++i) {
                auto* b = got[i];
                CHECK(reinterpret_cast<std::uintptr_t>(b) % 4096 == 0);
                CHECK(b - headroom >= m.data());
                CHECK(b + size <= m.data() + m.size());
                if (i > 0) CHECK(got[i - 1] + size <= b - headroom); // no overlap
                std::memset(b - headroom, 0x5a, size + headroom);    // all of it is writable
            }
            for (auto* b : got)
                p->release(b);
            CHECK(p->available() == count);
            CHECK(p->high_water() == count);
        }
    }
    CHECK_FALSE(buffer_pool::create({64 << 10, 4, false, 100})); // headroom not a 4 KiB multiple
}
