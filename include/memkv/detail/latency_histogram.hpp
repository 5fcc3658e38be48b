// SPDX-License-Identifier: Apache-2.0
// A fixed-size latency histogram: 8 buckets per power of two (about 9% resolution), no
// allocation after construction.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>

namespace memkv::detail {

class latency_histogram {
public:
    /// Records one sample in microseconds.
    void record(std::uint64_t us) noexcept {
        ++buckets_[index(us)];
        ++count_;
        max_ = std::max(max_, us);
    }

    /// The value at quantile q (0..1): the upper bound of the bucket holding it.
    std::uint64_t quantile(double q) const noexcept {
        if (count_ == 0) return 0;
        const auto target = static_cast<std::uint64_t>(q * static_cast<double>(count_ - 1)) + 1;
        std::uint64_t seen = 0;
        for (std::size_t i = 0; i < buckets_.size(); ++i) {
            seen += buckets_[i];
            if (seen >= target) return std::min(upper(i), max_);
        }
        return max_;
    }

    std::uint64_t count() const noexcept { return count_; }
    std::uint64_t max() const noexcept { return max_; }

private:
    static constexpr int sub = 8; // buckets per power of two

    static std::size_t index(std::uint64_t v) noexcept {
        if (v < sub) return static_cast<std::size_t>(v);
        const int log = 63 - std::countl_zero(v);       // >= 3
        const auto frac = (v >> (log - 3)) & (sub - 1); // next 3 bits
        return static_cast<std::size_t>((log - 2) * sub) + frac;
    }
    static std::uint64_t upper(std::size_t i) noexcept {
        if (i < sub) return i;
        const auto log = static_cast<int>(i / sub) + 2;
        const auto frac = i % sub;
        return ((std::uint64_t{sub} + frac + 1) << (log - 3)) - 1;
    }

    std::array<std::uint64_t, 64 * sub> buckets_{};
    std::uint64_t count_ = 0, max_ = 0;
};

} // namespace memkv::detail
