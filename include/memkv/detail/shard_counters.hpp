// SPDX-License-Identifier: Apache-2.0
// Per-shard counters: written by the shard's thread only, read by anyone (relaxed atomics).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace memkv {

class memory_store;
class file_store;
class block_store;

/// Values of the store_kind gauge (stats name "shardN.store_kind").
enum class store_kind_code : std::uint64_t { other = 0, memory = 1, file = 2, block = 3 };

/// Counters of one shard. Monotonic unless marked as a gauge.
struct shard_counters {
    using counter = std::atomic<std::uint64_t>;
    counter requests{0}; ///< requests started (batch sub-requests count one each)
    counter puts{0}, gets{0}, dels{0}, batches{0};
    counter hits{0}, misses{0};
    counter exists_keys{0};        ///< keys asked about by exists
    counter put_if_absent_hits{0}; ///< if_absent puts answered "exists" without a write
    counter wrong_shard{0};
    counter bytes_in{0}, bytes_out{0};       ///< value bytes stored / returned
    counter bytes_written{0}, bytes_read{0}; ///< bytes of store I/O
    counter protocol_errors{0}, auth_failures{0}, checksum_errors{0};
    counter out_of_order_replies{0}; ///< replies sent while an older request was pending
    counter max_pipeline_depth{0};   ///< gauge: most requests pending on one connection
    counter connections{0};          ///< gauge
    counter entries{0}, tombstones{0}, used_bytes{0}, capacity_bytes{0}; ///< gauges (engine)
    counter evicted_regions{0}, evicted_entries{0}, discarded_bytes{0}, corrupt_records{0};
    counter pool_in_use{0}, pool_high_water{0}; ///< gauges: bounce buffers
    counter store_kind{0};        ///< gauge: a store_kind_code (0 other, 1 memory, 2 file, 3 block)
    counter store_direct_io{0};   ///< gauge: 1 when the store does its I/O with O_DIRECT
    counter buffers_hugepages{0}; ///< gauge: 1 when the bounce buffers are on hugepages
    counter buffers_registered{0}; ///< gauge: 1 when the store does I/O on them as fixed buffers

    /// Sets the store_kind, store_direct_io and buffers_hugepages gauges from the shard's store
    /// and buffer pool (stores without direct() are not O_DIRECT: memory stores).
    template <class Store>
    void describe_store(const Store& s, bool hugepages) noexcept {
        using S = std::remove_cvref_t<Store>;
        const store_kind_code k = std::is_same_v<S, memory_store>  ? store_kind_code::memory
                                  : std::is_same_v<S, file_store>  ? store_kind_code::file
                                  : std::is_same_v<S, block_store> ? store_kind_code::block
                                                                   : store_kind_code::other;
        bool direct = false;
        if constexpr (requires { s.direct(); }) direct = s.direct();
        store_kind.store(static_cast<std::uint64_t>(k), std::memory_order_relaxed);
        store_direct_io.store(direct ? 1 : 0, std::memory_order_relaxed);
        buffers_hugepages.store(hugepages ? 1 : 0, std::memory_order_relaxed);
    }

    /// Name/value pairs (names as in the stats reply), each prefixed with "shardN.".
    std::vector<std::pair<std::string, std::uint64_t>> snapshot(std::uint32_t shard) const {
        const std::string p = "shard" + std::to_string(shard) + ".";
        auto v = [](const counter& c) { return c.load(std::memory_order_relaxed); };
        return {
            {p + "requests", v(requests)},
            {p + "puts", v(puts)},
            {p + "gets", v(gets)},
            {p + "dels", v(dels)},
            {p + "batches", v(batches)},
            {p + "hits", v(hits)},
            {p + "misses", v(misses)},
            {p + "exists_keys", v(exists_keys)},
            {p + "put_if_absent_hits", v(put_if_absent_hits)},
            {p + "wrong_shard", v(wrong_shard)},
            {p + "bytes_in", v(bytes_in)},
            {p + "bytes_out", v(bytes_out)},
            {p + "bytes_written", v(bytes_written)},
            {p + "bytes_read", v(bytes_read)},
            {p + "protocol_errors", v(protocol_errors)},
            {p + "auth_failures", v(auth_failures)},
            {p + "checksum_errors", v(checksum_errors)},
            {p + "out_of_order_replies", v(out_of_order_replies)},
            {p + "max_pipeline_depth", v(max_pipeline_depth)},
            {p + "connections", v(connections)},
            {p + "entries", v(entries)},
            {p + "used_bytes", v(used_bytes)},
            {p + "tombstones", v(tombstones)},
            {p + "capacity_bytes", v(capacity_bytes)},
            {p + "evicted_regions", v(evicted_regions)},
            {p + "evicted_entries", v(evicted_entries)},
            {p + "discarded_bytes", v(discarded_bytes)},
            {p + "corrupt_records", v(corrupt_records)},
            {p + "pool_in_use", v(pool_in_use)},
            {p + "pool_high_water", v(pool_high_water)},
            {p + "store_kind", v(store_kind)},
            {p + "store_direct_io", v(store_direct_io)},
            {p + "buffers_hugepages", v(buffers_hugepages)},
            {p + "buffers_registered", v(buffers_registered)},
        };
    }
};

} // namespace memkv
