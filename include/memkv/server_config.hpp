// SPDX-License-Identifier: Apache-2.0
// Configuration of memkv::server.
#pragma once

#include <memkv/auth/key_ring.hpp>
#include <memkv/protocol/limits.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace memkv {

/// TRIM of the regions a persistent store's engine reclaims (server_config::trim).
enum class trim_mode : std::uint8_t {
    by_store, ///< the store's `trim_by_default` (memkv::trim_by_default<Store>)
    on,
    off,
};

/// What a server needs besides its store's own configuration. Defaults are sane for a
/// development machine; memkv-server maps flags, MEMKV_* variables and YAML onto this.
struct server_config {
    /// Endpoints to listen on ("127.0.0.1:9900", "unix:/run/memkv.sock"); port 0 picks one.
    std::vector<std::string> listen{"127.0.0.1:9900"};
    /// Shards, one thread each. 0 = one per online CPU.
    std::uint32_t shards = 0;
    /// Pin shard i to CPU i (modulo the CPU count).
    bool pin_cpus = false;
    /// Keys clients must prove. Empty: no authentication, allowed on loopback only.
    std::shared_ptr<const auth::key_ring> keys = std::make_shared<auth::key_ring>();
    /// Caps on every declared length.
    protocol::limits limits{};
    /// Bytes per region of the storage engine (at least twice limits.max_value).
    std::uint64_t region_size = 0; // 0 = 2 * limits.max_value
    /// Persistent stores: whether each region the engine reclaims is TRIMmed (BLKDISCARD on a
    /// device, a punched hole in a file). `by_store` (the default) asks the store: on for block
    /// devices, off for files. On a file the refill of a punched region allocates blocks, which
    /// ext4 does under the file's exclusive lock: write throughput halves, for no gain in a full
    /// FIFO cache, whose reclaimed regions are refilled at once (docs/decisions.md, "Record
    /// writes and TRIM").
    /// create() resolves it: config().trim is `on` or `off`.
    trim_mode trim = trim_mode::by_store;
    /// Bounce buffers per shard and their size (payload chunk size).
    std::size_t buffers_per_shard = 64;
    std::size_t buffer_size = 1u << 20;
    /// Register each shard's buffers with its store's io_uring (fixed-buffer reads and writes:
    /// no page pinning per operation) where the store supports it.
    bool register_buffers = true;
    /// Buffers one request may hold at once (GET read-ahead).
    std::size_t buffers_per_request = 4;
    /// In-flight bytes per connection (held buffers + queued replies); over it the server stops
    /// reading from that connection.
    std::size_t connection_inflight_cap = 16u << 20;
    /// A connection that has not authenticated and attached by then is closed.
    std::chrono::milliseconds handshake_timeout{5000};
    /// Connections between accept and attach; beyond it new connections are closed at once
    /// (each costs a socket and about 300 bytes until it authenticates or times out).
    std::size_t max_pending_connections = 4096;
    /// Time stop() lets requests already read, and values still arriving, finish before closing
    /// connections (server::stop()).
    std::chrono::milliseconds drain_timeout{2000};
    /// Persistent stores: a store formatted for another shard count is refused unless this is
    /// set, and then wiped and reformatted.
    bool reshard = false;
    /// Persistent stores: a store with an unreadable superblock or a format this build does not
    /// understand is refused unless this is set, and then wiped and reformatted.
    bool wipe_on_incompatible = false;
};

} // namespace memkv
