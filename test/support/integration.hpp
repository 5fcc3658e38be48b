// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the integration tests: keys on a chosen shard, byte views, completion
// waiting.
#pragma once

#include <memkv/memkv.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace memkv::test {

/// The bytes of a string.
inline std::span<const std::byte> as_bytes(std::string_view s) noexcept {
    return std::as_bytes(std::span(s.data(), s.size()));
}

/// A string holding `b` (for metadata comparisons).
inline std::vector<std::byte> to_vector(std::string_view s) {
    const auto b = as_bytes(s);
    return {b.begin(), b.end()};
}

/// "" when `got` equals `want`, else a short description of the first difference (Catch2 would
/// otherwise print megabytes of bytes).
inline std::string mismatch(std::span<const std::byte> got, std::span<const std::byte> want) {
    if (got.size() != want.size())
        return "size " + std::to_string(got.size()) + " != expected " + std::to_string(want.size());
    for (std::size_t i = 0; i < got.size(); ++i)
        if (got[i] != want[i])
            return "first difference at byte " + std::to_string(i) + " of " +
                   std::to_string(got.size());
    return {};
}

/// The shard of `key` among `shards` (no key prefix), as client and server compute it.
inline std::uint32_t shard_of(std::string_view key, std::uint32_t shards) noexcept {
    return shard_for(key_hash(key), shards);
}

/// `n` distinct keys "<prefix>-<i>" whose shard among `shards` is `shard`.
inline std::vector<std::string> keys_on_shard(std::string_view prefix, std::uint32_t shard,
                                              std::uint32_t shards, std::size_t n) {
    std::vector<std::string> out;
    for (std::uint64_t i = 0; out.size() < n; ++i) {
        auto k = std::string(prefix) + "-" + std::to_string(i);
        if (shard_of(k, shards) == shard) out.push_back(std::move(k));
    }
    return out;
}

/// Counts completions signalled from the client's progress thread and lets a test thread wait.
class completion_counter {
public:
    void signal() {
        std::lock_guard lock(mutex_);
        ++count_;
        cv_.notify_all();
    }
    /// Waits until at least `n` signals arrived or `timeout` passed; returns the count.
    std::size_t wait_for(std::size_t n, std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex_);
        cv_.wait_for(lock, timeout, [&] { return count_ >= n; });
        return count_;
    }

private:
    std::mutex mutex_;
    std::condition_variable cv_;
    std::size_t count_ = 0;
};

} // namespace memkv::test
