// SPDX-License-Identifier: Apache-2.0
// shared_memory_store: a persistent store in process memory. Every instance created from the
// same config sees the same bytes, like a device opened again, so a server can be stopped and
// started over it and recover in-process (tests of the engine without files).
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/memory_io.hpp>

#include <sys/mman.h>

#include <memory>

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

class shared_memory_store : public detail::memory_io<shared_memory_store> {
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
    std::byte* base() const noexcept { return dev_->data; }

    /// Discard leaves the bytes as they are (NVMe need not zero trimmed blocks).
    result<void> discard(std::uint64_t off, std::uint64_t len, std::uint64_t tag) noexcept {
        MEMKV_TRY(check(off, len, nullptr));
        complete(tag, 0);
        return {};
    }

private:
    std::shared_ptr<shared_memory_device> dev_;
    std::uint32_t block_ = 4096;
};

static_assert(store<shared_memory_store>);

} // namespace memkv::test
