// SPDX-License-Identifier: Apache-2.0
// server::shard: one shard of memkv::server, a thread with its event loop, connections,
// storage engine, store and bounce buffers. Nothing here is shared with other shards except
// the mailbox and the counters.
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/buffer_pool.hpp>
#include <memkv/detail/event_loop.hpp>
#include <memkv/detail/frame_channel.hpp>
#include <memkv/detail/inline_data_path.hpp>
#include <memkv/detail/log.hpp>
#include <memkv/detail/mailbox.hpp>
#include <memkv/detail/server/completion_router.hpp>
#include <memkv/detail/server/connection.hpp>
#include <memkv/detail/server/shard_services.hpp>
#include <memkv/detail/server/store_meta_submitter.hpp>
#include <memkv/detail/server/store_sync_io.hpp>
#include <memkv/detail/shard_counters.hpp>
#include <memkv/server_config.hpp>
#include <memkv/storage/engine.hpp>

#include <poll.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace memkv::detail::server {

/// A connection handed from the acceptor to its shard after handshake and attach.
template <class Stream>
struct attached_connection {
    frame_channel<Stream> channel;
    std::string tenant;
    std::uint64_t attach_request_id = 0;
    transport_kind kind = transport_kind::tcp; ///< the data transport its hello asked for
};

/// The glue of one shard: it owns the store, the engine, the buffer pool and the connections,
/// runs the loop, and routes every completion, whoever produced it (the store, a data path, the
/// engine's metadata I/O), to its owner through one tag space; operations that waited for
/// buffers, space or readiness are retried when the shard has more of them. Region metadata I/O
/// is submitted like any other (store_meta_submitter) and never waited for.
template <transport Transport, store Store>
class shard {
    using stream_type = typename Transport::stream;
    using connection_type = connection<stream_type, inline_data_path<stream_type>, Store>;
    using clock = std::chrono::steady_clock;

public:
    shard(std::uint32_t index, std::uint32_t count, const server_config& cfg, Store store,
          buffer_pool pool, shard_counters& counters)
        : index_(index), count_(count), cfg_(cfg), store_(std::move(store)), pool_(std::move(pool)),
          counters_(counters) {
        counters_.describe_store(store_, pool_.hugepages());
        if constexpr (requires(std::span<const iovec> r) { store_.register_buffers(r); }) {
            if (cfg_.register_buffers) register_pool();
        }
    }
    shard(const shard&) = delete;
    shard& operator=(const shard&) = delete;

    /// Creates the engine over window `ecfg` of the store and recovers its index from the
    /// drive (synchronously: before run()).
    result<storage::recovery_stats> init(storage::engine::config ecfg) {
        ecfg.io = &meta_;
        auto e = storage::engine::create(ecfg);
        if (!e) return e.error();
        engine_.emplace(std::move(*e));
        store_sync_io<Store> sync(store_);
        auto rs = engine_->recover(sync);
        if (!rs) return rs.error();
        auto l = event_loop::create();
        if (!l) return l.error();
        loop_.emplace(std::move(*l));
        inbox_.emplace(*loop_);
        if (store_.notify_fd() >= 0)
            MEMKV_TRY(loop_->add(store_.notify_fd(), EPOLLIN, store_token));
        services_.emplace(
            shard_services<Store>{cfg_, store_, *engine_, pool_, tags_, counters_, waiters_});
        publish_gauges();
        return *rs;
    }

    /// Hands a connection to this shard (any thread). The shard replies to its attach.
    void adopt(std::unique_ptr<attached_connection<stream_type>> c) { inbox_->post(std::move(c)); }

    /// Asks the loop to drain (answer what it received, finish the values still arriving,
    /// refuse new requests) and, once released or at the drain timeout, to close and return
    /// (any thread).
    void request_stop() noexcept {
        stopping_.store(true, std::memory_order_release);
        loop_->wake();
    }
    /// After request_stop(): whether the shard has nothing left to do (or its drain timed out).
    bool drained() const noexcept { return drained_.load(std::memory_order_acquire); }
    /// After request_stop(): lets a drained shard close its connections and return (any
    /// thread).
    void release() noexcept {
        released_.store(true, std::memory_order_release);
        loop_->wake();
    }

    std::uint32_t index() const noexcept { return index_; }
    std::uint32_t block_size() const noexcept { return store_.block_size(); }
    const buffer_pool& pool() const noexcept { return pool_; }

    /// The shard's loop; returns after request_stop() once in-flight work is done or the drain
    /// timeout passed, having closed every connection and sealed the open region.
    void run() noexcept {
        clock::time_point drain_deadline{};
        for (;;) {
            const bool stopping = stopping_.load(std::memory_order_acquire);
            if (stopping && drain_deadline == clock::time_point{}) {
                drain_deadline = clock::now() + cfg_.drain_timeout;
                for (auto& [id, c] : conns_)
                    c->drain();
            }
            if (stopping) {
                // Drained shards keep their connections until every shard drained (release()):
                // a client fails a whole server when one of its connections closes.
                const bool late = clock::now() >= drain_deadline;
                const bool done = late || idle();
                drained_.store(done, std::memory_order_release);
                if (done && (late || released_.load(std::memory_order_acquire))) break;
            }
            update_dirty(); // may resume paused channels, which submit store I/O
            const bool more = drain_store();
            close_doomed();
            // Work made ready above (dirty connections, completions left) must not wait.
            const int wait = !marks_.dirty.empty() || more ? 0 : stopping ? 10 : 1000;
            loop_->run_once(
                std::chrono::milliseconds(wait),
                [this](std::uint64_t token, std::uint32_t events) { on_event(token, events); },
                [this] { take_inbox(); });
            drain_store();
            close_doomed();
            publish_gauges();
        }
        shut_down();
    }

private:
    static constexpr std::uint64_t store_token = event_loop::wake_token - 1;

    // ---- completions -----------------------------------------------------------------------

    void route(const io_completion& c) {
        if (route_completion(tags_, *engine_, c)) engine_progressed_ = true;
    }

    /// Retries the operations that waited, once buffers came back or the engine progressed.
    bool retry_waiters() {
        const bool changed = services_->buffers_returned || engine_progressed_;
        services_->buffers_returned = engine_progressed_ = false;
        if (!changed || waiters_.empty()) return false;
        waiters_.retry_all();
        return true;
    }

    /// Routes one batch of store completions. Bounded: handling a completion submits more I/O
    /// (a pushed piece schedules the next read), which a store may complete at once, so
    /// draining until empty could stream a whole value while other requests wait for the loop.
    /// Returns true when more may be ready now.
    bool drain_store() {
        io_completion done[64];
        const std::size_t n = store_.poll(done);
        for (std::size_t i = 0; i < n; ++i)
            route(done[i]);
        return retry_waiters() || n > 0;
    }

    void route_path(connection_base& c) {
        io_completion done[64];
        for (std::size_t n; (n = c.poll_path(done)) > 0;)
            for (std::size_t i = 0; i < n; ++i)
                route(done[i]);
        retry_waiters();
    }

    // ---- connections -----------------------------------------------------------------------

    void on_event(std::uint64_t token, std::uint32_t events) {
        if (token == store_token) return; // drain_store() runs after every batch
        auto it = conns_.find(token);
        if (it == conns_.end()) return;
        it->second->on_event(events);
        route_path(*it->second);
        drain_store();
    }

    void update_dirty() {
        // Updating a connection may mark others (buffers given back): they go to the next
        // round.
        for (auto id : std::exchange(marks_.dirty, {})) {
            auto it = conns_.find(id);
            if (it == conns_.end()) continue;
            it->second->update();
            route_path(*it->second);
        }
    }

    void take_inbox() {
        const bool stopping = stopping_.load(std::memory_order_acquire);
        for (auto& a : inbox_->take()) {
            // The data path is the one the hello asked for; the acceptor let through only
            // what the listener carries (transport rule 9), which for every transport of this
            // release is the inline one. One-sided paths add their connection type here.
            const auto id = ++next_conn_id_;
            auto c = std::make_unique<connection_type>(
                id, std::move(a->channel), std::move(a->tenant), a->attach_request_id, *services_,
                shard_identity{index_, count_}, *loop_, marks_, [this] { return stats_body(); });
            auto& ref = *c;
            conns_.emplace(id, std::move(c));
            if (!ref.open(a->attach_request_id, stopping)) { // adopted during stop(): drains
                conns_.erase(id);
                continue;
            }
            route_path(ref);
        }
    }

    void close_doomed() {
        for (auto id : std::exchange(marks_.doomed, {}))
            close_connection(id);
    }

    void close_connection(std::uint64_t id) {
        auto it = conns_.find(id);
        if (it == conns_.end()) return;
        it->second->close();
        route_path(*it->second); // the fenced pulls and pushes give their buffers back
        conns_.erase(it);
    }

    bool idle() const noexcept {
        for (const auto& [id, c] : conns_)
            if (!c->quiet()) return false;
        return tags_.empty();
    }

    /// After the loop: closes every connection, lets every store I/O complete (a failed put
    /// voids its header) and seals, so that the next start reads summaries instead of
    /// scanning.
    void shut_down() {
        while (!conns_.empty())
            close_connection(conns_.begin()->first);
        if (!drive_until([this] { return tags_.empty(); }))
            log_warn("shard {}: {} store I/Os still in flight after 30 s at shutdown", index_,
                     tags_.size());
        marks_ = {};
        engine_->seal_all();
        if (!drive_until([this] { return !engine_->meta_busy(); }))
            log_warn("shard {}: sealing the open region at shutdown did not finish in 30 s",
                     index_);
        publish_gauges();
    }

    /// Routes store completions until `done()` or 30 s passed; false on the timeout.
    template <class Done>
    bool drive_until(Done done) {
        const auto deadline = clock::now() + std::chrono::seconds(30);
        while (!done()) {
            if (clock::now() >= deadline) return false;
            if (drain_store()) continue;
            if (store_.notify_fd() >= 0) {
                pollfd p{store_.notify_fd(), POLLIN, 0};
                ::poll(&p, 1, 10);
            } else {
                ::sched_yield();
            }
        }
        return true;
    }

    // ---- gauges and stats ------------------------------------------------------------------

    void publish_gauges() noexcept {
        counters_.pool_high_water.store(pool_.high_water(), std::memory_order_relaxed);
        counters_.pool_in_use.store(pool_.capacity() - pool_.available(),
                                    std::memory_order_relaxed);
        const auto s = engine_->stats();
        auto set = [](shard_counters::counter& c, std::uint64_t v) {
            c.store(v, std::memory_order_relaxed);
        };
        set(counters_.entries, s.entries);
        set(counters_.tombstones, s.tombstones);
        set(counters_.used_bytes, s.used_bytes);
        set(counters_.capacity_bytes, s.capacity_bytes);
        set(counters_.evicted_regions, s.evicted_regions);
        set(counters_.evicted_entries, s.evicted_entries);
        set(counters_.discarded_bytes, s.discarded_bytes);
        set(counters_.corrupt_records, s.corrupt_records);
    }

    std::vector<std::byte> stats_body() const {
        auto named = counters_.snapshot(index_);
        std::vector<std::pair<std::string_view, std::uint64_t>> view;
        view.reserve(named.size());
        for (const auto& [n, v] : named)
            view.emplace_back(n, v);
        return protocol::encode_stats(view);
    }

    /// Registers the pool with the store's io_uring; without it I/O still works, pinning pages
    /// per operation (e.g. when RLIMIT_MEMLOCK is too small).
    void register_pool() {
        // In pieces of whole buffers (with their headroom) of at most 1 GiB, the kernel's limit
        // per registered buffer: an I/O must lie inside one piece to use it.
        const auto m = pool_.memory();
        const std::size_t piece =
            std::max<std::size_t>(1, (1ull << 30) / pool_.stride()) * pool_.stride();
        std::vector<iovec> pieces;
        for (std::size_t at = 0; at < m.size(); at += piece)
            pieces.push_back({m.data() + at, std::min(piece, m.size() - at)});
        if (auto r = store_.register_buffers(pieces); !r) {
            log_warn("shard {}: buffers not registered with io_uring ({}): I/O runs without fixed "
                     "buffers",
                     index_, r.error().message());
            return;
        }
        counters_.buffers_registered.store(1, std::memory_order_relaxed);
    }

    std::uint32_t index_, count_;
    const server_config& cfg_;
    Store store_;
    buffer_pool pool_;
    shard_counters& counters_;
    std::optional<storage::engine> engine_;
    io_tags<Store> tags_;
    store_meta_submitter<Store> meta_{store_, tags_};
    wait_list waiters_;
    std::optional<shard_services<Store>> services_;
    std::optional<event_loop> loop_;
    std::optional<mailbox<std::unique_ptr<attached_connection<stream_type>>>> inbox_;
    connection_marks marks_;
    std::unordered_map<std::uint64_t, std::unique_ptr<connection_base>> conns_;
    std::uint64_t next_conn_id_ = 0;
    bool engine_progressed_ = false;
    std::atomic<bool> stopping_{false}, drained_{false}, released_{false};
};

} // namespace memkv::detail::server
