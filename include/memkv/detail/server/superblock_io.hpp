// SPDX-License-Identifier: Apache-2.0
// Formatting a persistent store, or checking its superblock against the configuration, at
// start-up.
#pragma once

#include <memkv/auth/key_ring.hpp>
#include <memkv/concepts.hpp>
#include <memkv/detail/log.hpp>
#include <memkv/detail/server/store_sync_io.hpp>
#include <memkv/server_config.hpp>
#include <memkv/storage/aligned_buffer.hpp>
#include <memkv/storage/format.hpp>
#include <memkv/storage/record_layout.hpp>

#include <cstdint>

namespace memkv::detail::server {

/// A new superblock for `c` over a store of `capacity` bytes (fresh identity and record seed).
inline storage::superblock fresh_superblock(const server_config& c, std::uint64_t capacity) {
    storage::superblock sb;
    (void)auth::random_bytes(sb.uuid);
    (void)auth::random_bytes(std::as_writable_bytes(std::span(&sb.record_seed, 1)));
    sb.block_size = storage::meta_block;
    const auto region = c.region_size ? c.region_size : 2 * c.limits.max_value;
    sb.region_size = (region + storage::meta_block - 1) / storage::meta_block * storage::meta_block;
    sb.shard_count = c.shards;
    sb.capacity = capacity;
    sb.max_value = c.limits.max_value;
    sb.created_unix = storage::unix_ms() / 1000;
    return sb;
}

/// Reads both superblock copies of `st` and decides: use it (`sb` is set), format it (a blank
/// store, or a wipe the configuration allows), or refuse, with a message that says what to do.
template <store Store>
result<void> open_superblock(Store& st, const server_config& c, storage::superblock& sb) {
    store_sync_io<Store> io(st);
    storage::aligned_buffer buf(2 * storage::meta_block);
    if (st.capacity() < storage::data_offset + 4 * storage::meta_block) return errc::no_space;
    MEMKV_TRY(io.read(0, buf.span()));
    storage::superblock a, b;
    const auto sa = storage::decode_superblock(buf.block(0), a);
    const auto sbs = storage::decode_superblock(buf.block(storage::meta_block), b);
    using state = storage::superblock_state;
    bool format = false;
    if (sa == state::valid || sbs == state::valid) {
        sb = sa == state::valid ? a : b;
        if (sb.shard_count != c.shards) {
            if (!c.reshard) {
                log_error("the store was formatted for {} shards, not {}: start with --shards {}, "
                          "or --reshard to wipe it",
                          sb.shard_count, c.shards, sb.shard_count);
                return errc::rejected;
            }
            log_warn("--reshard: wiping the store ({} -> {} shards)", sb.shard_count, c.shards);
            format = true;
        } else if (sb.capacity > st.capacity()) {
            log_error("the store is smaller ({} bytes) than when it was formatted ({} bytes)",
                      st.capacity(), sb.capacity);
            return errc::rejected;
        } else if (sb.max_value < c.limits.max_value) {
            log_error("the store was formatted for values up to {} bytes; start with that cap or "
                      "wipe it",
                      sb.max_value);
            return errc::rejected;
        }
    } else if (sa == state::blank && sbs == state::blank) {
        format = true;
    } else {
        const bool incompatible = sa == state::incompatible || sbs == state::incompatible;
        if (!c.wipe_on_incompatible) {
            log_error("{}: refusing to start; --wipe-on-incompatible wipes the store",
                      incompatible ? "the store has a memkv format this version cannot read"
                                   : "the store's superblock is damaged (both copies)");
            return errc::rejected;
        }
        log_warn("--wipe-on-incompatible: wiping the store");
        format = true;
    }
    if (!format) return {};
    sb = fresh_superblock(c, st.capacity());
    // Copy A, flush, copy B, flush: a crash leaves at least one valid copy.
    storage::encode_superblock(sb, buf.block(0));
    storage::encode_superblock(sb, buf.block(storage::meta_block));
    MEMKV_TRY(io.write(0, {buf.data(), storage::meta_block}));
    MEMKV_TRY(io.flush());
    MEMKV_TRY(
        io.write(storage::meta_block, {buf.data() + storage::meta_block, storage::meta_block}));
    MEMKV_TRY(io.flush());
    // Every region header of the old format is now meaningless: records are keyed by the new
    // seed, so none of them can be taken for valid.
    log_info("formatted the store: {} bytes, {} shards, {}-byte regions", sb.capacity,
             sb.shard_count, sb.region_size);
    return {};
}

} // namespace memkv::detail::server
