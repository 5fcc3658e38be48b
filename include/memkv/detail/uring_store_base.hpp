// SPDX-License-Identifier: Apache-2.0
// uring_store_base: the part that file_store and block_store share (io_uring, window, checks).
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/discard_worker.hpp>
#include <memkv/detail/log.hpp>
#include <memkv/detail/uring.hpp>
#include <memkv/error.hpp>
#include <memkv/result.hpp>

#include <sys/uio.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <utility>

namespace memkv::detail {

/// @brief The state and operations common to the io_uring stores: a window of `capacity()` bytes
/// with I/O aligned to `block_size()`, an io_uring that carries the I/O, and discards run by a
/// discard_worker off the submitting thread, their completions signalled on the ring's
/// eventfd.
///
/// `Owner` is what keeps the store's files or devices open (its claims). It is declared before
/// the ring, so that the ring, whose destruction waits for the operations the kernel still holds,
/// is gone before the descriptors are closed and their locks released.
template <class Owner>
class uring_store_base {
public:
    /// I/O alignment of offsets, lengths and buffers (a power of two).
    std::uint32_t block_size() const noexcept { return block_size_; }
    /// Bytes of the window.
    std::uint64_t capacity() const noexcept { return capacity_; }
    /// The eventfd of the store's io_uring.
    int notify_fd() const noexcept { return ring_.event_fd(); }
    /// Bytes of writes completed successfully by this instance.
    std::uint64_t bytes_written() const noexcept { return ring_.stats().bytes_written; }
    /// Discards the filesystem or device refused as unsupported (EOPNOTSUPP); they completed with
    /// success.
    std::uint64_t discards_unsupported() const noexcept { return discards_unsupported_; }
    /// io_uring counters (fixed-buffer use, short-I/O resubmissions, ...).
    const uring_stats& io_stats() const noexcept { return ring_.stats(); }

    /// Registers I/O buffers (the shard's buffer pool) with io_uring, so that reads and writes
    /// inside them use fixed buffers. Call while no I/O is in flight (else errc::retry). Optional:
    /// a failure (ENOMEM under a small RLIMIT_MEMLOCK) only costs the optimisation.
    result<void> register_buffers(std::span<const iovec> regions) noexcept {
        return ring_.register_buffers(regions);
    }

    /// Moves finished operations to `out`; never blocks.
    std::size_t poll(std::span<io_completion> out) noexcept {
        std::size_t n = ring_.reap(out);
        const std::size_t k = discards_.reap(out.subspan(n));
        for (std::size_t i = n; i < n + k; ++i) {
            // The worker reports errnos: EOPNOTSUPP is counted as unsupported and succeeds.
            const auto err = static_cast<int>(out[i].res);
            if (err == EOPNOTSUPP) ++discards_unsupported_;
            out[i].res = err == EOPNOTSUPP ? 0 : -err;
        }
        return n + k;
    }

protected:
    uring_store_base() noexcept = default;
    uring_store_base(uring_store_base&&) noexcept = default;
    uring_store_base& operator=(uring_store_base&&) noexcept = default;
    ~uring_store_base() = default;

    /// Checks a range of the window before anything is submitted: errc::bad_alignment when the
    /// offset, the length or the buffer (nullptr: none) is not block aligned (rule 1 of
    /// memkv::store); errc::invalid_argument when the range does not lie inside the window.
    result<void> check_range(std::uint64_t offset, std::uint64_t length,
                             const void* buf) const noexcept {
        if (offset % block_size_ != 0 || length % block_size_ != 0 ||
            reinterpret_cast<std::uintptr_t>(buf) % block_size_ != 0)
            return errc::bad_alignment;
        if (offset > capacity_ || length > capacity_ - offset) return errc::invalid_argument;
        return {};
    }

    /// Sets up the store's io_uring with `queue_depth` entries; a failure is logged as `who`'s.
    result<void> open_ring(std::string_view who, unsigned queue_depth) noexcept {
        auto ring = uring::create(queue_depth);
        if (!ring) {
            log_error("{}: io_uring setup failed: {}", who, ring.error().message());
            return ring.error();
        }
        ring_ = std::move(*ring);
        return {};
    }

    /// Runs discard `job` (returning 0 or an errno) off this thread; `tag` completes through
    /// poll() with 0 or -errno, EOPNOTSUPP being counted as unsupported and a success.
    result<void> submit_discard(std::uint64_t tag, std::function<int()> job) noexcept {
        try {
            discards_.post(tag, std::move(job), ring_.event_fd());
        } catch (...) {
            return errc::no_space; // the job could not even be queued
        }
        return {};
    }

    Owner owner_; // the claims of the files or devices (see above for why first)
    uring ring_;
    discard_worker discards_;    // after the ring and the claims: joined first
    std::uint64_t capacity_ = 0; // window length
    std::uint64_t discards_unsupported_ = 0;
    std::uint32_t block_size_ = 4096;
};

} // namespace memkv::detail
