// SPDX-License-Identifier: Apache-2.0
// memkv::client<Transport>: a thread-safe client that shards keys across servers.
#pragma once

#include <memkv/client_types.hpp>
#include <memkv/concepts.hpp>
#include <memkv/detail/frame_channel.hpp>
#include <memkv/detail/handshake_io.hpp>
#include <memkv/detail/socket.hpp>
#include <memkv/protocol/messages.hpp>
#include <memkv/protocol/placement.hpp>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <set>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace memkv {

/// A batch in flight: its operations complete together.
class batch_state;

/// A client of a set of memkv servers. Keys are placed by the function in docs/protocol.md
/// (rendezvous over servers, then a shard); the client keeps one connection per (server, shard).
///
/// Thread-safe: any number of threads may call it at once. One progress thread does all network
/// I/O. Completions are reported by callback (on the progress thread), by polling
/// (`poll_completed()`), or by the eventfd `completion_fd()` (readable while completed batches
/// wait to be polled). After fork() the child must create its own client: every call on the
/// parent's fails with errc::forked.
///
/// Buffers: values given to put and fragments given to get are borrowed until the operation
/// completes. A completed (or failed, or timed-out) operation never touches them again: a
/// connection is closed before a timeout is reported, so a late reply cannot land in them.
template <transport Transport>
class client {
    using stream_type = typename Transport::stream;

public:
    /// Completion callback of an asynchronous batch; runs on the progress thread.
    using callback = std::function<void(std::span<operation>)>;

    static result<std::unique_ptr<client>> create(client_config cfg) {
        if (cfg.servers.empty()) {
            if (const char* env = std::getenv("MEMKV_SERVERS")) cfg.servers = split(env);
        }
        if (cfg.servers.empty()) return errc::invalid_argument;
        if (!cfg.key) {
            auto ring = auth::key_ring::from_environment();
            if (!ring) return ring.error();
            if (!ring->empty()) cfg.key = ring->entries().front();
        }
        std::unique_ptr<client> c(new client(std::move(cfg)));
        MEMKV_TRY(c->init());
        return c;
    }

    client(const client&) = delete;
    client& operator=(const client&) = delete;
    ~client() {
        if (::getpid() != pid_) { // a forked child must not join the parent's thread
            (void)progress_.release(); // the thread does not exist here: leak its handle
            return;
        }
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        wake();
        if (progress_ && progress_->joinable()) progress_->join();
    }

    // ---- asynchronous batch API -------------------------------------------------------------

    /// Submits a batch. `ops` must stay alive (and its buffers valid) until completion, which is
    /// reported through `cb` if given, else through poll_completed() / completion_fd(). Waits
    /// while more than max_inflight operations are in flight.
    result<std::uint64_t> submit(std::span<operation> ops, callback cb = {}) {
        if (::getpid() != pid_) return errc::forked;
        auto b = std::make_shared<batch>();
        b->ops = ops;
        b->cb = std::move(cb);
        b->remaining = ops.size();
        std::unique_lock lock(mutex_);
        b->id = ++next_batch_;
        if (std::this_thread::get_id() != progress_id_)
            inflight_cv_.wait(lock, [&] {
                return stopping_ || inflight_ + ops.size() <= cfg_.max_inflight || inflight_ == 0;
            });
        if (stopping_) return errc::closed;
        inflight_ += ops.size();
        submitted_.push_back(b);
        lock.unlock();
        wake();
        return b->id;
    }

    /// Ids of batches completed since the last call (those submitted without a callback).
    std::vector<std::uint64_t> poll_completed() {
        std::lock_guard lock(mutex_);
        std::uint64_t v;
        [[maybe_unused]] auto r = ::read(done_fd_.get(), &v, sizeof(v));
        return std::exchange(completed_, {});
    }

    /// Readable while completed batches wait for poll_completed().
    int completion_fd() const noexcept { return done_fd_.get(); }

    /// Blocks until batch `id` has completed (it is then also removed from poll_completed()).
    void wait(std::uint64_t id) {
        std::unique_lock lock(mutex_);
        done_cv_.wait(lock, [&] { return finished_.contains(id); });
        finished_.erase(id);
        std::erase(completed_, id);
    }

    /// Submits and waits.
    result<void> run(std::span<operation> ops) {
        auto id = submit(ops);
        if (!id) return id.error();
        wait(*id);
        return {};
    }

    // ---- synchronous convenience ------------------------------------------------------------

    /// Stores `value` under `key`. An if_absent put of an existing key succeeds without writing.
    result<void> put(std::string_view key, std::span<const std::byte> value,
                     const put_options& opt = {}) {
        operation op;
        op.kind = op_kind::put;
        op.key = key;
        op.value = value;
        op.options = opt;
        MEMKV_TRY(run({&op, 1}));
        if (op.status == make_error_code(errc::exists) && opt.if_absent) return {};
        return op.status ? result<void>(op.status) : result<void>();
    }

    /// The value under `key`; errc::not_found on a miss. `meta` receives its metadata.
    result<std::vector<std::byte>> get(std::string_view key,
                                       std::vector<std::byte>* meta = nullptr) {
        operation op;
        op.kind = op_kind::get;
        op.key = key;
        MEMKV_TRY(run({&op, 1}));
        if (op.status) return op.status;
        if (meta) *meta = std::move(op.meta_out);
        return std::move(op.data);
    }

    /// Reads `length` bytes (0 = to the end) from `offset` of the value straight into the
    /// fragments, in order (zero-copy scatter). Returns the bytes written.
    result<std::uint64_t> get_into(std::string_view key, std::vector<std::span<std::byte>> fragments,
                                   std::uint64_t offset = 0, std::uint64_t length = 0) {
        operation op;
        op.kind = op_kind::get;
        op.key = key;
        op.fragments = std::move(fragments);
        op.offset = offset;
        op.length = length;
        MEMKV_TRY(run({&op, 1}));
        if (op.status) return op.status;
        return op.size;
    }

    /// A byte range of the value, copied into a new vector.
    result<std::vector<std::byte>> get_range(std::string_view key, std::uint64_t offset,
                                             std::uint64_t length) {
        operation op;
        op.kind = op_kind::get;
        op.key = key;
        op.offset = offset;
        op.length = length;
        MEMKV_TRY(run({&op, 1}));
        if (op.status) return op.status;
        return std::move(op.data);
    }

    /// Whether each key is present (one round trip per involved shard).
    result<std::vector<bool>> exists(std::span<const std::string> keys) {
        std::vector<operation> ops(keys.size());
        for (std::size_t i = 0; i < keys.size(); ++i) {
            ops[i].kind = op_kind::exists;
            ops[i].key = keys[i];
        }
        MEMKV_TRY(run(ops));
        std::vector<bool> out(keys.size());
        for (std::size_t i = 0; i < keys.size(); ++i) {
            if (ops[i].status) return ops[i].status;
            out[i] = ops[i].exists;
        }
        return out;
    }

    /// Deletes `key`; errc::not_found if it was absent.
    result<void> del(std::string_view key) {
        operation op;
        op.kind = op_kind::del;
        op.key = key;
        MEMKV_TRY(run({&op, 1}));
        return op.status ? result<void>(op.status) : result<void>();
    }

    /// The number of leading keys that are all present (for prefix-cache lookups): one exists
    /// round trip per involved shard.
    result<std::size_t> match_prefix(std::span<const std::string> keys) {
        auto e = exists(keys);
        if (!e) return e.error();
        std::size_t n = 0;
        while (n < e->size() && (*e)[n]) ++n;
        return n;
    }

    /// Server counters, gathered from every shard of every server, names prefixed by
    /// "serverI." (I = index in the server list).
    result<std::vector<server_stats_entry>> stats() {
        if (::getpid() != pid_) return errc::forked;
        auto req = std::make_shared<stats_request>();
        {
            std::lock_guard lock(mutex_);
            stats_requests_.push_back(req);
        }
        wake();
        std::unique_lock lock(mutex_);
        done_cv_.wait(lock, [&] { return req->done; });
        if (req->error) return req->error;
        return std::move(req->entries);
    }

    /// Sends a ping on every connection and waits for the answers.
    result<void> ping() {
        auto s = stats();
        if (!s) return s.error();
        return {};
    }

    /// Registers caller memory for zero-copy transfers and returns a handle. Over TCP and Unix
    /// sockets every buffer is already zero-copy (GET payloads are read from the socket straight
    /// into the caller's fragments), so this only validates and records the range; transports
    /// with out-of-band payloads (shm, RDMA) register it with the server or the device.
    result<std::uint64_t> register_buffer(std::span<std::byte> memory) {
        if (::getpid() != pid_) return errc::forked;
        if (memory.empty()) return errc::invalid_argument;
        std::lock_guard lock(mutex_);
        registered_.emplace(++next_registration_, memory);
        return next_registration_;
    }

    /// Forgets a registration. The memory must not be in use by an operation in flight.
    result<void> unregister_buffer(std::uint64_t handle) {
        std::lock_guard lock(mutex_);
        return registered_.erase(handle) ? result<void>() : result<void>(errc::invalid_argument);
    }

    /// The index of the server owning `key` and its shard there (after key_prefix).
    std::pair<std::size_t, std::uint32_t> locate(std::string_view key) const {
        const auto full = cfg_.key_prefix + std::string(key);
        const auto h = key_hash(std::string_view(full));
        const auto s = placement_.server_for(h);
        return {s, shard_for(h, std::max<std::uint32_t>(1, servers_[s]->shard_count))};
    }

    std::size_t server_count() const noexcept { return servers_.size(); }

    /// Sends one raw request frame to (server, shard) and waits for the reply status. For tests
    /// of server-side checks (wrong_shard): the key is sent as given, without the prefix.
    result<std::uint32_t> raw_get_status(std::size_t server, std::uint32_t shard,
                                         std::string_view key) {
        operation op;
        op.kind = op_kind::get;
        op.key = key;
        auto b = std::make_shared<batch>();
        b->ops = {&op, 1};
        b->remaining = 1;
        b->raw_target = {server, shard};
        {
            std::lock_guard lock(mutex_);
            b->id = ++next_batch_;
            ++inflight_;
            submitted_.push_back(b);
        }
        wake();
        wait(b->id);
        return op.status ? static_cast<std::uint32_t>(op.status.value()) : 0u;
    }

private:
    struct batch {
        std::uint64_t id = 0;
        std::span<operation> ops;
        callback cb;
        std::size_t remaining = 0;
        std::optional<std::pair<std::size_t, std::uint32_t>> raw_target;
    };

    struct stats_request {
        std::vector<server_stats_entry> entries;
        std::error_code error;
        std::size_t remaining = 0;
        bool done = false;
    };

    /// One request on a connection.
    struct request {
        std::shared_ptr<batch> b;
        operation* op = nullptr;
        std::string wire_key;
        std::uint64_t sent = 0;                // put: payload bytes queued so far
        std::vector<std::byte> owned;          // get without fragments
        std::vector<std::span<std::byte>> dst; // get destination
        std::uint64_t received = 0;
        std::uint64_t expect = 0;
        bool failed = false;
        detail::clock::time_point deadline;
        std::shared_ptr<stats_request> stats;
        std::size_t exists_first = 0;          // exists frames: ops [first, first + n)
        std::vector<operation*> exists_ops;
        std::shared_ptr<batch> exists_batch;
    };

    struct connection;
    struct server_state {
        std::string endpoint_text;
        typename Transport::endpoint endpoint;
        std::uint32_t shard_count = 0;
        std::vector<std::unique_ptr<connection>> shards;
        detail::clock::time_point retry_at{};
        std::chrono::milliseconds backoff{0};
    };

    struct connection {
        client* owner = nullptr;
        std::size_t server = 0;
        std::uint32_t shard = 0;
        std::unique_ptr<detail::frame_channel<stream_type>> ch;
        std::uint64_t next_id = 1;
        std::map<std::uint64_t, request> inflight;
        std::deque<std::uint64_t> put_queue; // puts with payload still to queue
        bool attached = false;
        std::uint32_t interest = 0;

        detail::frame_action on_frame(const protocol::frame_header& h,
                                      std::span<const std::byte> body) {
            return owner->on_frame(*this, h, body);
        }
        void on_payload(const protocol::frame_header& h, bool crc_ok) {
            owner->on_payload(*this, h, crc_ok);
        }
    };

    explicit client(client_config cfg) : cfg_(std::move(cfg)), placement_(cfg_.servers) {}

    static std::vector<std::string> split(std::string_view s) {
        std::vector<std::string> out;
        while (!s.empty()) {
            auto c = s.find(',');
            auto part = s.substr(0, c);
            if (!part.empty()) out.emplace_back(part);
            if (c == std::string_view::npos) break;
            s.remove_prefix(c + 1);
        }
        return out;
    }

    result<void> init() {
        pid_ = ::getpid();
        epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
        wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        done_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!epoll_ || !wake_fd_ || !done_fd_) return errno_code(errno);
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = wake_tag;
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_fd_.get(), &ev);
        for (const auto& text : cfg_.servers) {
            auto ep = Transport::parse(text);
            if (!ep) return ep.error();
            auto s = std::make_unique<server_state>();
            s->endpoint_text = text;
            s->endpoint = std::move(*ep);
            servers_.push_back(std::move(s));
        }
        // Connect eagerly so that configuration errors show at once; a server that is down
        // now is retried later and its requests fail with errc::unavailable meanwhile.
        std::error_code first_error;
        for (std::size_t i = 0; i < servers_.size(); ++i)
            if (auto r = connect_server(i); !r && !first_error) first_error = r.error();
        if (first_error && servers_.size() == 1) return first_error;
        progress_ = std::make_unique<std::thread>([this] { progress_loop(); });
        progress_id_ = progress_->get_id();
        return {};
    }

    void wake() noexcept {
        std::uint64_t one = 1;
        [[maybe_unused]] auto r = ::write(wake_fd_.get(), &one, sizeof(one));
    }

    /// Opens one connection per shard of server `i` (blocking, bounded by connect_timeout).
    result<void> connect_server(std::size_t i) {
        auto& s = *servers_[i];
        const auto key = cfg_.key ? &*cfg_.key : nullptr;
        auto open = [&](std::uint32_t shard) -> result<std::unique_ptr<connection>> {
            const auto deadline = detail::clock::now() + cfg_.connect_timeout;
            auto st = Transport::connect(s.endpoint, cfg_.connect_timeout);
            if (!st) return st.error();
            auto sess = detail::client_handshake(*st, key, st->kind(), deadline);
            if (!sess) return sess.error();
            auto c = std::make_unique<connection>();
            c->owner = this;
            c->server = i;
            c->shard = shard;
            s.shard_count = sess->shard_count;
            c->ch = std::make_unique<detail::frame_channel<stream_type>>(
                std::move(*st), std::move(sess->send_mac), std::move(sess->recv_mac),
                cfg_.limits);
            // attach and wait for its reply
            protocol::frame_header h;
            h.op = static_cast<std::uint8_t>(protocol::opcode::attach);
            h.request_id = c->next_id++;
            h.aux = shard;
            c->ch->send(h, {});
            while (c->ch->want_write()) {
                MEMKV_TRY(c->ch->flush());
                if (c->ch->want_write())
                    MEMKV_TRY(detail::wait_fd(c->ch->stream().fd(), POLLOUT, deadline));
            }
            while (!c->attached) {
                MEMKV_TRY(detail::wait_fd(c->ch->stream().fd(), POLLIN, deadline));
                attach_status_ = ~0u;
                MEMKV_TRY(c->ch->on_readable(*c));
                if (attach_status_ != ~0u && attach_status_ != 0)
                    return make_error_code(static_cast<errc>(attach_status_));
            }
            return c;
        };
        s.shards.clear();
        auto first = open(0);
        if (!first) return server_down(i, first.error());
        s.shards.push_back(std::move(*first));
        for (std::uint32_t k = 1; k < s.shard_count; ++k) {
            auto c = open(k);
            if (!c) return server_down(i, c.error());
            s.shards.push_back(std::move(*c));
        }
        for (auto& c : s.shards) watch(*c);
        s.backoff = std::chrono::milliseconds(0);
        return {};
    }

    result<void> server_down(std::size_t i, std::error_code ec) {
        auto& s = *servers_[i];
        for (auto& c : s.shards) close_connection(*c, make_error_code(errc::unavailable));
        s.shards.clear();
        s.backoff = std::min(std::chrono::milliseconds(500),
                             std::max(std::chrono::milliseconds(10), s.backoff * 2));
        s.retry_at = detail::clock::now() + s.backoff;
        return ec;
    }

    void watch(connection& c) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.ptr = &c;
        c.interest = EPOLLIN;
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c.ch->stream().fd(), &ev);
    }

    void update_interest(connection& c) {
        if (!c.ch) return;
        std::uint32_t want = EPOLLIN | (c.ch->want_write() ? EPOLLOUT : 0u);
        if (want == c.interest) return;
        epoll_event ev{};
        ev.events = want;
        ev.data.ptr = &c;
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.ch->stream().fd(), &ev);
        c.interest = want;
    }

    // ---- progress thread --------------------------------------------------------------------

    static constexpr std::uint64_t wake_tag = 1;

    void progress_loop() {
        epoll_event events[64];
        for (;;) {
            std::deque<std::shared_ptr<batch>> in;
            std::deque<std::shared_ptr<stats_request>> st;
            {
                std::lock_guard lock(mutex_);
                if (stopping_) break;
                in.swap(submitted_);
                st.swap(stats_requests_);
            }
            for (auto& b : in) dispatch(b);
            for (auto& s : st) dispatch_stats(s);
            for (auto& s : servers_)
                for (auto& c : s->shards) pump(*c);
            int n = ::epoll_wait(epoll_.get(), events, 64, 10);
            for (int i = 0; i < n; ++i) {
                if (events[i].data.u64 == wake_tag) {
                    std::uint64_t v;
                    [[maybe_unused]] auto r = ::read(wake_fd_.get(), &v, sizeof(v));
                    continue;
                }
                auto& c = *static_cast<connection*>(events[i].data.ptr);
                if (!c.ch) continue;
                if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                    if (auto r = c.ch->on_readable(c); !r) {
                        fail_server(c.server, r.error());
                        continue;
                    }
                }
                if (c.ch) pump(c);
            }
            expire();
        }
        for (std::size_t i = 0; i < servers_.size(); ++i)
            for (auto& c : servers_[i]->shards) close_connection(*c, make_error_code(errc::closed));
        // Batches submitted but never dispatched complete too: nothing is left waiting.
        std::deque<std::shared_ptr<batch>> left;
        std::deque<std::shared_ptr<stats_request>> left_stats;
        {
            std::lock_guard lock(mutex_);
            left.swap(submitted_);
            left_stats.swap(stats_requests_);
        }
        for (auto& b : left)
            for (auto& op : b->ops) complete(b, op, make_error_code(errc::closed));
        for (auto& st : left_stats) {
            st->error = make_error_code(errc::closed);
            finish_stats(st);
        }
    }

    /// Queues payload chunks of pending puts (round robin, a few chunks ahead) and writes.
    void pump(connection& c) {
        if (!c.ch) return;
        while (!c.put_queue.empty() && c.ch->queued_bytes() < 2 * cfg_.chunk_size) {
            const auto id = c.put_queue.front();
            c.put_queue.pop_front();
            auto it = c.inflight.find(id);
            if (it == c.inflight.end()) continue;
            auto& r = it->second;
            const auto v = r.op->value;
            const auto n = std::min<std::uint64_t>(cfg_.chunk_size, v.size() - r.sent);
            protocol::frame_header h;
            h.op = static_cast<std::uint8_t>(protocol::opcode::data);
            h.request_id = id;
            h.value_len = v.size();
            h.offset = r.sent;
            c.ch->send(h, {}, v.subspan(r.sent, n));
            r.sent += n;
            if (r.sent < v.size()) c.put_queue.push_back(id);
        }
        if (auto w = c.ch->flush(); !w) return fail_server(c.server, w.error());
        c.ch->sent_tokens().clear();
        update_interest(c);
    }

    connection* conn_for(std::size_t server, std::uint32_t shard) {
        auto& s = *servers_[server];
        if (s.shards.empty()) {
            if (detail::clock::now() < s.retry_at) return nullptr;
            if (!connect_server(server)) return nullptr;
        }
        return shard < s.shards.size() ? s.shards[shard].get() : nullptr;
    }

    void dispatch(const std::shared_ptr<batch>& b) {
        if (b->ops.empty()) return finish_batch(b);
        // Group by connection: one batch frame (put/get/del) and one exists frame per
        // connection and chunk of max_batch.
        std::map<connection*, std::vector<operation*>> groups, exists_groups;
        for (auto& op : b->ops) {
            op.status = {};
            std::size_t srv;
            std::uint32_t shard;
            if (b->raw_target) {
                std::tie(srv, shard) = *b->raw_target;
            } else {
                if (op.key.empty() || op.key.size() + cfg_.key_prefix.size() > cfg_.limits.max_key) {
                    complete(b, op, make_error_code(errc::invalid_argument));
                    continue;
                }
                std::tie(srv, shard) = locate_unchecked(op.key);
            }
            connection* c = conn_for(srv, shard);
            if (!c) {
                complete(b, op, make_error_code(errc::unavailable));
                continue;
            }
            (op.kind == op_kind::exists ? exists_groups : groups)[c].push_back(&op);
        }
        for (auto& [c, ops] : groups) send_batch(*c, b, ops);
        for (auto& [c, ops] : exists_groups) send_exists(*c, b, ops);
    }

    std::pair<std::size_t, std::uint32_t> locate_unchecked(const std::string& key) {
        const auto full = cfg_.key_prefix + key;
        const auto h = key_hash(std::string_view(full));
        const auto s = placement_.server_for(h);
        return {s, shard_for(h, std::max<std::uint32_t>(1, servers_[s]->shard_count))};
    }

    std::string wire_key(const std::shared_ptr<batch>& b, const operation& op) const {
        return b->raw_target ? op.key : cfg_.key_prefix + op.key;
    }

    static std::span<const std::byte> bytes(const std::string& s) {
        return std::as_bytes(std::span(s.data(), s.size()));
    }

    void send_batch(connection& c, const std::shared_ptr<batch>& b, std::vector<operation*>& ops) {
        const auto deadline = detail::clock::now() + cfg_.request_timeout;
        for (std::size_t first = 0; first < ops.size(); first += cfg_.limits.max_batch) {
            const std::size_t n = std::min<std::size_t>(cfg_.limits.max_batch, ops.size() - first);
            std::vector<protocol::sub_request> subs;
            subs.reserve(n);
            const auto batch_id = c.next_id++;
            std::vector<std::uint64_t> puts;
            for (std::size_t i = first; i < first + n; ++i) {
                auto& op = *ops[i];
                const auto id = c.next_id++;
                request r;
                r.b = b;
                r.op = &op;
                r.wire_key = wire_key(b, op);
                r.deadline = deadline;
                protocol::sub_request s;
                s.id = id;
                switch (op.kind) {
                case op_kind::put:
                    s.op = protocol::opcode::put;
                    s.value_len = op.value.size();
                    s.length = op.options.ttl_seconds;
                    s.meta = op.options.meta;
                    s.flags = (op.options.if_absent ? protocol::flags::if_absent : 0) |
                              (op.options.durable ? protocol::flags::durable : 0) |
                              (op.options.pin ? protocol::flags::pin : 0);
                    if (!op.value.empty()) puts.push_back(id);
                    break;
                case op_kind::get:
                    s.op = protocol::opcode::get;
                    s.offset = op.offset;
                    s.length = op.length;
                    break;
                default: s.op = protocol::opcode::del; break;
                }
                auto [it, ok] = c.inflight.emplace(id, std::move(r));
                s.key = bytes(it->second.wire_key);
                subs.push_back(s);
            }
            protocol::frame_header h;
            h.op = static_cast<std::uint8_t>(protocol::opcode::batch);
            h.request_id = batch_id;
            h.aux = static_cast<std::uint32_t>(n);
            c.ch->send(h, protocol::encode_batch(subs));
            for (auto id : puts) c.put_queue.push_back(id);
        }
        pump(c);
    }

    void send_exists(connection& c, const std::shared_ptr<batch>& b, std::vector<operation*>& ops) {
        const auto deadline = detail::clock::now() + cfg_.request_timeout;
        for (std::size_t first = 0; first < ops.size(); first += cfg_.limits.max_batch) {
            const std::size_t n = std::min<std::size_t>(cfg_.limits.max_batch, ops.size() - first);
            std::vector<std::string> keys;
            keys.reserve(n);
            request r;
            r.b = b;
            r.deadline = deadline;
            for (std::size_t i = first; i < first + n; ++i) {
                keys.push_back(wire_key(b, *ops[i]));
                r.exists_ops.push_back(ops[i]);
            }
            std::vector<std::span<const std::byte>> views;
            for (const auto& k : keys) views.push_back(bytes(k));
            protocol::frame_header h;
            h.op = static_cast<std::uint8_t>(protocol::opcode::exists);
            h.request_id = c.next_id++;
            h.aux = static_cast<std::uint32_t>(n);
            h.flags = protocol::flags::want_sizes | protocol::flags::want_meta;
            c.inflight.emplace(h.request_id, std::move(r));
            c.ch->send(h, protocol::encode_exists_request(views));
        }
        pump(c);
    }

    void dispatch_stats(const std::shared_ptr<stats_request>& s) {
        for (std::size_t i = 0; i < servers_.size(); ++i) {
            for (std::uint32_t k = 0; k < std::max<std::uint32_t>(1, servers_[i]->shard_count); ++k) {
                connection* c = conn_for(i, k);
                if (!c) {
                    s->error = make_error_code(errc::unavailable);
                    continue;
                }
                request r;
                r.stats = s;
                r.deadline = detail::clock::now() + cfg_.request_timeout;
                protocol::frame_header h;
                h.op = static_cast<std::uint8_t>(protocol::opcode::stats);
                h.request_id = c->next_id++;
                c->inflight.emplace(h.request_id, std::move(r));
                c->ch->send(h, {});
                ++s->remaining;
                pump(*c);
            }
        }
        if (s->remaining == 0) finish_stats(s);
    }

    void finish_stats(const std::shared_ptr<stats_request>& s) {
        std::lock_guard lock(mutex_);
        s->done = true;
        done_cv_.notify_all();
    }

    // ---- replies ----------------------------------------------------------------------------

    detail::frame_action on_frame(connection& c, const protocol::frame_header& h,
                                  std::span<const std::byte> body) {
        using protocol::opcode;
        if (!h.is_reply()) return protocol_violation(c);
        if (h.code() == opcode::attach) {
            attach_status_ = h.status();
            c.attached = h.status() == 0;
            return detail::frame_action::discard;
        }
        auto it = c.inflight.find(h.request_id);
        if (it == c.inflight.end()) return protocol_violation(c);
        auto& r = it->second;
        const std::error_code status =
            h.status() ? make_error_code(static_cast<errc>(h.status())) : std::error_code{};
        switch (h.code()) {
        case opcode::put:
        case opcode::del:
            done(c, it, status);
            return detail::frame_action::discard;
        case opcode::stats: {
            auto s = r.stats;
            if (!s) return protocol_violation(c);
            if (auto d = protocol::decode_stats(body)) {
                const std::string p = "server" + std::to_string(c.server) + ".";
                std::lock_guard lock(mutex_);
                for (auto& [name, v] : *d) s->entries.push_back({p + name, v});
            } else {
                s->error = d.error();
            }
            c.inflight.erase(it);
            if (--s->remaining == 0) finish_stats(s);
            return detail::frame_action::discard;
        }
        case opcode::exists: {
            const auto n = static_cast<std::uint32_t>(r.exists_ops.size());
            if (status) {
                for (auto* op : r.exists_ops) complete(r.b, *op, status);
            } else {
                auto d = protocol::decode_exists_reply(
                    n, protocol::flags::want_sizes | protocol::flags::want_meta, body, cfg_.limits);
                if (!d) return protocol_violation(c);
                for (std::uint32_t i = 0; i < n; ++i) {
                    auto& op = *r.exists_ops[i];
                    op.exists = d->present[i];
                    op.size = d->sizes.empty() ? 0 : d->sizes[i];
                    if (!d->meta.empty()) op.meta_out.assign(d->meta[i].begin(), d->meta[i].end());
                    complete(r.b, op, {});
                }
            }
            c.inflight.erase(it);
            return detail::frame_action::discard;
        }
        case opcode::get: {
            if (status || (h.payload_len == 0 && h.value_len == 0)) {
                if (!status) {
                    r.op->meta_out.assign(body.begin(), body.end());
                    r.op->value_size = h.length;
                    r.op->size = 0;
                }
                done(c, it, status);
                return detail::frame_action::discard;
            }
            r.op->meta_out.assign(body.begin(), body.end());
            r.op->value_size = h.length;
            r.expect = h.value_len;
            if (r.op->fragments.empty()) {
                r.owned.resize(h.value_len);
                r.dst = {std::span<std::byte>(r.owned)};
            } else {
                r.dst = r.op->fragments;
                std::uint64_t cap = 0;
                for (auto f : r.dst) cap += f.size();
                if (cap < h.value_len) r.failed = true, r.op->status = make_error_code(errc::too_large);
            }
            return payload(c, r, h);
        }
        case opcode::data: {
            if (h.status()) { // the server failed midway
                done(c, it, status);
                return detail::frame_action::discard;
            }
            if (!r.op || r.expect == 0) return protocol_violation(c);
            return payload(c, r, h);
        }
        default: return protocol_violation(c);
        }
    }

    /// Maps a payload frame's bytes into the request's destination fragments.
    detail::frame_action payload(connection& c, request& r, const protocol::frame_header& h) {
        if (h.offset != r.received || h.value_len != r.expect) return protocol_violation(c);
        if (r.failed) return detail::frame_action::discard;
        auto& iov = c.ch->payload_target();
        std::uint64_t skip = h.offset, left = h.payload_len;
        for (auto f : r.dst) {
            if (left == 0) break;
            if (skip >= f.size()) {
                skip -= f.size();
                continue;
            }
            const auto n = std::min<std::uint64_t>(f.size() - skip, left);
            iov.push_back({f.data() + skip, n});
            left -= n;
            skip = 0;
        }
        return detail::frame_action::accept;
    }

    void on_payload(connection& c, const protocol::frame_header& h, bool crc_ok) {
        auto it = c.inflight.find(h.request_id);
        if (it == c.inflight.end()) return;
        auto& r = it->second;
        if (!crc_ok && cfg_.verify_checksums && !r.failed) {
            r.failed = true;
            r.op->status = make_error_code(errc::checksum);
        }
        r.received += h.payload_len;
        if (r.received < r.expect) return;
        if (!r.failed) {
            r.op->size = r.received;
            if (r.op->fragments.empty()) r.op->data = std::move(r.owned);
        }
        done(c, it, r.op->status);
    }

    void done(connection& c, typename std::map<std::uint64_t, request>::iterator it,
              std::error_code status) {
        auto r = std::move(it->second);
        c.inflight.erase(it);
        if (r.op) complete(r.b, *r.op, status);
    }

    detail::frame_action protocol_violation(connection& c) {
        violated_.push_back(c.server);
        return detail::frame_action::pause;
    }

    void complete(const std::shared_ptr<batch>& b, operation& op, std::error_code status) {
        op.status = status;
        if (--b->remaining == 0) finish_batch(b);
    }

    void finish_batch(const std::shared_ptr<batch>& b) {
        {
            std::lock_guard lock(mutex_);
            inflight_ -= b->ops.size();
            inflight_cv_.notify_all();
        }
        // The callback may submit more work (it runs on the progress thread, which submit()
        // never blocks).
        if (b->cb) return b->cb(b->ops);
        std::lock_guard lock(mutex_);
        {
            finished_.insert(b->id);
            completed_.push_back(b->id);
            std::uint64_t one = 1;
            [[maybe_unused]] auto r = ::write(done_fd_.get(), &one, sizeof(one));
        }
        done_cv_.notify_all();
    }

    /// Closes a connection and fails everything on it. The socket is closed first, so nothing
    /// can land in caller buffers afterwards.
    void close_connection(connection& c, std::error_code ec) {
        if (!c.ch) return;
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c.ch->stream().fd(), nullptr);
        c.ch.reset();
        auto inflight = std::move(c.inflight);
        c.inflight.clear();
        c.put_queue.clear();
        for (auto& [id, r] : inflight) {
            if (r.stats) {
                r.stats->error = ec;
                if (--r.stats->remaining == 0) finish_stats(r.stats);
            } else if (!r.exists_ops.empty()) {
                for (auto* op : r.exists_ops) complete(r.b, *op, ec);
            } else if (r.op) {
                complete(r.b, *r.op, ec);
            }
        }
    }

    void fail_server(std::size_t i, std::error_code ec) {
        (void)server_down(i, ec);
    }

    void expire() {
        for (auto s : violated_) fail_server(s, make_error_code(errc::protocol));
        violated_.clear();
        const auto now = detail::clock::now();
        for (std::size_t i = 0; i < servers_.size(); ++i) {
            bool late = false;
            for (auto& c : servers_[i]->shards)
                for (auto& [id, r] : c->inflight)
                    if (now >= r.deadline) late = true;
            if (late) {
                auto& s = *servers_[i];
                for (auto& c : s.shards) close_connection(*c, make_error_code(errc::timed_out));
                (void)server_down(i, make_error_code(errc::timed_out));
            }
        }
    }

    client_config cfg_;
    placement placement_;
    std::vector<std::unique_ptr<server_state>> servers_;
    pid_t pid_ = 0;
    detail::unique_fd epoll_, wake_fd_, done_fd_;
    std::unique_ptr<std::thread> progress_;
    std::thread::id progress_id_;

    std::mutex mutex_; // guards everything below
    std::condition_variable inflight_cv_, done_cv_;
    bool stopping_ = false;
    std::deque<std::shared_ptr<batch>> submitted_;
    std::deque<std::shared_ptr<stats_request>> stats_requests_;
    std::uint64_t next_batch_ = 0;
    std::size_t inflight_ = 0;
    std::vector<std::uint64_t> completed_;
    std::set<std::uint64_t> finished_;
    std::map<std::uint64_t, std::span<std::byte>> registered_;
    std::uint64_t next_registration_ = 0;

    // progress thread only
    std::uint32_t attach_status_ = 0;
    std::vector<std::size_t> violated_;
};

} // namespace memkv
