// SPDX-License-Identifier: Apache-2.0
// The engine's two ways to reach its store for metadata: synchronous reads at start-up
// (recovery) and asynchronous writes, flushes and discards while serving.
#pragma once

#include <memkv/result.hpp>

#include <cstdint>
#include <span>

namespace memkv::storage {

/// Synchronous reads of a shard's store, used only at start-up (recovery), when nothing else is
/// in flight. Buffers are aligned to the block size.
class meta_reader {
public:
    virtual result<void> read(std::uint64_t offset, std::span<std::byte> buf) = 0;

protected:
    ~meta_reader() = default;
};

/// Metadata I/O the engine submits without waiting for it (region headers, summaries,
/// trailers, the flushes and discards around them).
///
/// Contracts:
///  1. Each accepted call completes exactly once, later, through engine::on_meta_io(token, res)
///     with the bytes written (0 for flush and discard) or -errno; a refused call (an error
///     returned) completes never.
///  2. Buffers are borrowed until their completion.
///  3. flush() completes after every write that completed before it was submitted is durable
///     (store concept rule 4).
class meta_submitter {
public:
    virtual result<void> write(std::uint64_t offset, std::span<const std::byte> buf,
                               std::uint64_t token) = 0;
    virtual result<void> flush(std::uint64_t token) = 0;
    virtual result<void> discard(std::uint64_t offset, std::uint64_t length,
                                 std::uint64_t token) = 0;

protected:
    ~meta_submitter() = default;
};

} // namespace memkv::storage
