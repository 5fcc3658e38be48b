// SPDX-License-Identifier: Apache-2.0
// store_sync_io<Store>: synchronous I/O on a store, for start-up only (the superblock, recovery).
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/error.hpp>
#include <memkv/storage/meta_io.hpp>

#include <poll.h>
#include <sched.h>

#include <cstdint>
#include <optional>
#include <span>

namespace memkv::detail::server {

/// Submits one operation and polls the store until it completes. For start-up, when nothing
/// else is in flight on the store: completions of other operations polled meanwhile are
/// dropped. Never used while a shard serves (region metadata I/O is asynchronous then).
template <store Store>
class store_sync_io final : public storage::meta_reader {
public:
    explicit store_sync_io(Store& s) noexcept : store_(s) {}

    result<void> read(std::uint64_t offset, std::span<std::byte> buf) override {
        return run([&](std::uint64_t t) { return store_.read(offset, buf, t); }, buf.size());
    }
    result<void> write(std::uint64_t offset, std::span<const std::byte> buf) {
        return run([&](std::uint64_t t) { return store_.write(offset, buf, t); }, buf.size());
    }
    result<void> flush() {
        return run([&](std::uint64_t t) { return store_.flush(t); }, 0);
    }

private:
    template <class Submit>
    result<void> run(Submit submit, std::size_t expect) {
        const std::uint64_t tag = ++next_;
        MEMKV_TRY(submit(tag));
        io_completion done[32];
        for (;;) {
            const std::size_t n = store_.poll(done);
            for (std::size_t i = 0; i < n; ++i) {
                if (done[i].tag != tag) continue;
                if (done[i].res < 0) return errno_code(static_cast<int>(done[i].res));
                if (expect != 0 && static_cast<std::size_t>(done[i].res) != expect)
                    return errc::internal;
                return {};
            }
            if (n == 0) {
                if (store_.notify_fd() >= 0) {
                    pollfd p{store_.notify_fd(), POLLIN, 0};
                    ::poll(&p, 1, 100);
                } else {
                    ::sched_yield();
                }
            }
        }
    }

    Store& store_;
    std::uint64_t next_ = 0;
};

} // namespace memkv::detail::server
