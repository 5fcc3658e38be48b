// SPDX-License-Identifier: Apache-2.0
// One shard of memkv::server: a thread with its epoll loop, connections, storage engine, store
// and bounce buffers. Nothing here is shared with other shards except the inbox and counters.
#pragma once

#include <memkv/checksum.hpp>
#include <memkv/concepts.hpp>
#include <memkv/detail/buffer_pool.hpp>
#include <memkv/detail/frame_channel.hpp>
#include <memkv/detail/handshake_io.hpp>
#include <memkv/detail/shard_counters.hpp>
#include <memkv/detail/socket.hpp>
#include <memkv/protocol/messages.hpp>
#include <memkv/protocol/placement.hpp>
#include <memkv/server_config.hpp>
#include <memkv/storage/engine.hpp>
#include <memkv/detail/log.hpp>

#include <poll.h>
#include <sched.h>

#include <sys/epoll.h>
#include <sys/eventfd.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

namespace memkv::detail {

/// Synchronous I/O on a store for the engine's metadata (recovery; opening, sealing and
/// reclaiming regions). It submits one operation and polls until that completes; completions
/// of other operations polled meanwhile are kept in stash() for the shard loop.
template <store Store>
class store_meta_io final : public storage::meta_io {
public:
    explicit store_meta_io(Store& s) noexcept : store_(s) {}

    result<void> read(std::uint64_t offset, std::span<std::byte> buf) override {
        return run([&](std::uint64_t t) { return store_.read(offset, buf, t); }, buf.size());
    }
    result<void> write(std::uint64_t offset, std::span<const std::byte> buf) override {
        return run([&](std::uint64_t t) { return store_.write(offset, buf, t); }, buf.size());
    }
    result<void> flush() override {
        return run([&](std::uint64_t t) { return store_.flush(t); }, 0);
    }
    result<void> discard(std::uint64_t offset, std::uint64_t length) override {
        return run([&](std::uint64_t t) { return store_.discard(offset, length, t); }, 0);
    }
    /// Completions of the shard's own operations that arrived while waiting.
    std::vector<io_completion>& stash() noexcept { return stash_; }

private:
    static constexpr std::uint64_t tag_bit = 1ull << 63; // shard tags never set it

    template <class Submit>
    result<void> run(Submit submit, std::size_t expect) {
        const std::uint64_t tag = tag_bit | ++next_;
        MEMKV_TRY(submit(tag));
        io_completion done[32];
        for (;;) {
            const std::size_t n = store_.poll(done);
            std::optional<std::int64_t> res;
            for (std::size_t i = 0; i < n; ++i) {
                if (done[i].tag == tag)
                    res = done[i].res;
                else
                    stash_.push_back(done[i]);
            }
            if (res) {
                if (*res < 0) return errno_code(static_cast<int>(*res));
                if (expect != 0 && static_cast<std::size_t>(*res) != expect) return errc::internal;
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
    std::vector<io_completion> stash_;
};

/// A connection handed from the acceptor to its shard after handshake and attach.
template <class Stream>
struct attached_connection {
    frame_channel<Stream> channel;
    std::string tenant;
    std::uint64_t attach_request_id = 0;
};

template <transport Transport, store Store>
class server_shard {
    using stream_type = typename Transport::stream;
    using channel_type = frame_channel<stream_type>;

public:
    server_shard(std::uint32_t index, std::uint32_t count, const server_config& cfg, Store store,
                 buffer_pool pool, shard_counters& counters)
        : index_(index), count_(count), cfg_(cfg), store_(std::move(store)), meta_io_(store_),
          pool_(std::move(pool)), counters_(counters) {
        counters_.describe_store(store_, pool_.hugepages());
        if constexpr (requires(std::span<const iovec> r) { store_.register_buffers(r); }) {
            if (cfg_.register_buffers) register_pool();
        }
    }

    server_shard(const server_shard&) = delete;
    server_shard& operator=(const server_shard&) = delete;

    /// Creates the engine over window `ecfg` of the store and recovers its index from the
    /// drive. Call before run().
    result<storage::recovery_stats> init(storage::engine::config ecfg) {
        ecfg.io = &meta_io_;
        auto e = storage::engine::create(ecfg);
        if (!e) return e.error();
        engine_ = std::move(*e);
        auto rs = engine_.recover();
        if (!rs) return rs.error();
        MEMKV_TRY(init_loop());
        publish_gauges();
        return *rs;
    }

private:
    result<void> init_loop() noexcept {
        epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
        wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!epoll_ || !wake_) return errno_code(errno);
        MEMKV_TRY(add_fd(wake_.get(), EPOLLIN, wake_tag));
        if (store_.notify_fd() >= 0) MEMKV_TRY(add_fd(store_.notify_fd(), EPOLLIN, store_tag));
        return {};
    }

public:
    /// Hands a connection to this shard (any thread). The shard replies to its attach.
    void adopt(std::unique_ptr<attached_connection<stream_type>> c) {
        {
            std::lock_guard lock(inbox_mutex_);
            inbox_.push_back(std::move(c));
        }
        wake();
    }

    /// Asks the loop to drain (answer what it received, finish the values still arriving, refuse
    /// new requests) and, once released or at the drain timeout, to close and return (any
    /// thread).
    void request_stop() noexcept {
        stopping_.store(true, std::memory_order_release);
        wake();
    }

    /// After request_stop(): whether the shard has nothing left to do (or its drain timed out).
    bool drained() const noexcept { return drained_.load(std::memory_order_acquire); }

    /// After request_stop(): lets a drained shard close its connections and return (any thread).
    void release() noexcept {
        released_.store(true, std::memory_order_release);
        wake();
    }

    std::uint32_t index() const noexcept { return index_; }
    std::uint32_t block_size() const noexcept { return store_.block_size(); }
    const buffer_pool& pool() const noexcept { return pool_; }

    /// The shard's loop; returns after request_stop() once in-flight work is done or the drain
    /// timeout passed.
    void run() noexcept {
        epoll_event events[64];
        clock::time_point drain_deadline{};
        for (;;) {
            const bool stopping = stopping_.load(std::memory_order_acquire);
            if (stopping && drain_deadline == clock::time_point{}) {
                drain_deadline = clock::now() + cfg_.drain_timeout;
                for (auto& [id, c] : conns_)
                    c->draining = true, mark(*c);
            }
            if (stopping) {
                // Drained shards keep their connections until every shard drained (release()):
                // a client fails a whole server when one of its connections closes.
                const bool late = clock::now() >= drain_deadline;
                const bool done = late || idle();
                drained_.store(done, std::memory_order_release);
                if (done && (late || released_.load(std::memory_order_acquire))) break;
            }
            update_interest(); // may resume paused channels, which submit store I/O
            const bool more_io = drain_store();
            close_doomed();
            // Work made ready above (dirty connections, completions left) must not wait.
            const int timeout = !dirty_.empty() || more_io ? 0 : stopping ? 10 : 1000;
            int n = ::epoll_wait(epoll_.get(), events, 64, timeout);
            for (int i = 0; i < n; ++i)
                on_event(events[i]);
            drain_store();
            close_doomed();
            publish_gauges();
        }
        while (!conns_.empty())
            close_connection(conns_.begin()->first);
        // Every store I/O completes (and a failed put voids its header) before the seal.
        const auto io_deadline = clock::now() + std::chrono::seconds(30);
        while ((drain_store() || !inflight_io_.empty()) && clock::now() < io_deadline) {
            if (store_.notify_fd() >= 0 && !inflight_io_.empty()) {
                pollfd p{store_.notify_fd(), POLLIN, 0};
                ::poll(&p, 1, 10);
            }
        }
        if (!inflight_io_.empty())
            log_warn("shard {}: {} store I/Os still in flight after 30 s at shutdown", index_,
                     inflight_io_.size());
        doomed_.clear();
        // Seal the open region so that the next start reads its summary instead of scanning.
        if (auto r = engine_.seal_open_region(); !r)
            log_warn("shard {}: sealing the open region at shutdown failed: {}", index_,
                     r.error().message());
        publish_gauges();
    }

private:
    static constexpr std::uint64_t wake_tag = ~0ull;
    static constexpr std::uint64_t store_tag = ~0ull - 1;

    struct connection;

    /// A record being written: a PUT receiving its value (bytes land in pool buffers, full
    /// buffers are written), or a DEL's tombstone. The header block is written once the last
    /// value byte has arrived (beside the value's last writes), then, when both are done (and
    /// for durable puts and every delete, the store flushed), the record is published and
    /// acknowledged.
    struct put_op {
        enum class phase { value, header, flush };
        std::uint64_t conn_id = 0, id = 0;
        protocol::opcode op = protocol::opcode::put;
        storage::put_ticket ticket;
        storage::record_info info; // tenant, key, meta, flags, version, length, expiry, CRCs
        std::uint16_t flags = 0;   // wire flags
        phase stage = phase::value;
        std::unique_ptr<storage::aligned_buffer> header;
        std::uint64_t received = 0; // value bytes received so far
        std::byte* buf = nullptr;   // buffer being filled
        std::size_t fill = 0;       // bytes in buf
        std::uint64_t buf_value_off = 0;
        std::byte* next = nullptr; // second buffer of a frame that straddles two
        unsigned writes = 0;       // store writes in flight (+ a flush)
        std::error_code failed;
        std::uint32_t crc = 0; // running CRC of the current crc chunk
        std::uint64_t crc_len = 0;
        bool finished = false;      // replied (or abandoned); nothing more to do
        bool header_voided = false; // failed after its header was written: header zeroed
    };

    /// A GET streaming its range: pieces are read into buffers and sent in offset order.
    struct get_op {
        std::uint64_t conn_id = 0, id = 0;
        storage::index_entry entry; // copy: the index may change while we stream
        std::string key;            // index key, to forget the entry if its bytes are damaged
        std::uint64_t range_off = 0, range_len = 0;
        std::uint64_t next_piece = 0, end_piece = 0; // pieces to read [next, end)
        struct piece {
            std::uint64_t index = 0;
            std::byte* buf = nullptr;
            bool ready = false;
        };
        std::deque<piece> pieces; // in piece order
        unsigned in_store = 0;    // reads in flight
        unsigned in_channel = 0;  // frames queued on the connection
        bool header_sent = false;
        bool finished = false;
    };

    /// What a store tag or a send token refers to.
    struct io_ctx {
        std::shared_ptr<put_op> put;
        std::shared_ptr<get_op> get;
        std::byte* buf = nullptr; // the pool buffer the I/O or frame uses, if any
        std::uint64_t expect = 0; // bytes the operation must transfer (0: flush)
    };

    struct connection {
        std::uint64_t id = 0;
        channel_type ch;
        std::string tenant;
        std::uint64_t last_request = 0;
        std::set<std::uint64_t> pending; // requests not yet answered
        std::unordered_map<std::uint64_t, std::shared_ptr<put_op>> puts; // awaiting payload
        std::unordered_map<std::uint64_t, std::uint64_t> dropping;       // id -> value_len
        std::size_t held = 0; // pool buffers held by this connection's requests
        bool draining = false;
        bool dead = false; // failed; closed at the end of the loop iteration
        bool dirty = false;
        std::uint32_t interest = 0;
        server_shard* shard = nullptr;

        connection(std::uint64_t i, channel_type c) : id(i), ch(std::move(c)) {}

        // frame_channel handler interface
        frame_action on_frame(const protocol::frame_header& h, std::span<const std::byte> body) {
            return shard->on_frame(*this, h, body);
        }
        void on_payload(const protocol::frame_header& h, bool crc_ok) {
            shard->on_payload(*this, h, crc_ok);
        }
    };

    // ---- event loop ------------------------------------------------------------------------

    result<void> add_fd(int fd, std::uint32_t events, std::uint64_t tag) noexcept {
        epoll_event ev{};
        ev.events = events;
        ev.data.u64 = tag;
        if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return errno_code(errno);
        return {};
    }

    void wake() noexcept {
        std::uint64_t one = 1;
        [[maybe_unused]] auto r = ::write(wake_.get(), &one, sizeof(one));
    }

    bool idle() const noexcept {
        for (const auto& [id, c] : conns_)
            if (!c->pending.empty() || c->ch.want_write()) return false;
        return inflight_io_.empty();
    }

    void on_event(const epoll_event& ev) {
        if (ev.data.u64 == wake_tag) {
            std::uint64_t v;
            [[maybe_unused]] auto r = ::read(wake_.get(), &v, sizeof(v));
            take_inbox();
            return;
        }
        if (ev.data.u64 == store_tag) return; // drain_store() runs after every batch
        auto it = conns_.find(ev.data.u64);
        if (it == conns_.end()) return;
        auto& c = *it->second;
        if (c.dead) return;
        if ((ev.events & (EPOLLERR | EPOLLHUP)) && !(ev.events & EPOLLIN))
            return fail_connection(c, make_error_code(errc::closed));
        if (ev.events & EPOLLIN) {
            if (auto r = c.ch.on_readable(c); !r) return fail_connection(c, r.error());
            drain_store();
        }
        if (ev.events & EPOLLOUT) flush(c);
        mark(c);
    }

    void take_inbox() {
        std::deque<std::unique_ptr<attached_connection<stream_type>>> in;
        {
            std::lock_guard lock(inbox_mutex_);
            in.swap(inbox_);
        }
        for (auto& a : in) {
            const auto id = ++next_conn_id_;
            auto c = std::make_unique<connection>(id, std::move(a->channel));
            c->tenant = std::move(a->tenant);
            c->shard = this;
            c->last_request = a->attach_request_id;
            c->draining = stopping_.load(std::memory_order_acquire); // adopted during stop()
            const int fd = c->ch.stream().fd();
            if (!add_fd(fd, EPOLLIN, id)) continue;
            c->interest = EPOLLIN;
            protocol::frame_header r;
            r.op = static_cast<std::uint8_t>(protocol::opcode::attach) | protocol::reply_bit;
            r.request_id = a->attach_request_id;
            c->ch.send(r, {});
            counters_.connections.fetch_add(1, std::memory_order_relaxed);
            auto& ref = *c;
            conns_.emplace(id, std::move(c));
            // Frames the client sent right after attach may already sit in the staging buffer.
            if (auto rr = ref.ch.on_readable(ref); !rr) fail_connection(ref, rr.error());
            flush(ref);
            mark(ref);
        }
    }

    void mark(connection& c) {
        if (!c.dirty) {
            c.dirty = true;
            dirty_.push_back(c.id);
        }
    }

    /// Sets each touched connection's epoll interest: read unless paused, over its in-flight
    /// cap or draining (a draining connection still reads the rest of the values it is
    /// receiving); write while frames are queued.
    void update_interest() {
        // Handling a connection may mark others (buffers given back): they go to the next round.
        auto dirty = std::exchange(dirty_, {});
        for (auto id : dirty) {
            auto it = conns_.find(id);
            if (it == conns_.end()) continue;
            auto& c = *it->second;
            c.dirty = false;
            if (c.dead) continue;
            if (c.ch.want_write()) flush(c); // replies go out before the next wait
            if (c.dead) continue;
            if (c.ch.paused()) {
                if (auto r = c.ch.resume(c); !r) {
                    fail_connection(c, r.error());
                    continue;
                }
            }
            std::uint32_t want = 0;
            // Draining: read only while a put's value is still arriving, so that it can finish.
            const bool read = !c.draining || !c.puts.empty();
            if (!c.ch.paused() && read && !over_cap(c)) want |= EPOLLIN;
            if (c.ch.want_write()) want |= EPOLLOUT;
            if (want != c.interest) {
                epoll_event ev{};
                ev.events = want;
                ev.data.u64 = c.id;
                ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.ch.stream().fd(), &ev);
                c.interest = want;
            }
        }
    }

    void flush(connection& c) {
        if (c.dead) return;
        if (auto r = c.ch.flush(); !r) return fail_connection(c, r.error());
        for (auto token : c.ch.sent_tokens())
            on_sent(token);
        c.ch.sent_tokens().clear();
    }

    /// Marks a connection dead; it is closed at the end of the loop iteration (never while a
    /// caller still holds a reference). Malformed or oversized frames get a final error reply
    /// (request id 0) first; MAC failures get nothing (replies never reveal which check
    /// failed).
    void fail_connection(connection& c, std::error_code ec) {
        if (c.dead) return;
        const bool malformed =
            ec == make_error_code(errc::protocol) || ec == make_error_code(errc::too_large);
        if (malformed) {
            counters_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
            c.ch.send(reply_header(protocol::opcode::ping, 0, ec), {});
            (void)c.ch.flush();
        } else if (ec == make_error_code(errc::unauthenticated)) {
            counters_.auth_failures.fetch_add(1, std::memory_order_relaxed);
        }
        c.dead = true;
        doomed_.push_back(c.id);
    }

    void close_doomed() {
        for (auto id : doomed_)
            close_connection(id);
        doomed_.clear();
    }

    void close_connection(std::uint64_t id) {
        auto it = conns_.find(id);
        if (it == conns_.end()) return;
        auto& c = *it->second;
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c.ch.stream().fd(), nullptr);
        for (auto& [rid, op] : c.puts) {
            if (!op->failed) op->failed = make_error_code(errc::closed);
        }
        auto puts = std::move(c.puts); // finished below, once the connection is gone
        c.puts.clear();
        // Frames queued on the channel die with it: give back the buffers they borrowed.
        for (auto& [token, ctx] : sent_tokens_)
            if (ctx.get && ctx.get->conn_id == id) release_piece_buffer(*ctx.get, ctx.buf);
        std::erase_if(sent_tokens_, [id](const auto& kv) {
            return kv.second.get && kv.second.get->conn_id == id;
        });
        for (auto& g : gets_of(id)) {
            abandon_get(*g);
            finish_get(g);
        }
        counters_.connections.fetch_sub(1, std::memory_order_relaxed);
        conns_.erase(it);
        for (auto& [rid, op] : puts)
            advance(op); // aborts those with no write in flight
    }

    std::vector<std::shared_ptr<get_op>> gets_of(std::uint64_t conn_id) {
        std::vector<std::shared_ptr<get_op>> out;
        for (auto& g : active_gets_)
            if (g->conn_id == conn_id) out.push_back(g);
        return out;
    }

    connection* find_conn(std::uint64_t id) {
        auto it = conns_.find(id);
        return it == conns_.end() ? nullptr : it->second.get();
    }

    void publish_gauges() noexcept {
        counters_.pool_high_water.store(pool_.high_water(), std::memory_order_relaxed);
        counters_.pool_in_use.store(pool_.capacity() - pool_.available(),
                                    std::memory_order_relaxed);
        const auto s = engine_.stats();
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

    // ---- replies ----------------------------------------------------------------------------

    static std::uint64_t now_ms() noexcept {
        return static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::milliseconds>(clock::now().time_since_epoch())
                .count());
    }

    protocol::frame_header reply_header(protocol::opcode op, std::uint64_t id,
                                        std::error_code status = {}) const noexcept {
        protocol::frame_header r;
        r.op = static_cast<std::uint8_t>(op) | protocol::reply_bit;
        r.request_id = id;
        r.aux = status_code(status);
        return r;
    }

    static std::uint32_t status_code(std::error_code ec) noexcept {
        if (!ec) return 0;
        if (ec.category() == error_category()) return static_cast<std::uint32_t>(ec.value());
        return static_cast<std::uint32_t>(errc::internal);
    }

    /// Records that request `id` is answered (for ordering and in-flight counters).
    void answered(connection& c, std::uint64_t id) {
        auto it = c.pending.find(id);
        if (it == c.pending.end()) return;
        if (it != c.pending.begin())
            counters_.out_of_order_replies.fetch_add(1, std::memory_order_relaxed);
        c.pending.erase(it);
    }

    void reply(connection& c, protocol::opcode op, std::uint64_t id, std::error_code status,
               std::vector<std::byte> body = {}) {
        c.ch.send(reply_header(op, id, status), std::move(body));
        answered(c, id);
        mark(c);
    }

    // ---- requests ---------------------------------------------------------------------------

    /// Starts tracking request `id`; ids must grow on a connection (never reused).
    bool begin_request(connection& c, std::uint64_t id) {
        if (id <= c.last_request) return false;
        c.last_request = id;
        c.pending.insert(id);
        const auto depth = c.pending.size();
        auto& hw = counters_.max_pipeline_depth;
        if (depth > hw.load(std::memory_order_relaxed)) hw.store(depth, std::memory_order_relaxed);
        counters_.requests.fetch_add(1, std::memory_order_relaxed);
        return true;
    }

    bool owns(std::span<const std::byte> key) const noexcept {
        return shard_for(key_hash(key), count_) == index_;
    }

    frame_action on_frame(connection& c, const protocol::frame_header& h,
                          std::span<const std::byte> body) {
        using protocol::opcode;
        if (h.is_reply()) return protocol_error(c);
        switch (h.code()) {
        case opcode::ping:
            if (!begin_request(c, h.request_id) || h.body_len || h.payload_len)
                return protocol_error(c);
            reply(c, opcode::ping, h.request_id, {});
            return frame_action::discard;
        case opcode::stats:
            if (!begin_request(c, h.request_id) || h.body_len || h.payload_len)
                return protocol_error(c);
            reply(c, opcode::stats, h.request_id, {}, stats_body_());
            return frame_action::discard;
        case opcode::get:
        case opcode::del: {
            if (h.payload_len || !begin_request(c, h.request_id)) return protocol_error(c);
            auto km = protocol::split_key_meta(h, body, cfg_.limits);
            if (!km) return malformed(c, km.error());
            if (h.code() == opcode::get)
                start_get(c, h.request_id, km->key, h.offset, h.length);
            else
                do_del(c, h.request_id, km->key);
            return frame_action::discard;
        }
        case opcode::exists: {
            if (h.payload_len || !begin_request(c, h.request_id)) return protocol_error(c);
            auto keys = protocol::decode_exists_request(h, body, cfg_.limits);
            if (!keys) return malformed(c, keys.error());
            do_exists(c, h, *keys);
            return frame_action::discard;
        }
        case opcode::put: {
            // A put paused for buffers is dispatched again on resume: start it only once.
            if (!c.puts.contains(h.request_id)) {
                if (!begin_request(c, h.request_id)) return protocol_error(c);
                auto km = protocol::split_key_meta(h, body, cfg_.limits);
                if (!km) return malformed(c, km.error());
                if (h.offset != 0 || !room_for_put(c)) return protocol_error(c);
                start_put(c, h.request_id, km->key, km->meta, h.flags, h.value_len, h.length);
            }
            return data_target(c, h.request_id, h.offset, h.payload_len);
        }
        case opcode::batch: {
            if (h.payload_len) return protocol_error(c);
            auto subs = protocol::decode_batch(h, body, cfg_.limits);
            if (!subs) return malformed(c, subs.error());
            // The batch's own id and every sub-request id must grow; all are checked before
            // anything runs, so a malformed batch changes nothing.
            std::uint64_t last = h.request_id;
            if (last <= c.last_request) return protocol_error(c);
            for (const auto& s : *subs) {
                if (s.id <= last) return protocol_error(c);
                last = s.id;
            }
            c.last_request = h.request_id;
            counters_.batches.fetch_add(1, std::memory_order_relaxed);
            for (const auto& s : *subs) {
                if (!begin_request(c, s.id)) return protocol_error(c);
                if (s.op == opcode::put && !room_for_put(c)) return protocol_error(c);
                switch (s.op) {
                case opcode::put:
                    start_put(c, s.id, s.key, s.meta, s.flags, s.value_len, s.length);
                    break;
                case opcode::get:
                    start_get(c, s.id, s.key, s.offset, s.length);
                    break;
                case opcode::del:
                    do_del(c, s.id, s.key);
                    break;
                default:
                    return protocol_error(c);
                }
            }
            return frame_action::discard;
        }
        case opcode::data:
            // A data frame carries at least one byte of a transfer in progress.
            if (h.body_len || h.payload_len == 0) return protocol_error(c);
            return data_target(c, h.request_id, h.offset, h.payload_len);
        case opcode::attach:
            return protocol_error(c);
        }
        return protocol_error(c);
    }

    /// A well-formed frame that breaks the protocol's rules: the channel stops (pause) and the
    /// connection is failed.
    frame_action protocol_error(connection& c) {
        return malformed(c, make_error_code(errc::protocol));
    }

    /// A body that fails to decode: errc::protocol, or errc::too_large for a length over a cap.
    frame_action malformed(connection& c, std::error_code ec) {
        fail_connection(c, ec);
        return frame_action::pause;
    }

    /// Puts whose value has not fully arrived are bounded per connection (each holds engine
    /// space); a client that opens more without sending their values is broken or hostile.
    bool room_for_put(const connection& c) const noexcept {
        return c.puts.size() + c.dropping.size() < max_pending_puts;
    }
    static constexpr std::size_t max_pending_puts = 4096;

    /// A delete writes a tombstone record and flushes before it is acknowledged.
    void do_del(connection& c, std::uint64_t id, std::span<const std::byte> key) {
        counters_.dels.fetch_add(1, std::memory_order_relaxed);
        if (c.draining) return reply(c, protocol::opcode::del, id, shutting_down());
        if (!owns(key)) return wrong_shard(c, protocol::opcode::del, id);
        auto op = std::make_shared<put_op>();
        op->conn_id = c.id;
        op->id = id;
        op->op = protocol::opcode::del;
        op->info.tenant = c.tenant;
        op->info.key.assign(reinterpret_cast<const char*>(key.data()), key.size());
        op->info.flags = storage::record_flags::tombstone;
        auto t = engine_.reserve_tombstone(storage::index_key(c.tenant, key),
                                           storage::record_header_bytes(op->info), now_ms());
        if (!t) return reply(c, protocol::opcode::del, id, t.error());
        op->ticket = std::move(*t);
        op->info.version = op->ticket.version;
        advance(op);
    }

    /// The answer to a request that arrives while the shard drains (stop()): nothing was done
    /// (status `closed`: "the server is shutting down", docs/protocol.md).
    static std::error_code shutting_down() { return make_error_code(errc::closed); }

    void wrong_shard(connection& c, protocol::opcode op, std::uint64_t id) {
        counters_.wrong_shard.fetch_add(1, std::memory_order_relaxed);
        reply(c, op, id, make_error_code(errc::wrong_shard));
    }

    void do_exists(connection& c, const protocol::frame_header& h,
                   const std::vector<std::span<const std::byte>>& keys) {
        protocol::exists_reply r;
        const bool sizes = h.flags & protocol::flags::want_sizes;
        const bool metas = h.flags & protocol::flags::want_meta;
        const auto now = now_ms();
        std::vector<std::string> meta_store; // keeps metadata alive while encoding
        if (c.draining) return reply(c, protocol::opcode::exists, h.request_id, shutting_down());
        for (const auto& k : keys) {
            if (!owns(k)) return wrong_shard(c, protocol::opcode::exists, h.request_id);
            const auto* e = engine_.find(storage::index_key(c.tenant, k), now);
            r.present.push_back(e != nullptr);
            if (sizes) r.sizes.push_back(e ? e->value_len : 0);
            if (metas) meta_store.push_back(e ? e->meta : std::string());
        }
        for (const auto& m : meta_store)
            r.meta.push_back(std::as_bytes(std::span(m.data(), m.size())));
        counters_.exists_keys.fetch_add(keys.size(), std::memory_order_relaxed);
        auto out = protocol::encode_exists_reply(r, h.flags);
        // Sizes and metadata of thousands of keys may not fit one body: the client splits.
        if (out.size() > cfg_.limits.max_body)
            return reply(c, protocol::opcode::exists, h.request_id,
                         make_error_code(errc::too_large));
        reply(c, protocol::opcode::exists, h.request_id, {}, std::move(out));
    }

    // ---- put --------------------------------------------------------------------------------

    void start_put(connection& c, std::uint64_t id, std::span<const std::byte> key,
                   std::span<const std::byte> meta, std::uint16_t flags, std::uint64_t value_len,
                   std::uint64_t ttl_s) {
        counters_.puts.fetch_add(1, std::memory_order_relaxed);
        std::error_code refuse;
        if (c.draining) {
            refuse = shutting_down(); // its value is read and dropped
        } else if (!owns(key)) {
            refuse = make_error_code(errc::wrong_shard);
            counters_.wrong_shard.fetch_add(1, std::memory_order_relaxed);
        }
        auto op = std::make_shared<put_op>();
        op->conn_id = c.id;
        op->id = id;
        op->flags = flags;
        op->info.tenant = c.tenant;
        op->info.key.assign(reinterpret_cast<const char*>(key.data()), key.size());
        op->info.meta.assign(reinterpret_cast<const char*>(meta.data()), meta.size());
        op->info.flags = (flags & protocol::flags::pin) ? storage::record_flags::pinned : 0;
        op->info.value_len = value_len;
        // The wire carries 64 bits; more than 2^32 s (136 years) is taken as 2^32 s.
        const std::uint64_t ttl = std::min<std::uint64_t>(ttl_s, 0xffffffffu);
        op->info.expires_unix_ms = ttl ? storage::unix_ms() + ttl * 1000 : 0;
        op->info.crcs.reserve(storage::crc_chunks(value_len));
        if (!refuse) {
            // The header's size is known now: CRCs are 4 bytes per chunk of the value.
            auto sized = op->info;
            sized.crcs.resize(storage::crc_chunks(value_len));
            auto t = engine_.reserve(storage::index_key(c.tenant, key), value_len,
                                     flags & protocol::flags::if_absent,
                                     storage::record_header_bytes(sized), now_ms());
            if (t)
                op->ticket = std::move(*t);
            else
                refuse = t.error();
        }
        if (refuse) {
            if (refuse == make_error_code(errc::exists))
                counters_.put_if_absent_hits.fetch_add(1, std::memory_order_relaxed);
            if (value_len > 0) c.dropping[id] = value_len;
            reply(c, protocol::opcode::put, id, refuse);
            return;
        }
        op->info.version = op->ticket.version;
        if (value_len == 0) return advance(op);
        c.puts.emplace(id, std::move(op));
    }

    /// Chooses where the payload of a put or data frame goes: the put's buffers, nowhere (a
    /// refused put), or pause until buffers are free.
    frame_action data_target(connection& c, std::uint64_t id, std::uint64_t offset,
                             std::uint32_t len) {
        if (len == 0) return frame_action::discard;
        if (auto d = c.dropping.find(id); d != c.dropping.end()) {
            if (offset + len >= d->second) c.dropping.erase(d);
            return frame_action::discard;
        }
        auto it = c.puts.find(id);
        if (it == c.puts.end()) return protocol_error(c);
        auto& op = *it->second;
        if (offset != op.received || offset + len > op.ticket.value_len) return protocol_error(c);
        const std::size_t bsize = pool_.buffer_size();
        if (!op.buf) {
            if (over_cap(c, 1)) return frame_action::pause; // resumed when c's buffers return
            op.buf = pool_.acquire();
            if (!op.buf) return wait_for_buffer(c);
            ++c.held;
            op.fill = 0;
            op.buf_value_off = op.received;
        }
        auto& iov = c.ch.payload_target();
        const std::size_t room = bsize - op.fill;
        if (len <= room) {
            iov.push_back({op.buf + op.fill, len});
        } else {
            if (over_cap(c, 1)) return frame_action::pause;
            op.next = pool_.acquire();
            if (!op.next) return wait_for_buffer(c);
            ++c.held;
            iov.push_back({op.buf + op.fill, room});
            iov.push_back({op.next, len - room});
        }
        return frame_action::accept;
    }

    void on_payload(connection& c, const protocol::frame_header& h, bool crc_ok) {
        auto it = c.puts.find(h.request_id);
        if (it == c.puts.end()) return;
        auto op = it->second;
        if (!crc_ok) {
            counters_.checksum_errors.fetch_add(1, std::memory_order_relaxed);
            if (!op->failed) op->failed = make_error_code(errc::checksum);
        }
        const std::size_t bsize = pool_.buffer_size();
        std::size_t len = h.payload_len;
        const std::size_t first = std::min(len, bsize - op->fill);
        account_crc(*op, op->buf + op->fill, first);
        op->fill += first;
        op->received += first;
        len -= first;
        const bool done = op->received + len == op->ticket.value_len;
        if (op->fill == bsize || (done && len == 0)) write_buffer(c, op);
        if (len > 0) { // the straddling part went to op->next
            op->buf = std::exchange(op->next, nullptr);
            op->fill = len;
            op->buf_value_off = op->received;
            account_crc(*op, op->buf, len);
            op->received += len;
            if (op->fill == bsize || done) write_buffer(c, op);
        }
        if (op->received == op->ticket.value_len) {
            c.puts.erase(op->id);
            // The header goes out beside the value's last writes rather than after them: one
            // device round trip per put instead of two. Recovery checks the value's chunk CRCs
            // of every record it scans, so a header whose value never landed is skipped.
            if (!op->failed && op->stage == put_op::phase::value) write_header(op);
            if (op->writes == 0) advance(op);
        }
    }

    /// Extends the per-chunk CRCs of the value with `n` bytes.
    static void account_crc(put_op& op, const std::byte* p, std::size_t n) {
        while (n > 0) {
            const auto k = std::min<std::uint64_t>(n, storage::crc_chunk_size - op.crc_len);
            op.crc = crc32c(p, k, op.crc);
            op.crc_len += k;
            p += k;
            n -= k;
            if (op.crc_len == storage::crc_chunk_size) {
                op.info.crcs.push_back(op.crc);
                op.crc = 0;
                op.crc_len = 0;
            }
        }
    }

    void write_buffer(connection& c, const std::shared_ptr<put_op>& op) {
        std::byte* b = std::exchange(op->buf, nullptr);
        const std::uint32_t bs = store_.block_size();
        const std::size_t len = (op->fill + bs - 1) / bs * bs;
        std::memset(b + op->fill, 0, len - op->fill); // padding to the block size
        if (op->failed) {
            release_buffer(c.id, b);
            return;
        }
        // A whole value in one buffer: its header goes in the buffer's headroom, and header
        // and value go out in one write (the header block sits right before the value).
        const bool whole =
            op->buf_value_off == 0 && op->fill == op->ticket.value_len &&
            pool_.headroom() >= storage::meta_block &&
            op->ticket.header_offset + storage::meta_block == op->ticket.value_offset;
        std::span<const std::byte> out(b, len);
        std::uint64_t at = op->ticket.value_offset + op->buf_value_off;
        if (whole) {
            std::byte* h = b - storage::meta_block;
            build_header(*op, std::span<std::byte, storage::meta_block>(h, storage::meta_block));
            out = {h, storage::meta_block + len};
            at = op->ticket.header_offset;
        }
        if (auto ec = issue_write(op, at, out, b)) {
            op->failed = ec;
            if (whole) op->stage = put_op::phase::value; // the header never went out
            release_buffer(c.id, b);
        }
    }

    /// Returns a buffer to the pool and wakes the connections that paused for one (they retry
    /// at the next update_interest()).
    void give_back(std::byte* b) {
        pool_.release(b);
        for (auto id : buffer_waiters_)
            if (auto* c = find_conn(id)) mark(*c);
        buffer_waiters_.clear();
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

    /// True when connection `c`, holding `more` further buffers, is over its in-flight cap (held
    /// buffers and queued replies) and something of it is under way whose end marks it again
    /// (a store I/O or a frame being sent). Partly filled put buffers alone never stop it:
    /// puts whose chunks interleave would wait on each other forever.
    bool over_cap(const connection& c, std::size_t more = 0) const {
        const std::size_t bytes = (c.held + more) * pool_.buffer_size() + c.ch.queued_bytes();
        if (bytes <= cfg_.connection_inflight_cap) return false;
        if (c.ch.want_write()) return true;
        std::size_t filling = 0;
        for (const auto& [id, op] : c.puts)
            filling += op->buf != nullptr;
        return c.held > filling;
    }

    /// Pauses a connection's channel until a buffer is given back.
    frame_action wait_for_buffer(connection& c) {
        buffer_waiters_.push_back(c.id);
        return frame_action::pause;
    }

    void release_buffer(std::uint64_t conn_id, std::byte* b) {
        give_back(b);
        if (auto* c = find_conn(conn_id)) {
            --c->held;
            mark(*c);
        }
    }

    /// Moves a record write to its next phase once nothing of it is in flight: value written →
    /// header block → flush (durable puts, every delete) → publish and acknowledge.
    void advance(const std::shared_ptr<put_op>& op) {
        if (op->writes != 0 || op->finished) return;
        if (op->buf) release_buffer(op->conn_id, std::exchange(op->buf, nullptr));
        if (op->next) release_buffer(op->conn_id, std::exchange(op->next, nullptr));
        auto* c = find_conn(op->conn_id);
        if (!op->failed && !c) op->failed = make_error_code(errc::closed);
        if (op->failed && op->stage != put_op::phase::value && !op->header_voided) {
            // The header went out beside the value; if it landed, a restart would find the
            // record of a put answered with an error. Zero it first (best effort: on error the
            // value's chunk CRCs, checked at recovery, are what is left).
            op->header_voided = true;
            op->header = std::make_unique<storage::aligned_buffer>(storage::meta_block);
            if (!issue_write(op, op->ticket.header_offset, op->header->span())) return;
        }
        if (op->failed) {
            op->finished = true;
            engine_.abort(std::move(op->ticket));
            if (c) reply(*c, op->op, op->id, op->failed);
            return;
        }
        using phase = typename put_op::phase;
        if (op->stage == phase::value) return write_header(op); // a tombstone or an empty value
        const bool flush =
            op->op == protocol::opcode::del || (op->flags & protocol::flags::durable);
        if (op->stage == phase::header && flush) {
            op->stage = phase::flush;
            const auto tag = ++next_tag_;
            if (auto r = store_.flush(tag); !r) {
                op->failed = r.error();
                return advance(op);
            }
            ++op->writes;
            inflight_io_.emplace(tag, io_ctx{op, nullptr, nullptr});
            return;
        }
        op->finished = true;
        const auto bytes = op->ticket.value_len;
        auto r = engine_.commit(std::move(op->ticket), std::move(op->info));
        if (r && op->op == protocol::opcode::put)
            counters_.bytes_in.fetch_add(bytes, std::memory_order_relaxed);
        reply(*c, op->op, op->id, r ? std::error_code{} : r.error());
    }

    /// Writes the record's header block once every byte of its value has arrived (the last
    /// chunk's CRC is complete then).
    void write_header(const std::shared_ptr<put_op>& op) {
        op->header = std::make_unique<storage::aligned_buffer>(storage::meta_block);
        build_header(*op, op->header->block());
        submit_write(op, op->ticket.header_offset, op->header->span());
    }

    /// Completes the value's chunk CRCs and encodes the record's header block into `out`; the
    /// put is then in its header phase.
    void build_header(put_op& op, std::span<std::byte, storage::meta_block> out) {
        if (op.crc_len > 0) op.info.crcs.push_back(op.crc);
        op.crc_len = 0;
        op.stage = put_op::phase::header;
        engine_.header_block(op.ticket, op.info, out);
    }

    /// Writes `bytes` for a record; a submission failure fails the put.
    void submit_write(const std::shared_ptr<put_op>& op, std::uint64_t offset,
                      std::span<const std::byte> bytes) {
        if (auto ec = issue_write(op, offset, bytes)) {
            op->failed = ec;
            advance(op);
        }
    }

    /// Submits one store write of a record and tracks it (`buf`: the pool buffer it writes
    /// from, returned at completion). Returns the submission error, if any.
    std::error_code issue_write(const std::shared_ptr<put_op>& op, std::uint64_t offset,
                                std::span<const std::byte> bytes, std::byte* buf = nullptr) {
        const auto tag = ++next_tag_;
        if (auto r = store_.write(offset, bytes, tag); !r) return r.error();
        counters_.bytes_written.fetch_add(bytes.size(), std::memory_order_relaxed);
        ++op->writes;
        inflight_io_.emplace(tag, io_ctx{op, nullptr, buf, bytes.size()});
        return {};
    }

    // ---- get --------------------------------------------------------------------------------

    void start_get(connection& c, std::uint64_t id, std::span<const std::byte> key,
                   std::uint64_t offset, std::uint64_t length) {
        counters_.gets.fetch_add(1, std::memory_order_relaxed);
        if (c.draining) return reply(c, protocol::opcode::get, id, shutting_down());
        if (!owns(key)) return wrong_shard(c, protocol::opcode::get, id);
        const auto* e = engine_.find(storage::index_key(c.tenant, key), now_ms());
        if (!e) {
            counters_.misses.fetch_add(1, std::memory_order_relaxed);
            return reply(c, protocol::opcode::get, id, make_error_code(errc::not_found));
        }
        if (offset > e->value_len)
            return reply(c, protocol::opcode::get, id, make_error_code(errc::invalid_argument));
        counters_.hits.fetch_add(1, std::memory_order_relaxed);
        auto op = std::make_shared<get_op>();
        op->conn_id = c.id;
        op->id = id;
        op->entry = *e;
        op->key = storage::index_key(c.tenant, key);
        op->range_off = offset;
        op->range_len =
            length == 0 ? e->value_len - offset : std::min(length, e->value_len - offset);
        const std::uint64_t bsize = pool_.buffer_size();
        op->next_piece = op->range_off / bsize;
        op->end_piece = op->range_len == 0 ? op->next_piece
                                           : (op->range_off + op->range_len + bsize - 1) / bsize;
        engine_.pin(op->entry.region);
        active_gets_.push_back(op);
        if (op->range_len == 0) return send_ready(c, op);
        schedule_reads(op);
    }

    /// Issues reads for the next pieces, up to the per-request read-ahead: pieces being read
    /// and pieces queued on the connection count alike, or a client reading slower than the
    /// store would let one get take the pool (and hold its connection over the in-flight cap).
    void schedule_reads(const std::shared_ptr<get_op>& op) {
        auto* c = find_conn(op->conn_id);
        if (!c) return;
        const std::uint64_t bsize = pool_.buffer_size();
        while (op->next_piece < op->end_piece &&
               op->pieces.size() + op->in_channel < cfg_.buffers_per_request) {
            std::byte* b = pool_.acquire();
            if (!b) {
                waiting_gets_.push_back(op);
                return;
            }
            ++c->held;
            const auto k = op->next_piece++;
            const std::uint64_t start = k * bsize;
            const std::uint64_t len = std::min(bsize, op->entry.value_len - start);
            const std::uint32_t bs = store_.block_size();
            const std::uint64_t aligned = (len + bs - 1) / bs * bs;
            op->pieces.push_back({k, b, false});
            const auto tag = ++next_tag_;
            auto r = store_.read(op->entry.device_offset + start, std::span(b, aligned), tag);
            if (!r) {
                op->pieces.back().ready = true; // fails in send_ready via verification
                fail_get(*c, op, r.error());
                return;
            }
            ++op->in_store;
            counters_.bytes_read.fetch_add(aligned, std::memory_order_relaxed);
            inflight_io_.emplace(tag, io_ctx{nullptr, op, b, aligned});
        }
    }

    /// Verifies the stored CRC chunks of a piece.
    bool verify_piece(const get_op& op, const typename get_op::piece& p) const {
        const std::uint64_t bsize = pool_.buffer_size();
        const std::uint64_t start = p.index * bsize;
        const std::uint64_t len = std::min(bsize, op.entry.value_len - start);
        for (std::uint64_t off = 0; off < len; off += storage::crc_chunk_size) {
            const auto chunk = (start + off) / storage::crc_chunk_size;
            const auto n = std::min<std::uint64_t>(storage::crc_chunk_size, len - off);
            if (chunk >= op.entry.crcs.size() || crc32c(p.buf + off, n) != op.entry.crcs[chunk])
                return false;
        }
        return true;
    }

    /// Sends every piece that is ready, in order; the first carries the reply header.
    void send_ready(connection& c, const std::shared_ptr<get_op>& op) {
        const std::uint64_t bsize = pool_.buffer_size();
        if (op->range_len == 0 && !op->header_sent) {
            auto h = reply_header(protocol::opcode::get, op->id);
            h.length = op->entry.value_len;
            c.ch.send(h, bytes_of(op->entry.meta));
            op->header_sent = true;
            answered(c, op->id);
            finish_get(op);
            return mark(c);
        }
        while (!op->pieces.empty() && op->pieces.front().ready && !op->finished) {
            auto p = op->pieces.front();
            op->pieces.pop_front();
            if (!verify_piece(*op, p)) {
                counters_.checksum_errors.fetch_add(1, std::memory_order_relaxed);
                engine_.drop_corrupt(op->key, op->entry.version); // a miss from now on
                release_buffer(c.id, p.buf);
                // Damaged stored bytes are a counted miss; once part of the value went out,
                // the request fails instead (the client discards what it got).
                return fail_get(
                    c, op, make_error_code(op->header_sent ? errc::checksum : errc::not_found));
            }
            const std::uint64_t pstart = p.index * bsize;
            const std::uint64_t from = std::max(pstart, op->range_off);
            const std::uint64_t to = std::min(pstart + bsize, op->range_off + op->range_len);
            std::span<const std::byte> bytes(p.buf + (from - pstart), to - from);
            protocol::frame_header h;
            std::vector<std::byte> body;
            if (!op->header_sent) {
                h = reply_header(protocol::opcode::get, op->id);
                h.length = op->entry.value_len;
                body = bytes_of(op->entry.meta);
                op->header_sent = true;
            } else {
                h.op = static_cast<std::uint8_t>(protocol::opcode::data) | protocol::reply_bit;
                h.request_id = op->id;
            }
            h.value_len = op->range_len;
            h.offset = from - op->range_off;
            const auto token = ++next_tag_;
            sent_tokens_.emplace(token, io_ctx{nullptr, op, p.buf});
            ++op->in_channel;
            c.ch.send(h, std::move(body), bytes, token);
            counters_.bytes_out.fetch_add(bytes.size(), std::memory_order_relaxed);
            if (to == op->range_off + op->range_len) {
                answered(c, op->id);
                op->finished = true;
            }
        }
        mark(c);
        flush(c);
    }

    static std::vector<std::byte> bytes_of(const std::string& s) {
        const auto* p = reinterpret_cast<const std::byte*>(s.data());
        return {p, p + s.size()};
    }

    /// A failure after the reply header went out is reported in a data frame with a status.
    void fail_get(connection& c, const std::shared_ptr<get_op>& op, std::error_code ec) {
        if (op->finished) return;
        if (!op->header_sent) {
            reply(c, protocol::opcode::get, op->id, ec);
        } else {
            auto h = reply_header(protocol::opcode::data, op->id, ec);
            h.value_len = op->range_len;
            c.ch.send(h, {});
            answered(c, op->id);
            mark(c);
        }
        op->header_sent = op->finished = true;
        for (auto& p : op->pieces)
            if (p.ready) release_buffer(c.id, p.buf);
        std::erase_if(op->pieces, [](const auto& p) { return p.ready; });
        finish_get(op);
    }

    void abandon_get(get_op& op) {
        op.finished = true;
        for (auto& p : op.pieces)
            if (p.ready) give_back(p.buf);
        std::erase_if(op.pieces, [](const auto& p) { return p.ready; });
    }

    void release_piece_buffer(get_op& op, std::byte* b) {
        give_back(b);
        --op.in_channel;
    }

    /// Unpins and forgets a get once nothing of it is in flight.
    void finish_get(const std::shared_ptr<get_op>& op) {
        if (op->in_store || op->in_channel || !op->pieces.empty()) return;
        if (!op->finished && op->header_sent == false) return;
        engine_.unpin(op->entry.region);
        std::erase(active_gets_, op);
    }

    void on_sent(std::uint64_t token) {
        auto it = sent_tokens_.find(token);
        if (it == sent_tokens_.end()) return;
        auto ctx = std::move(it->second);
        sent_tokens_.erase(it);
        auto& op = ctx.get;
        --op->in_channel;
        release_buffer(op->conn_id, ctx.buf);
        if (op->finished) return finish_get(op);
        schedule_reads(op);
    }

    // ---- store completions ------------------------------------------------------------------

    /// Handles one batch of store completions and retries the gets that waited for buffers.
    /// Bounded: handling a completion submits more I/O (a sent piece schedules the next read),
    /// which a store may complete at once, so draining until empty could stream a whole value
    /// while other requests wait for epoll_wait(). Returns true when more may be ready now.
    bool drain_store() {
        while (!meta_io_.stash().empty()) {
            auto stashed = std::move(meta_io_.stash());
            meta_io_.stash().clear();
            for (const auto& c : stashed)
                on_io(c);
        }
        io_completion done[64];
        const std::size_t n = store_.poll(done);
        for (std::size_t i = 0; i < n; ++i)
            on_io(done[i]);
        if (waiting_gets_.empty() || pool_.available() == 0) return n > 0;
        auto waiting = std::move(waiting_gets_);
        waiting_gets_.clear();
        for (auto& g : waiting)
            if (!g->finished) schedule_reads(g);
        return true;
    }

    void on_io(io_completion done) {
        auto it = inflight_io_.find(done.tag);
        if (it == inflight_io_.end()) return;
        auto ctx = std::move(it->second);
        inflight_io_.erase(it);
        // A short transfer is an error here: stores complete whole operations (concept rule 2).
        if (done.res >= 0 && static_cast<std::uint64_t>(done.res) != ctx.expect)
            done = {done.tag, -EIO};
        if (ctx.put) {
            auto& op = ctx.put;
            --op->writes;
            if (ctx.buf) release_buffer(op->conn_id, ctx.buf);
            if (done.res < 0 && !op->failed) op->failed = errno_code(static_cast<int>(done.res));
            if (op->received == op->ticket.value_len || !find_conn(op->conn_id)) advance(op);
            return;
        }
        auto& op = ctx.get;
        --op->in_store;
        auto* c = find_conn(op->conn_id);
        auto p = std::find_if(op->pieces.begin(), op->pieces.end(),
                              [&](const auto& x) { return x.buf == ctx.buf; });
        if (!c || op->finished) {
            if (p != op->pieces.end()) op->pieces.erase(p);
            give_back(ctx.buf);
            if (c) {
                --c->held;
                mark(*c);
            }
            return finish_get(op);
        }
        if (done.res < 0) {
            op->pieces.erase(p);
            release_buffer(c->id, ctx.buf);
            return fail_get(*c, op, errno_code(static_cast<int>(done.res)));
        }
        p->ready = true;
        send_ready(*c, op);
    }

    std::vector<std::byte> stats_body_() const {
        auto named = counters_.snapshot(index_);
        std::vector<std::pair<std::string_view, std::uint64_t>> view;
        view.reserve(named.size());
        for (const auto& [n, v] : named)
            view.emplace_back(n, v);
        return protocol::encode_stats(view);
    }

    std::uint32_t index_, count_;
    const server_config& cfg_;
    Store store_;
    store_meta_io<Store> meta_io_;
    storage::engine engine_;
    buffer_pool pool_;
    shard_counters& counters_;
    unique_fd epoll_, wake_;
    std::atomic<bool> stopping_{false}, drained_{false}, released_{false};
    std::mutex inbox_mutex_;
    std::deque<std::unique_ptr<attached_connection<stream_type>>> inbox_;
    std::unordered_map<std::uint64_t, std::unique_ptr<connection>> conns_;
    std::vector<std::uint64_t> dirty_;
    std::vector<std::uint64_t> doomed_;
    std::vector<std::uint64_t> buffer_waiters_; // connections paused until a buffer is free
    std::uint64_t next_conn_id_ = 0;
    std::uint64_t next_tag_ = 0;
    std::unordered_map<std::uint64_t, io_ctx> inflight_io_;
    std::unordered_map<std::uint64_t, io_ctx> sent_tokens_;
    std::vector<std::shared_ptr<get_op>> active_gets_;
    std::vector<std::shared_ptr<get_op>> waiting_gets_;
};

} // namespace memkv::detail
