// SPDX-License-Identifier: Apache-2.0
// memkv::server<Transport, Store>: the embeddable server.
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/log.hpp>
#include <memkv/detail/server/acceptor.hpp>
#include <memkv/detail/server/shard.hpp>
#include <memkv/detail/server/superblock_io.hpp>
#include <memkv/server_config.hpp>

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace memkv {

/// A memkv server: `Transport` carries the connections, `Store` holds the bytes. It runs one
/// acceptor thread (handshakes, attach) and one thread per shard; each shard owns a store, a
/// storage engine over it, a bounce-buffer pool and its connections, and shares nothing with
/// the other shards. A movable handle: destroying it stops the server.
///
/// @code
/// memkv::server_config cfg;
/// cfg.listen = {"127.0.0.1:0"};
/// auto srv = memkv::server<memkv::tcp_transport, memkv::memory_store>::create(cfg, {});
/// srv->start();
/// std::cout << srv->endpoints()[0];   // where it listens
/// srv->stop();
/// @endcode
template <transport Transport, store Store>
class server {
    using shard_type = detail::server::shard<Transport, Store>;
    using acceptor_type = detail::server::acceptor<Transport>;

public:
    using store_config = typename Store::config;
    using transport_config = typename Transport::config;

    /// Validates the configuration, makes the transport (from `tcfg`), opens the store
    /// (formatting it, or checking its superblock against the configuration), creates every
    /// shard's store instance, engine and buffer pool, and recovers each shard's index from the
    /// drive. Nothing listens until start().
    static result<server> create(server_config cfg, store_config scfg = {},
                                 transport_config tcfg = {}) {
        if (cfg.listen.empty()) return errc::invalid_argument;
        if (cfg.shards == 0) cfg.shards = std::max(1u, std::thread::hardware_concurrency());
        if (cfg.buffer_size % 4096 != 0 || cfg.buffer_size < storage::crc_chunk_size ||
            cfg.buffer_size % storage::crc_chunk_size != 0)
            return errc::invalid_argument;
        // Payload frames are at most one buffer, so a frame straddles at most two buffers.
        cfg.limits.max_chunk = static_cast<std::uint32_t>(
            std::min<std::size_t>(cfg.limits.max_chunk, cfg.buffer_size));
        if (!cfg.keys) cfg.keys = std::make_shared<auth::key_ring>();
        if (cfg.trim == trim_mode::by_store)
            cfg.trim = trim_by_default<Store> ? trim_mode::on : trim_mode::off;
        auto t = Transport::create(tcfg);
        if (!t) return t.error();
        server s(std::make_unique<state>(std::move(cfg), std::move(*t)));
        MEMKV_TRY(s.s_->open(scfg));
        return s;
    }

    server(server&&) noexcept = default;
    server& operator=(server&&) noexcept = default;
    ~server() {
        if (s_) s_->stop();
    }

    /// What recovery found at create() (all shards together).
    const storage::recovery_stats& recovered() const noexcept { return s_->recovered; }

    /// Binds every endpoint and starts the threads. Refuses a non-loopback endpoint when the
    /// key ring is empty (errc::unauthenticated).
    result<void> start() { return s_->start(); }

    /// Stops accepting and drains, up to drain_timeout: requests already read are answered; a
    /// connection receiving a put's value keeps reading until the value is in, and answers the
    /// other requests it reads meanwhile with errc::closed (nothing done; ping and stats are
    /// answered); other connections are not read. Then every connection is closed (a request
    /// never read fails on the client as unavailable), store I/O completes, the open region is
    /// sealed and the threads are joined. Idempotent; safe from any thread but a shard's.
    void stop() { s_->stop(); }

    /// Replaces the key ring (SIGHUP in memkv-server). New handshakes use it at once;
    /// established connections keep their session. Refused (errc::unauthenticated) if the new
    /// ring is empty while a non-loopback endpoint is open. Safe from any thread.
    result<void> reload_keys(std::shared_ptr<const auth::key_ring> ring) {
        if (!ring) return errc::invalid_argument;
        if (ring->empty())
            for (const auto& text : s_->cfg.listen)
                if (auto ep = s_->transport.parse(text); ep && !s_->transport.is_loopback(*ep))
                    return errc::unauthenticated;
        std::lock_guard lock(s_->keys_mutex);
        s_->keys = std::move(ring);
        return {};
    }

    /// The key ring in force.
    std::shared_ptr<const auth::key_ring> keys() const { return s_->current_keys(); }

    /// The endpoints actually listened on (with real ports when 0 was asked for).
    const std::vector<std::string>& endpoints() const noexcept { return s_->endpoints; }
    std::uint32_t shard_count() const noexcept { return s_->cfg.shards; }
    const server_config& config() const noexcept { return s_->cfg; }
    /// Counters of shard `i` (readable from any thread).
    const shard_counters& counters(std::uint32_t i) const noexcept { return s_->counters[i]; }
    /// Whether shard 0's bounce buffers are hugepage-backed.
    bool hugepages() const noexcept {
        return !s_->shards.empty() && s_->shards[0]->pool().hugepages();
    }
    /// Connections refused during the handshake (bad key, bad hello, timeout).
    std::uint64_t handshake_failures() const noexcept {
        return s_->acceptor ? s_->acceptor->failures() : 0;
    }

private:
    static constexpr bool persistent = [] {
        if constexpr (requires { Store::persistent; })
            return Store::persistent;
        else
            return true;
    }();

    /// Everything the handle owns (at a fixed address: the threads refer to it).
    struct state {
        state(server_config c, Transport t)
            : cfg(std::move(c)), transport(std::move(t)), keys(cfg.keys) {}
        ~state() { stop(); }

        result<void> open(const store_config& scfg);
        result<void> start();
        void stop();
        std::shared_ptr<const auth::key_ring> current_keys() const {
            std::lock_guard lock(keys_mutex);
            return keys;
        }
        void pin(std::uint32_t i) const;

        server_config cfg;
        Transport transport; // the instance the listeners come from
        std::unique_ptr<shard_counters[]> counters;
        std::vector<std::unique_ptr<shard_type>> shards;
        std::unique_ptr<acceptor_type> acceptor;
        std::vector<std::string> endpoints;
        std::vector<std::thread> threads;
        std::thread acceptor_thread;
        std::atomic<bool> running{false};
        storage::recovery_stats recovered;
        mutable std::mutex keys_mutex;
        std::shared_ptr<const auth::key_ring> keys; // guarded by keys_mutex
    };

    explicit server(std::unique_ptr<state> s) noexcept : s_(std::move(s)) {}

    std::unique_ptr<state> s_;
};

template <transport Transport, store Store>
result<void> server<Transport, Store>::state::open(const store_config& scfg) {
    auto& c = cfg;
    counters = std::make_unique<shard_counters[]>(c.shards);
    // Geometry: from the superblock for persistent stores, from the configuration otherwise.
    storage::superblock sb;
    std::uint64_t window = 0, base = 0;
    // The whole-store instance stays open until every shard has opened its own, so that the
    // store is never unowned (file_store's lock, block_store's O_EXCL) in between.
    std::optional<Store> whole;
    if constexpr (persistent) {
        auto created = Store::create(scfg);
        if (!created) return created.error();
        whole.emplace(std::move(*created));
        MEMKV_TRY(detail::server::open_superblock(*whole, c, sb));
        window = (sb.capacity - storage::data_offset) / c.shards / sb.region_size * sb.region_size;
        base = storage::data_offset;
    } else {
        sb = detail::server::fresh_superblock(c, 0);
    }
    for (std::uint32_t i = 0; i < c.shards; ++i) {
        store_config sc = scfg;
        if constexpr (!persistent) sc = Store::shard_config(scfg, i, c.shards);
        auto st = Store::create(sc);
        if (!st) return st.error();
        if constexpr (!persistent) window = st->capacity() / sb.region_size * sb.region_size;
        // Headroom for a record header: a value that fits one buffer goes out with its header
        // in one write.
        auto pool = detail::buffer_pool::create(
            {c.buffer_size, c.buffers_per_shard, true, storage::meta_block});
        if (!pool) return pool.error();
        shards.push_back(std::make_unique<shard_type>(i, c.shards, cfg, std::move(*st),
                                                      std::move(*pool), counters[i]));
        storage::engine::config ec;
        // Persistent stores: every shard opens the whole store and owns window i of it.
        // Others: every shard has a store of its own.
        ec.base = persistent ? base + std::uint64_t(i) * window : 0;
        ec.length = window;
        ec.region_size = sb.region_size;
        ec.block_size = shards.back()->block_size();
        ec.shard = i;
        ec.seed = sb.record_seed;
        ec.max_value = c.limits.max_value;
        ec.trim = c.trim == trim_mode::on;
        auto rs = shards.back()->init(ec);
        if (!rs) {
            detail::log_error("shard {}: cannot start over {} bytes with {}-byte regions: {}", i,
                              window, sb.region_size, rs.error().message());
            return rs.error();
        }
        recovered.entries += rs->entries;
        recovered.tombstones += rs->tombstones;
        recovered.corrupt_records += rs->corrupt_records;
        recovered.regions_scanned += rs->regions_scanned;
        recovered.regions_summarised += rs->regions_summarised;
        recovered.seconds += rs->seconds;
    }
    if constexpr (persistent)
        detail::log_info("recovered {} entries ({} tombstones, {} corrupt records skipped; {} "
                         "regions from summaries, {} scanned) in {:.3f} s",
                         recovered.entries, recovered.tombstones, recovered.corrupt_records,
                         recovered.regions_summarised, recovered.regions_scanned,
                         recovered.seconds);
    return {};
}

template <transport Transport, store Store>
result<void> server<Transport, Store>::state::start() {
    std::vector<typename Transport::listener> listeners;
    for (const auto& text : cfg.listen) {
        auto ep = transport.parse(text);
        if (!ep) {
            detail::log_error("cannot parse listen endpoint '{}'", text);
            return ep.error();
        }
        if (cfg.keys->empty() && !transport.is_loopback(*ep)) {
            detail::log_error("refusing to listen on {} without an auth key (set MEMKV_AUTH_KEY "
                              "or a key file)",
                              text);
            return errc::unauthenticated;
        }
        auto l = transport.listen(*ep);
        if (!l) {
            detail::log_error("cannot listen on {}: {}", text, l.error().message());
            return l.error();
        }
        endpoints.push_back(l->local_endpoint());
        listeners.push_back(std::move(*l));
    }
    if (cfg.keys->empty())
        detail::log_warn("no auth key configured: any local process can use this server");
    auto a = acceptor_type::create(
        cfg, std::move(listeners), [this] { return current_keys(); },
        [this](std::uint32_t shard, auto c) { shards[shard]->adopt(std::move(c)); });
    if (!a) return a.error();
    acceptor = std::move(*a);
    for (std::uint32_t i = 0; i < shards.size(); ++i) {
        threads.emplace_back([this, i] {
            pin(i);
            shards[i]->run();
        });
    }
    acceptor_thread = std::thread([this] { acceptor->run(); });
    running = true;
    return {};
}

template <transport Transport, store Store>
void server<Transport, Store>::state::stop() {
    if (!running.exchange(false)) return;
    acceptor->stop();
    if (acceptor_thread.joinable()) acceptor_thread.join();
    for (auto& s : shards)
        s->request_stop();
    // Every shard drains before any closes its connections (a client fails a whole server when
    // one of its connections closes); each shard also stops at its drain timeout.
    const auto give_up = std::chrono::steady_clock::now() + cfg.drain_timeout;
    while (std::chrono::steady_clock::now() < give_up &&
           !std::ranges::all_of(shards, [](const auto& s) { return s->drained(); }))
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    for (auto& s : shards)
        s->release();
    for (auto& t : threads)
        t.join();
    threads.clear();
}

template <transport Transport, store Store>
void server<Transport, Store>::state::pin(std::uint32_t i) const {
    if (!cfg.pin_cpus) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(i % std::max(1u, std::thread::hardware_concurrency()), &set);
    ::pthread_setaffinity_np(::pthread_self(), sizeof(set), &set);
}

} // namespace memkv
