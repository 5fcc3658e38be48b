// SPDX-License-Identifier: Apache-2.0
// memory_store: a DRAM device satisfying memkv::store (for tests, CI and DRAM-only caches).
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/memory_io.hpp>

#include <sys/mman.h>

#include <utility>

namespace memkv {

/// A store backed by anonymous memory. Every operation completes before submission returns;
/// its completion is queued for the next poll(). Discard really releases the pages
/// (MADV_DONTNEED) and so reads back zeros, which real NVMe does not promise: the engine must
/// never rely on it.
class memory_store : public detail::memory_io<memory_store> {
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
        : memory_io(std::move(o)), data_(std::exchange(o.data_, nullptr)), capacity_(o.capacity_),
          block_size_(o.block_size_) {}
    memory_store& operator=(memory_store&& o) noexcept {
        memory_store tmp(std::move(o));
        std::swap(data_, tmp.data_);
        std::swap(capacity_, tmp.capacity_);
        std::swap(block_size_, tmp.block_size_);
        std::swap(static_cast<memory_io&>(*this), static_cast<memory_io&>(tmp));
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
    std::byte* base() const noexcept { return data_; }

    result<void> discard(std::uint64_t offset, std::uint64_t length, std::uint64_t tag) noexcept {
        MEMKV_TRY(check(offset, length, nullptr));
        ::madvise(data_ + offset, length, MADV_DONTNEED);
        complete(tag, 0);
        return {};
    }

private:
    std::byte* data_ = nullptr;
    std::uint64_t capacity_ = 0;
    std::uint32_t block_size_ = 4096;
};

static_assert(store<memory_store>);

} // namespace memkv
