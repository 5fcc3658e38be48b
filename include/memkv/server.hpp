// SPDX-License-Identifier: Apache-2.0
// memkv::server<Transport, Store>: the embeddable server.
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/log.hpp>
#include <memkv/detail/server_shard.hpp>
#include <memkv/server_config.hpp>

#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <list>
#include <mutex>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace memkv {

/// A memkv server: `Transport` carries the connections, `Store` holds the bytes. It runs one
/// acceptor thread (handshakes, attach) and one thread per shard; each shard owns a store, a
/// storage engine over it, a bounce-buffer pool and its connections, and shares nothing with
/// the other shards.
///
/// @code
/// memkv::server_config cfg;
/// cfg.listen = {"127.0.0.1:0"};
/// auto srv = memkv::server<memkv::tcp_transport, memkv::memory_store>::create(cfg, {});
/// (*srv)->start();
/// std::cout << (*srv)->endpoints()[0];   // where it listens
/// (*srv)->stop();
/// @endcode
template <transport Transport, store Store>
class server {
    using stream_type = typename Transport::stream;
    using shard_type = detail::server_shard<Transport, Store>;

public:
    using store_config = typename Store::config;

    /// Validates the configuration, opens the store (formatting it, or checking its superblock
    /// against the configuration), creates every shard's store instance, engine and buffer
    /// pool, and recovers each shard's index from the drive. Nothing listens until start().
    static result<std::unique_ptr<server>> create(server_config cfg, store_config scfg = {}) {
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
        std::unique_ptr<server> s(new server(std::move(cfg)));
        auto& c = s->cfg_;
        s->counters_ = std::make_unique<shard_counters[]>(c.shards);

        // Geometry: from the superblock for persistent stores, from the configuration otherwise.
        storage::superblock sb;
        std::uint64_t window = 0, base = 0;
        // The whole-store instance stays open until every shard has opened its own, so that
        // the store is never unowned (file_store's lock, block_store's O_EXCL) in between.
        std::optional<Store> whole;
        if constexpr (persistent) {
            auto created = Store::create(scfg);
            if (!created) return created.error();
            whole.emplace(std::move(*created));
            auto r = open_superblock(*whole, c, sb);
            if (!r) return r.error();
            window =
                (sb.capacity - storage::data_offset) / c.shards / sb.region_size * sb.region_size;
            base = storage::data_offset;
        } else {
            sb = fresh_superblock(c, 0);
        }
        for (std::uint32_t i = 0; i < c.shards; ++i) {
            store_config sc = scfg;
            if constexpr (!persistent) sc = Store::shard_config(scfg, i, c.shards);
            auto st = Store::create(sc);
            if (!st) return st.error();
            if constexpr (!persistent) window = st->capacity() / sb.region_size * sb.region_size;
            // Headroom for a record header: a value that fits one buffer goes out with its
            // header in one write.
            auto pool = detail::buffer_pool::create(
                {c.buffer_size, c.buffers_per_shard, true, storage::meta_block});
            if (!pool) return pool.error();
            s->shards_.push_back(std::make_unique<shard_type>(i, c.shards, s->cfg_, std::move(*st),
                                                              std::move(*pool), s->counters_[i]));
            storage::engine::config ec;
            // Persistent stores: every shard opens the whole store and owns window i of it.
            // Others: every shard has a store of its own.
            ec.base = persistent ? base + std::uint64_t(i) * window : 0;
            ec.length = window;
            ec.region_size = sb.region_size;
            ec.block_size = s->shards_.back()->block_size();
            ec.shard = i;
            ec.seed = sb.record_seed;
            ec.max_value = c.limits.max_value;
            ec.trim = c.trim == trim_mode::on;
            auto rs = s->shards_.back()->init(ec);
            if (!rs) {
                detail::log_error("shard {}: cannot start over {} bytes with {}-byte regions: {}",
                                  i, window, sb.region_size, rs.error().message());
                return rs.error();
            }
            s->recovered_.entries += rs->entries;
            s->recovered_.tombstones += rs->tombstones;
            s->recovered_.corrupt_records += rs->corrupt_records;
            s->recovered_.regions_scanned += rs->regions_scanned;
            s->recovered_.regions_summarised += rs->regions_summarised;
            s->recovered_.seconds += rs->seconds;
        }
        if constexpr (persistent)
            detail::log_info("recovered {} entries ({} tombstones, {} corrupt records skipped; {} "
                             "regions from summaries, {} scanned) in {:.3f} s",
                             s->recovered_.entries, s->recovered_.tombstones,
                             s->recovered_.corrupt_records, s->recovered_.regions_summarised,
                             s->recovered_.regions_scanned, s->recovered_.seconds);
        return s;
    }

    /// What recovery found at create() (all shards together).
    const storage::recovery_stats& recovered() const noexcept { return recovered_; }

    server(const server&) = delete;
    server& operator=(const server&) = delete;
    ~server() { stop(); }

    /// Binds every endpoint and starts the threads. Refuses a non-loopback endpoint when the
    /// key ring is empty (errc::unauthenticated).
    result<void> start() {
        for (const auto& text : cfg_.listen) {
            auto ep = Transport::parse(text);
            if (!ep) {
                detail::log_error("cannot parse listen endpoint '{}'", text);
                return ep.error();
            }
            if (cfg_.keys->empty() && !Transport::is_loopback(*ep)) {
                detail::log_error("refusing to listen on {} without an auth key (set "
                                  "MEMKV_AUTH_KEY or a key file)",
                                  text);
                return errc::unauthenticated;
            }
            auto l = Transport::listen(*ep);
            if (!l) {
                detail::log_error("cannot listen on {}: {}", text, l.error().message());
                return l.error();
            }
            endpoints_.push_back(l->local_endpoint());
            listeners_.push_back(std::move(*l));
        }
        if (cfg_.keys->empty())
            detail::log_warn("no auth key configured: any local process can use this server");
        epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
        wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!epoll_ || !wake_) return errno_code(errno);
        add(wake_.get(), wake_tag);
        for (std::size_t i = 0; i < listeners_.size(); ++i)
            add(listeners_[i].fd(), i);
        for (std::uint32_t i = 0; i < shards_.size(); ++i) {
            threads_.emplace_back([this, i] {
                pin(i);
                shards_[i]->run();
            });
        }
        acceptor_ = std::thread([this] { accept_loop(); });
        running_ = true;
        return {};
    }

    /// Stops accepting and drains, up to drain_timeout: requests already read are answered; a
    /// connection receiving a put's value keeps reading until the value is in, and answers the
    /// other requests it reads meanwhile with errc::closed (nothing done; ping and stats are
    /// answered); other connections are not read. Then every connection is closed (a request
    /// never read fails on the client as unavailable), store I/O completes, the threads are
    /// joined. Idempotent; safe from any thread but a shard's.
    void stop() {
        if (!running_.exchange(false)) return;
        stopping_.store(true, std::memory_order_release);
        std::uint64_t one = 1;
        [[maybe_unused]] auto r = ::write(wake_.get(), &one, sizeof(one));
        if (acceptor_.joinable()) acceptor_.join();
        for (auto& s : shards_)
            s->request_stop();
        // Every shard drains before any closes its connections (a client fails a whole server
        // when one of its connections closes); each shard also stops at its drain timeout.
        const auto give_up = std::chrono::steady_clock::now() + cfg_.drain_timeout;
        while (std::chrono::steady_clock::now() < give_up &&
               !std::ranges::all_of(shards_, [](const auto& s) { return s->drained(); }))
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        for (auto& s : shards_)
            s->release();
        for (auto& t : threads_)
            t.join();
        threads_.clear();
    }

    /// Replaces the key ring (SIGHUP in memkv-server). New handshakes use it at once;
    /// established connections keep their session. Refused (errc::unauthenticated) if the new
    /// ring is empty while a non-loopback endpoint is open. Safe from any thread.
    result<void> reload_keys(std::shared_ptr<const auth::key_ring> ring) {
        if (!ring) return errc::invalid_argument;
        if (ring->empty())
            for (const auto& text : cfg_.listen)
                if (auto ep = Transport::parse(text); ep && !Transport::is_loopback(*ep))
                    return errc::unauthenticated;
        std::lock_guard lock(keys_mutex_);
        keys_ = std::move(ring);
        return {};
    }

    /// The key ring in force.
    std::shared_ptr<const auth::key_ring> keys() const {
        std::lock_guard lock(keys_mutex_);
        return keys_;
    }

    /// The endpoints actually listened on (with real ports when 0 was asked for).
    const std::vector<std::string>& endpoints() const noexcept { return endpoints_; }
    std::uint32_t shard_count() const noexcept { return cfg_.shards; }
    const server_config& config() const noexcept { return cfg_; }
    /// Counters of shard `i` (readable from any thread).
    const shard_counters& counters(std::uint32_t i) const noexcept { return counters_[i]; }
    /// Whether shard 0's bounce buffers are hugepage-backed.
    bool hugepages() const noexcept { return !shards_.empty() && shards_[0]->pool().hugepages(); }
    /// Connections refused during the handshake (bad key, bad hello, timeout).
    std::uint64_t handshake_failures() const noexcept {
        return handshake_failures_.load(std::memory_order_relaxed);
    }

private:
    static constexpr std::uint64_t wake_tag = ~0ull;
    static constexpr std::uint64_t pending_base = 1ull << 32;
    static constexpr bool persistent = [] {
        if constexpr (requires { Store::persistent; })
            return Store::persistent;
        else
            return true;
    }();

    static std::uint64_t random_u64() {
        std::uint64_t v = 0;
        (void)auth::random_bytes(std::as_writable_bytes(std::span(&v, 1)));
        return v;
    }

    static storage::superblock fresh_superblock(const server_config& c, std::uint64_t capacity) {
        storage::superblock sb;
        (void)auth::random_bytes(sb.uuid);
        sb.record_seed = random_u64();
        sb.block_size = storage::meta_block;
        const auto region = c.region_size ? c.region_size : 2 * c.limits.max_value;
        sb.region_size =
            (region + storage::meta_block - 1) / storage::meta_block * storage::meta_block;
        sb.shard_count = c.shards;
        sb.capacity = capacity;
        sb.max_value = c.limits.max_value;
        sb.created_unix = storage::unix_ms() / 1000;
        return sb;
    }

    /// Reads both superblock copies and decides: use, format (blank store, or allowed wipe),
    /// or refuse with a message that says what to do.
    static result<void> open_superblock(Store& st, const server_config& c,
                                        storage::superblock& sb) {
        store_meta_io_t io(st);
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
                    detail::log_error("the store was formatted for {} shards, not {}: start with "
                                      "--shards {}, or --reshard to wipe it",
                                      sb.shard_count, c.shards, sb.shard_count);
                    return errc::rejected;
                }
                detail::log_warn("--reshard: wiping the store ({} -> {} shards)", sb.shard_count,
                                 c.shards);
                format = true;
            } else if (sb.capacity > st.capacity()) {
                detail::log_error("the store is smaller ({} bytes) than when it was formatted ({} "
                                  "bytes)",
                                  st.capacity(), sb.capacity);
                return errc::rejected;
            } else if (sb.max_value < c.limits.max_value) {
                detail::log_error("the store was formatted for values up to {} bytes; start with "
                                  "that cap or wipe it",
                                  sb.max_value);
                return errc::rejected;
            }
        } else if (sa == state::blank && sbs == state::blank) {
            format = true;
        } else {
            const bool incompatible = sa == state::incompatible || sbs == state::incompatible;
            if (!c.wipe_on_incompatible) {
                detail::log_error("{}: refusing to start; --wipe-on-incompatible wipes the store",
                                  incompatible ? "the store has a memkv format this version "
                                                 "cannot read"
                                               : "the store's superblock is damaged (both copies)");
                return errc::rejected;
            }
            detail::log_warn("--wipe-on-incompatible: wiping the store");
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
        // Every region header of the old format is now meaningless: records are keyed by the
        // new seed, so none of them can be taken for valid.
        detail::log_info("formatted the store: {} bytes, {} shards, {}-byte regions", sb.capacity,
                         sb.shard_count, sb.region_size);
        return {};
    }
    using store_meta_io_t = detail::store_meta_io<Store>;

    explicit server(server_config cfg) : cfg_(std::move(cfg)), keys_(cfg_.keys) {}

    void add(int fd, std::uint64_t tag) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = tag;
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev);
    }

    void pin(std::uint32_t i) {
        if (!cfg_.pin_cpus) return;
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(i % std::max(1u, std::thread::hardware_concurrency()), &set);
        ::pthread_setaffinity_np(::pthread_self(), sizeof(set), &set);
    }

    /// A connection between accept and attach.
    struct pending {
        std::uint64_t id;
        detail::server_handshake<stream_type> hs;
        std::unique_ptr<detail::frame_channel<stream_type>> ch; // after authentication
        std::string tenant;
        bool attached = false;
        std::uint32_t shard = 0;
        std::uint64_t attach_id = 0;
        bool bad = false;

        detail::frame_action on_frame(const protocol::frame_header& h, std::span<const std::byte>) {
            if (attached || h.is_reply() || h.code() != protocol::opcode::attach ||
                h.body_len != 0 || h.payload_len != 0 || h.request_id == 0) {
                bad = true;
                return detail::frame_action::pause;
            }
            attached = true;
            shard = h.aux;
            attach_id = h.request_id;
            return detail::frame_action::yield; // stop reading: the shard takes it from here
        }
        void on_payload(const protocol::frame_header&, bool) {}
    };

    void accept_loop() {
        epoll_event events[64];
        while (!stopping_.load(std::memory_order_acquire)) {
            int n = ::epoll_wait(epoll_.get(), events, 64, 100);
            for (int i = 0; i < n; ++i) {
                const auto tag = events[i].data.u64;
                if (tag == wake_tag) continue;
                if (tag < listeners_.size())
                    accept_all(listeners_[tag]);
                else
                    step(tag);
            }
            expire();
        }
        pending_.clear();
        listeners_.clear();
    }

    void accept_all(typename Transport::listener& l) {
        for (;;) {
            auto s = l.accept();
            if (!s) return;
            if (pending_.size() >= cfg_.max_pending_connections) {
                handshake_failures_.fetch_add(1, std::memory_order_relaxed);
                continue; // closed as it goes out of scope
            }
            const auto id = pending_base + ++next_pending_;
            const int fd = s->fd();
            pending_.push_back(pending{id,
                                       detail::server_handshake<stream_type>(
                                           std::move(*s), keys(), cfg_.shards,
                                           detail::clock::now() + cfg_.handshake_timeout),
                                       nullptr,
                                       {},
                                       false,
                                       0,
                                       0,
                                       false});
            add(fd, id);
        }
    }

    void drop(typename std::list<pending>::iterator it) {
        handshake_failures_.fetch_add(1, std::memory_order_relaxed);
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd_of(*it), nullptr);
        pending_.erase(it);
    }

    int fd_of(pending& p) { return p.ch ? p.ch->stream().fd() : p.hs.stream().fd(); }

    void step(std::uint64_t id) {
        auto it = std::find_if(pending_.begin(), pending_.end(),
                               [id](const pending& p) { return p.id == id; });
        if (it == pending_.end()) return;
        auto& p = *it;
        if (!p.ch) {
            auto r = p.hs.step();
            if (!r) return drop(it);
            if (!*r) return; // more bytes needed
            p.tenant = p.hs.tenant();
            p.ch = std::make_unique<detail::frame_channel<stream_type>>(
                std::move(p.hs.stream()), std::move((*r)->send_mac), std::move((*r)->recv_mac),
                cfg_.limits);
        }
        if (auto r = p.ch->on_readable(p); !r || p.bad) return drop(it);
        if (!p.attached) return;
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, p.ch->stream().fd(), nullptr);
        if (p.shard >= shards_.size()) {
            // Tell the client why, then close.
            protocol::frame_header r;
            r.op = static_cast<std::uint8_t>(protocol::opcode::attach) | protocol::reply_bit;
            r.request_id = p.attach_id;
            r.aux = static_cast<std::uint32_t>(errc::invalid_argument);
            p.ch->send(r, {});
            (void)p.ch->flush();
            pending_.erase(it);
            return;
        }
        auto a = std::make_unique<detail::attached_connection<stream_type>>(
            detail::attached_connection<stream_type>{std::move(*p.ch), std::move(p.tenant),
                                                     p.attach_id});
        shards_[p.shard]->adopt(std::move(a));
        pending_.erase(it);
    }

    void expire() {
        const auto now = detail::clock::now();
        for (auto it = pending_.begin(); it != pending_.end();) {
            auto next = std::next(it);
            if (now >= it->hs.deadline()) drop(it);
            it = next;
        }
    }

    server_config cfg_;
    std::unique_ptr<shard_counters[]> counters_;
    std::vector<std::unique_ptr<shard_type>> shards_;
    std::vector<typename Transport::listener> listeners_;
    std::vector<std::string> endpoints_;
    std::vector<std::thread> threads_;
    std::thread acceptor_;
    detail::unique_fd epoll_, wake_;
    std::atomic<bool> stopping_{false};
    std::atomic<bool> running_{false};
    std::list<pending> pending_;
    std::uint64_t next_pending_ = 0;
    std::atomic<std::uint64_t> handshake_failures_{0};
    storage::recovery_stats recovered_;
    mutable std::mutex keys_mutex_;
    std::shared_ptr<const auth::key_ring> keys_; // guarded by keys_mutex_
};

} // namespace memkv
