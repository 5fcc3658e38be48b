// SPDX-License-Identifier: Apache-2.0
// A fixed pool of aligned I/O buffers (hugepage-backed when available), owned by one shard.
#pragma once

#include <memkv/result.hpp>

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace memkv::detail {

/// Fixed-size buffers carved from one mapping made at creation; nothing is allocated afterwards.
/// The mapping uses MAP_HUGETLB when hugepages are reserved, else normal pages with
/// MADV_HUGEPAGE. Not thread-safe: one shard owns a pool. Buffer i starts at
/// i * stride() + headroom() in the mapping: aligned to 4 KiB, so it satisfies O_DIRECT. With
/// hugepages the mapping is rounded up to 2 MiB: a server shard (64 buffers of 1 MiB + 4 KiB of
/// headroom) takes ceil(64 * (1 MiB + 4 KiB) / 2 MiB) = 33 hugepages.
class buffer_pool {
public:
    struct config {
        std::size_t buffer_size = 1u << 20; ///< bytes per buffer (multiple of 4096)
        std::size_t count = 64;             ///< buffers in the pool
        bool try_hugepages = true;
        /// Bytes before each buffer that its holder may also use (multiple of 4096): e.g. a
        /// record header written in one I/O with the value behind it.
        std::size_t headroom = 0;
    };

    static result<buffer_pool> create(const config& cfg) noexcept {
        if (cfg.buffer_size == 0 || cfg.buffer_size % 4096 != 0 || cfg.count == 0 ||
            cfg.headroom % 4096 != 0)
            return errc::invalid_argument;
        buffer_pool p;
        p.buffer_size_ = cfg.buffer_size;
        p.headroom_ = cfg.headroom;
        p.count_ = cfg.count;
        const std::size_t stride = cfg.buffer_size + cfg.headroom;
        constexpr std::size_t huge = 2u << 20;
        p.bytes_ = stride * cfg.count;
        if (cfg.try_hugepages) p.bytes_ = (p.bytes_ + huge - 1) / huge * huge;
        void* mem = MAP_FAILED;
        if (cfg.try_hugepages) {
            mem = ::mmap(nullptr, p.bytes_, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
            p.hugepages_ = mem != MAP_FAILED;
        }
        if (mem == MAP_FAILED) {
            mem = ::mmap(nullptr, p.bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
                         0);
            if (mem == MAP_FAILED) return errc::no_space;
            ::madvise(mem, p.bytes_, MADV_HUGEPAGE);
        }
        p.base_ = static_cast<std::byte*>(mem);
        p.free_.reserve(cfg.count);
        for (std::size_t i = cfg.count; i-- > 0;)
            p.free_.push_back(p.base_ + i * stride + cfg.headroom);
        return p;
    }

    buffer_pool() = default;
    buffer_pool(buffer_pool&& o) noexcept { swap(o); }
    buffer_pool& operator=(buffer_pool&& o) noexcept {
        buffer_pool tmp(std::move(o));
        swap(tmp);
        return *this;
    }
    ~buffer_pool() {
        if (base_) ::munmap(base_, bytes_);
    }

    /// A free buffer of buffer_size() bytes, or nullptr when all are in use (back-pressure).
    std::byte* acquire() noexcept {
        if (free_.empty()) return nullptr;
        std::byte* b = free_.back();
        free_.pop_back();
        const auto used = capacity() - free_.size();
        if (used > high_water_) high_water_ = used;
        return b;
    }
    /// Returns a buffer obtained from acquire().
    void release(std::byte* b) noexcept { free_.push_back(b); }

    std::size_t buffer_size() const noexcept { return buffer_size_; }
    std::size_t capacity() const noexcept { return count_; }
    /// Bytes before each buffer that belong to it (config::headroom).
    std::size_t headroom() const noexcept { return headroom_; }
    /// Distance between two buffers (buffer_size() + headroom()).
    std::size_t stride() const noexcept { return buffer_size_ + headroom_; }
    std::size_t available() const noexcept { return free_.size(); }
    /// The most buffers ever in use at once.
    std::size_t high_water() const noexcept { return high_water_; }
    bool hugepages() const noexcept { return hugepages_; }
    /// The whole mapping (for registration with io_uring or an RDMA device).
    std::span<std::byte> memory() const noexcept { return {base_, bytes_}; }

private:
    void swap(buffer_pool& o) noexcept {
        std::swap(base_, o.base_);
        std::swap(bytes_, o.bytes_);
        std::swap(buffer_size_, o.buffer_size_);
        std::swap(headroom_, o.headroom_);
        std::swap(count_, o.count_);
        std::swap(free_, o.free_);
        std::swap(high_water_, o.high_water_);
        std::swap(hugepages_, o.hugepages_);
    }

    std::byte* base_ = nullptr;
    std::size_t bytes_ = 0;
    std::size_t buffer_size_ = 0;
    std::size_t headroom_ = 0;
    std::size_t count_ = 0;
    std::vector<std::byte*> free_;
    std::size_t high_water_ = 0;
    bool hugepages_ = false;
};

} // namespace memkv::detail
