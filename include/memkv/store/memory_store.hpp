// SPDX-License-Identifier: Apache-2.0
// memory_store: a DRAM device satisfying memkv::store (for tests, CI and DRAM-only caches).
#pragma once

#include <memkv/concepts.hpp>

#include <sys/mman.h>

#include <cstring>
#include <utility>
#include <vector>

namespace memkv {

/// A store backed by anonymous memory. Every operation completes before submission returns;
/// its completion is queued for the next poll(). Discard really releases the pages
/// (MADV_DONTNEED) and so reads back zeros, which real NVMe does not promise: the engine must
/// never rely on it.
class memory_store {
public:
    /// Nothing survives the process: no superblock, a fresh store every start.
    static constexpr bool persistent = false;

    struct config {
        std::uint64_t capacity = 1ull << 30; ///< bytes; rounded up to the block size
        std::uint32_t block_size = 4096;     ///< power of two, >= 512
    };

    static result<memory_store> create(const config& cfg) noexcept {
        if (cfg.block_size < 512 || (cfg.block_size & (cfg.block_size - 1)) != 0)
            return errc::invalid_argument;
        if (cfg.capacity == 0) return errc::invalid_argument;
        memory_store s;
        s.block_size_ = cfg.block_size;
        s.capacity_ = (cfg.capacity + cfg.block_size - 1) / cfg.block_size * cfg.block_size;
        void* mem = ::mmap(nullptr, s.capacity_, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (mem == MAP_FAILED) return errc::no_space;
        s.data_ = static_cast<std::byte*>(mem);
        return s;
    }

    memory_store() = default;
    memory_store(memory_store&& o) noexcept
        : data_(std::exchange(o.data_, nullptr)), capacity_(o.capacity_),
          block_size_(o.block_size_), done_(std::move(o.done_)) {}
    memory_store& operator=(memory_store&& o) noexcept {
        memory_store tmp(std::move(o));
        std::swap(data_, tmp.data_);
        std::swap(capacity_, tmp.capacity_);
        std::swap(block_size_, tmp.block_size_);
        std::swap(done_, tmp.done_);
        return *this;
    }
    ~memory_store() {
        if (data_) ::munmap(data_, capacity_);
    }

    /// Each shard gets its own memory: capacity / shards bytes.
    static config shard_config(const config& c, std::uint32_t, std::uint32_t shards) noexcept {
        config s = c;
        s.capacity = c.capacity / shards;
        return s;
    }

    std::uint32_t block_size() const noexcept { return block_size_; }
    std::uint64_t capacity() const noexcept { return capacity_; }
    int notify_fd() const noexcept { return -1; }

    result<void> read(std::uint64_t offset, std::span<std::byte> buf, std::uint64_t tag) noexcept {
        MEMKV_TRY(check(offset, buf.size(), buf.data()));
        std::memcpy(buf.data(), data_ + offset, buf.size());
        done_.push_back({tag, static_cast<std::int64_t>(buf.size())});
        return {};
    }
    result<void> write(std::uint64_t offset, std::span<const std::byte> buf,
                       std::uint64_t tag) noexcept {
        MEMKV_TRY(check(offset, buf.size(), buf.data()));
        std::memcpy(data_ + offset, buf.data(), buf.size());
        done_.push_back({tag, static_cast<std::int64_t>(buf.size())});
        return {};
    }
    result<void> flush(std::uint64_t tag) noexcept {
        done_.push_back({tag, 0});
        return {};
    }
    result<void> discard(std::uint64_t offset, std::uint64_t length, std::uint64_t tag) noexcept {
        MEMKV_TRY(check(offset, length, nullptr));
        ::madvise(data_ + offset, length, MADV_DONTNEED);
        done_.push_back({tag, 0});
        return {};
    }
    std::size_t poll(std::span<io_completion> out) noexcept {
        const std::size_t n = std::min(out.size(), done_.size());
        std::copy_n(done_.begin(), n, out.begin());
        done_.erase(done_.begin(), done_.begin() + static_cast<std::ptrdiff_t>(n));
        return n;
    }

private:
    result<void> check(std::uint64_t offset, std::uint64_t length, const void* buf) const noexcept {
        if (offset % block_size_ != 0 || length % block_size_ != 0 ||
            reinterpret_cast<std::uintptr_t>(buf) % block_size_ != 0)
            return errc::bad_alignment;
        if (offset > capacity_ || length > capacity_ - offset) return errc::invalid_argument;
        return {};
    }

    std::byte* data_ = nullptr;
    std::uint64_t capacity_ = 0;
    std::uint32_t block_size_ = 4096;
    std::vector<io_completion> done_; // completions not yet polled
};

static_assert(store<memory_store>);

} // namespace memkv
