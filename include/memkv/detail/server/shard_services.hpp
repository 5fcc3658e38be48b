// SPDX-License-Identifier: Apache-2.0
// shard_services<Store>: what a shard lends the operations it runs (store, engine, buffers,
// completion tags, counters), and the owners of their asynchronous I/O.
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/buffer_pool.hpp>
#include <memkv/detail/completion_tags.hpp>
#include <memkv/detail/shard_counters.hpp>
#include <memkv/server_config.hpp>
#include <memkv/storage/engine.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

namespace memkv::detail::server {

/// An operation that may have to wait (for a pool buffer, for space, for its region's header)
/// and is retried when the shard has more of it.
class waiting_op {
public:
    /// Tries again what it waited for (the shard calls it after buffers came back or the engine
    /// progressed).
    virtual void retry() = 0;
    bool queued = false; ///< in the shard's wait list

protected:
    ~waiting_op() = default;
};

/// What an asynchronous operation of an Op is: a store read/write/flush or a data-path
/// pull/push. Owners in the shard's completion tags: each keeps its operation alive until the
/// completion arrives, whatever happened to the connection meanwhile.
enum class io_kind : std::uint8_t { store_read, store_write, store_flush, pull, push };
template <class Op>
struct op_io {
    std::shared_ptr<Op> op;
    io_kind kind = io_kind::store_write;
    std::byte* buf = nullptr; ///< the pool buffer it uses, if any
    std::uint64_t expect = 0; ///< bytes it must transfer (a short store transfer is an error)
    std::uint64_t piece = 0;  ///< which piece of the value
};
/// Metadata I/O of the engine (meta_submitter): completed through engine::on_meta_io.
struct meta_io_owner {
    std::uint64_t token = 0;
    std::uint64_t expect = 0;
};

template <store Store>
class record_write;
template <store Store>
class value_read;

/// The shard's tag space (completion_tags) with the owners above.
template <store Store>
using io_tags =
    completion_tags<op_io<record_write<Store>>, op_io<value_read<Store>>, meta_io_owner>;

/// Operations waiting to be retried, in arrival order.
class wait_list {
public:
    void add(std::shared_ptr<waiting_op> op) {
        if (op->queued) return;
        op->queued = true;
        ops_.push_back(std::move(op));
    }
    /// Retries every waiting operation once (those that wait again queue themselves again).
    void retry_all() {
        auto ops = std::exchange(ops_, {});
        for (auto& op : ops) {
            op->queued = false;
            op->retry();
        }
    }
    bool empty() const noexcept { return ops_.empty(); }

private:
    std::vector<std::shared_ptr<waiting_op>> ops_;
};

/// What a shard lends the operations it runs. Borrowed: the shard outlives them.
template <store Store>
struct shard_services {
    const server_config& cfg;
    Store& store;
    storage::engine& engine;
    buffer_pool& pool;
    io_tags<Store>& tags;
    shard_counters& counters;
    wait_list& waiters;

    /// Milliseconds on the steady clock (engine lookups compare expiry with it).
    static std::uint64_t now_ms() noexcept {
        return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                              std::chrono::steady_clock::now().time_since_epoch())
                                              .count());
    }
    /// Returns a pool buffer; operations waiting for one may go on.
    void give_back(std::byte* b) noexcept {
        pool.release(b);
        buffers_returned = true;
    }
    bool buffers_returned = false; ///< since the shard last retried its waiters
};

} // namespace memkv::detail::server
