// SPDX-License-Identifier: Apache-2.0
// memory_io: the store operations of a store whose device is process memory.
#pragma once

#include <memkv/concepts.hpp>

#include <algorithm>
#include <cstring>
#include <vector>

namespace memkv::detail {

/// Implements read, write, flush and poll of memkv::store for `Derived`, which provides
/// `std::byte* base()`, `capacity()` and `block_size()`. Every operation completes before
/// submission returns; its completion is queued for the next poll(). `Derived` writes its own
/// discard() from check() and complete().
template <class Derived>
class memory_io {
public:
    result<void> read(std::uint64_t offset, std::span<std::byte> buf, std::uint64_t tag) noexcept {
        MEMKV_TRY(check(offset, buf.size(), buf.data()));
        std::memcpy(buf.data(), self().base() + offset, buf.size());
        complete(tag, buf.size());
        return {};
    }
    result<void> write(std::uint64_t offset, std::span<const std::byte> buf,
                       std::uint64_t tag) noexcept {
        MEMKV_TRY(check(offset, buf.size(), buf.data()));
        std::memcpy(self().base() + offset, buf.data(), buf.size());
        complete(tag, buf.size());
        return {};
    }
    result<void> flush(std::uint64_t tag) noexcept {
        complete(tag, 0);
        return {};
    }
    std::size_t poll(std::span<io_completion> out) noexcept {
        const std::size_t n = std::min(out.size(), done_.size());
        std::copy_n(done_.begin(), n, out.begin());
        done_.erase(done_.begin(), done_.begin() + static_cast<std::ptrdiff_t>(n));
        return n;
    }

protected:
    /// errc::bad_alignment unless offset, length and buffer are block-aligned;
    /// errc::invalid_argument past the end.
    result<void> check(std::uint64_t offset, std::uint64_t length, const void* buf) const noexcept {
        const std::uint64_t block = self().block_size(), cap = self().capacity();
        if (offset % block != 0 || length % block != 0 ||
            reinterpret_cast<std::uintptr_t>(buf) % block != 0)
            return errc::bad_alignment;
        if (offset > cap || length > cap - offset) return errc::invalid_argument;
        return {};
    }
    void complete(std::uint64_t tag, std::uint64_t bytes) {
        done_.push_back({tag, static_cast<std::int64_t>(bytes)});
    }

private:
    Derived& self() noexcept { return static_cast<Derived&>(*this); }
    const Derived& self() const noexcept { return static_cast<const Derived&>(*this); }

    std::vector<io_completion> done_; // completions not yet polled
};

} // namespace memkv::detail
