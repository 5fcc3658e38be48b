// SPDX-License-Identifier: Apache-2.0
// aligned_buffer: zeroed heap memory aligned for O_DIRECT metadata I/O.
#pragma once

#include <memkv/storage/format.hpp>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>

namespace memkv::storage {

/// An aligned, zero-filled heap buffer for metadata I/O (headers, summaries, scans).
class aligned_buffer {
public:
    explicit aligned_buffer(std::size_t n, std::size_t align = meta_block) : n_(n) {
        void* p = nullptr;
        if (::posix_memalign(&p, align, n ? n : align) != 0) std::abort();
        p_.reset(static_cast<std::byte*>(p));
        std::memset(p, 0, n);
    }
    std::byte* data() const noexcept { return p_.get(); }
    std::size_t size() const noexcept { return n_; }
    std::span<std::byte> span() const noexcept { return {p_.get(), n_}; }
    /// The meta_block bytes at `at`.
    std::span<std::byte, meta_block> block(std::size_t at = 0) const noexcept {
        return std::span<std::byte, meta_block>(p_.get() + at, meta_block);
    }

private:
    struct free_deleter {
        void operator()(std::byte* p) const noexcept { std::free(p); }
    };
    std::unique_ptr<std::byte, free_deleter> p_;
    std::size_t n_;
};

} // namespace memkv::storage
