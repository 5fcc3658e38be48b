// SPDX-License-Identifier: Apache-2.0
// shared_memory_store: a persistent store in process memory. Every instance created from the
// same config sees the same bytes, like a device opened again, so a server can be stopped and
// started over it and recover in-process (tests of the engine without files).
#pragma once

#include <memkv/concepts.hpp>

#include <sys/mman.h>

#include <cstring>
#include <memory>
#include <vector>

namespace memkv::test {

/// The "device": one anonymous mapping shared by every instance made from a config.
struct shared_memory_device {
    std::byte* data = nullptr;
    std::uint64_t size = 0;
    explicit shared_memory_device(std::uint64_t n) : size(n) {
        void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        data = p == MAP_FAILED ? nullptr : static_cast<std::byte*>(p);
    }
    ~shared_memory_device() {
        if (data) ::munmap(data, size);
    }
};

class shared_memory_store {
public:
    static constexpr bool persistent = true;
    struct config {
        std::shared_ptr<shared_memory_device> device;
        std::uint32_t block_size = 4096;
    };

    static result<shared_memory_store> create(const config& c) {
        if (!c.device || !c.device->data) return errc::invalid_argument;
        shared_memory_store s;
        s.dev_ = c.device;
        s.block_ = c.block_size;
        return s;
    }

    std::uint32_t block_size() const noexcept { return block_; }
    std::uint64_t capacity() const noexcept { return dev_->size; }
    int notify_fd() const noexcept { return -1; }

    result<void> read(std::uint64_t off, std::span<std::byte> b, std::uint64_t tag) noexcept {
        MEMKV_TRY(check(off, b.size(), b.data()));
        std::memcpy(b.data(), dev_->data + off, b.size());
        done_.push_back({tag, static_cast<std::int64_t>(b.size())});
        return {};
    }
    result<void> write(std::uint64_t off, std::span<const std::byte> b,
                       std::uint64_t tag) noexcept {
        MEMKV_TRY(check(off, b.size(), b.data()));
        std::memcpy(dev_->data + off, b.data(), b.size());
        done_.push_back({tag, static_cast<std::int64_t>(b.size())});
        return {};
    }
    result<void> flush(std::uint64_t tag) noexcept {
        done_.push_back({tag, 0});
        return {};
    }
    /// Discard leaves the bytes as they are (NVMe need not zero trimmed blocks).
    result<void> discard(std::uint64_t off, std::uint64_t len, std::uint64_t tag) noexcept {
        MEMKV_TRY(check(off, len, nullptr));
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
    result<void> check(std::uint64_t off, std::uint64_t len, const void* buf) const noexcept {
        if (off % block_ || len % block_ || reinterpret_cast<std::uintptr_t>(buf) % block_)
            return errc::bad_alignment;
        if (off > dev_->size || len > dev_->size - off) return errc::invalid_argument;
        return {};
    }

    std::shared_ptr<shared_memory_device> dev_;
    std::uint32_t block_ = 4096;
    std::vector<io_completion> done_;
};

static_assert(store<shared_memory_store>);

} // namespace memkv::test
