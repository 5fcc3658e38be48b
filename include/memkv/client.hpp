// SPDX-License-Identifier: Apache-2.0
// memkv::client<Transport>: a thread-safe client that shards keys across servers.
#pragma once

#include <memkv/client_types.hpp>
#include <memkv/concepts.hpp>
#include <memkv/detail/frame_channel.hpp>
#include <memkv/detail/handshake_io.hpp>
#include <memkv/detail/latency_histogram.hpp>
#include <memkv/detail/log.hpp>
#include <memkv/detail/socket.hpp>
#include <memkv/protocol/messages.hpp>
#include <memkv/protocol/placement.hpp>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>

namespace memkv {

namespace detail {

/// The implementation of memkv::client (documented there). It knows nothing of fork():
/// client checks the process before every call and never destroys a core inherited by a child.
template <transport Transport>
class client_core {
    using stream_type = typename Transport::stream;

public:
    using callback = std::function<void(std::span<operation>)>;

    static result<std::unique_ptr<client_core>> create(client_config cfg) {
        std::unique_ptr<client_core> c(new client_core(std::move(cfg)));
        MEMKV_TRY(c->init());
        return c;
    }

    client_core(const client_core&) = delete;
    client_core& operator=(const client_core&) = delete;
    ~client_core() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        wake();
        if (progress_ && progress_->joinable()) progress_->join();
        {
            std::lock_guard lock(connector_mutex_);
            connector_stop_ = true;
        }
        connector_cv_.notify_all();
        if (connector_ && connector_->joinable()) connector_->join();
    }

    // The calls of client<Transport>, documented there.

    result<std::uint64_t> submit(std::span<operation> ops, callback cb = {}) {
        return submit_batch(make_batch(ops, std::move(cb), false));
    }

    std::vector<std::uint64_t> poll_completed() {
        std::lock_guard lock(mutex_);
        std::uint64_t v;
        [[maybe_unused]] auto r = ::read(done_fd_.get(), &v, sizeof(v));
        return std::exchange(completed_, {});
    }

    int completion_fd() const noexcept { return done_fd_.get(); }

    void wait(std::uint64_t id) {
        std::unique_lock lock(mutex_);
        done_cv_.wait(lock, [&] { return !pending_.contains(id); });
        std::erase(completed_, id);
    }

    std::size_t tracked_batches() const {
        std::lock_guard lock(mutex_);
        return pending_.size() + completed_.size();
    }

    /// Submits and waits. Does not signal completion_fd() (it is for submit()'s batches).
    result<void> run(std::span<operation> ops) {
        if (on_progress_thread()) return errc::invalid_argument; // would wait for itself
        auto id = submit_batch(make_batch(ops, {}, true));
        if (!id) return id.error();
        wait(*id);
        return {};
    }

    result<std::vector<server_stats_entry>> stats() {
        auto req = gather_stats();
        if (!req) return req.error();
        auto& r = **req;
        for (std::size_t i = 0; i < r.server_errors.size(); ++i)
            r.entries.push_back(
                {"server" + std::to_string(i) + ".up", r.server_errors[i] ? 0u : 1u});
        if (std::ranges::all_of(r.server_errors, [](const auto& e) { return bool(e); }))
            return r.server_errors.front();
        return std::move(r.entries);
    }

    /// Succeeds when every shard of every server answered; else the first server's error.
    result<void> ping() {
        auto req = gather_stats();
        if (!req) return req.error();
        for (const auto& e : (*req)->server_errors)
            if (e) return e;
        return {};
    }

    std::vector<client_server_stats> server_stats() const {
        std::vector<client_server_stats> out;
        std::lock_guard lock(stats_mutex_);
        for (const auto& s : servers_) {
            auto st = s->stats;
            st.endpoint = s->endpoint_text;
            st.up = s->state == link::up;
            st.p50_us = s->latency.quantile(0.5);
            st.p99_us = s->latency.quantile(0.99);
            st.p999_us = s->latency.quantile(0.999);
            st.max_us = s->latency.max();
            out.push_back(std::move(st));
        }
        return out;
    }

    result<std::uint64_t> register_buffer(std::span<std::byte> memory) {
        if (memory.empty()) return errc::invalid_argument;
        std::lock_guard lock(mutex_);
        registered_.emplace(++next_registration_, memory);
        return next_registration_;
    }

    result<void> unregister_buffer(std::uint64_t handle) {
        std::lock_guard lock(mutex_);
        return registered_.erase(handle) ? result<void>() : result<void>(errc::invalid_argument);
    }

    std::pair<std::size_t, std::uint32_t> locate(std::string_view key) const {
        const auto full = cfg_.key_prefix + std::string(key);
        const auto h = key_hash(std::string_view(full));
        const auto s = placement_.server_for(h);
        return {s, shard_for(h, std::max<std::uint32_t>(1, servers_[s]->shard_count))};
    }

    std::size_t server_count() const noexcept { return servers_.size(); }

    result<std::uint32_t> raw_get_status(std::size_t server, std::uint32_t shard,
                                         std::string_view key) {
        operation op;
        op.kind = op_kind::get;
        op.key = key;
        auto b = make_batch({&op, 1}, {}, true);
        b->raw_target = {server, shard};
        auto id = submit_batch(std::move(b));
        if (!id) return id.error();
        wait(*id);
        return op.status ? static_cast<std::uint32_t>(op.status.value()) : 0u;
    }

private:
    struct batch {
        std::uint64_t id = 0;
        std::span<operation> ops;
        callback cb;
        std::size_t remaining = 0;
        std::optional<std::pair<std::size_t, std::uint32_t>> raw_target;
        bool internal = false; // a synchronous call's: not reported by poll_completed()
        /// Set at dispatch: every operation of the batch ends by then, however long it waited
        /// for its server's connection first.
        detail::clock::time_point deadline;
    };

    static std::shared_ptr<batch> make_batch(std::span<operation> ops, callback cb, bool internal) {
        auto b = std::make_shared<batch>();
        b->ops = ops;
        b->cb = std::move(cb);
        b->internal = internal;
        b->remaining = ops.size();
        return b;
    }

    /// True on the thread that runs completion callbacks.
    bool on_progress_thread() const noexcept { return std::this_thread::get_id() == progress_id_; }

    /// Queues a batch for the progress thread, waiting while the in-flight cap is reached
    /// (never on the progress thread, whose callbacks may submit). Returns its id.
    result<std::uint64_t> submit_batch(std::shared_ptr<batch> b) {
        const auto n = b->ops.size();
        std::unique_lock lock(mutex_);
        if (!on_progress_thread())
            inflight_cv_.wait(lock, [&] {
                return stopping_ || inflight_ + n <= cfg_.max_inflight || inflight_ == 0;
            });
        if (stopping_) return errc::closed;
        b->id = ++next_batch_;
        inflight_ += n;
        pending_.insert(b->id);
        submitted_.push_back(std::move(b));
        const auto id = next_batch_;
        lock.unlock();
        wake();
        return id;
    }

    struct stats_request {
        std::vector<server_stats_entry> entries;
        std::error_code error;                      // the whole request failed (errc::closed)
        std::vector<std::error_code> server_errors; // why server I did not answer, if it did not
        std::size_t remaining = 0;
        bool done = false;
    };

    /// Asks every shard of every server for its counters and waits for all answers or failures.
    /// Fails when called from a callback (it would wait for itself) or when the client closes.
    result<std::shared_ptr<stats_request>> gather_stats() {
        if (on_progress_thread()) return errc::invalid_argument; // would wait for itself
        auto req = std::make_shared<stats_request>();
        {
            std::lock_guard lock(mutex_);
            stats_requests_.push_back(req);
        }
        wake();
        std::unique_lock lock(mutex_);
        done_cv_.wait(lock, [&] { return req->done; });
        if (req->error) return req->error;
        if (stopping_) return errc::closed; // answers cut short by the shutdown
        return req;
    }

    /// One request on a connection.
    struct request {
        std::shared_ptr<batch> b;
        operation* op = nullptr;
        std::string wire_key;
        std::uint64_t sent = 0;     // put: payload bytes queued so far
        unsigned queued_frames = 0; // put: data frames queued, not yet written
        bool replied = false;       // put: answered (maybe before all was sent)
        std::error_code reply_status;
        std::vector<std::byte> owned;          // get without fragments
        std::vector<std::span<std::byte>> dst; // get destination
        std::uint64_t received = 0;
        std::uint64_t expect = 0;
        bool failed = false;
        detail::clock::time_point deadline;
        detail::clock::time_point start;
        std::shared_ptr<stats_request> stats;
        std::size_t exists_first = 0; // exists frames: ops [first, first + n)
        std::vector<operation*> exists_ops;
        std::shared_ptr<batch> exists_batch;
    };

    struct connection;
    /// up: connections open; connecting: the connector thread is opening them (requests wait,
    /// never written, so they are sent once it is up); down: failed, retried after a backoff
    /// (requests fail at once with errc::unavailable meanwhile).
    enum class link { up, connecting, down };
    struct parked_op {
        std::shared_ptr<batch> b;
        operation* op;
    };
    struct server_state {
        std::string endpoint_text;
        typename Transport::endpoint endpoint;
        std::atomic<std::uint32_t> shard_count{0}; // read by locate() on any thread
        std::vector<std::unique_ptr<connection>> shards;
        std::atomic<link> state{link::down}; // read by server_stats() on any thread
        detail::clock::time_point retry_at{};
        std::chrono::milliseconds backoff{0};
        std::vector<parked_op> parked;
        client_server_stats stats;         // guarded by stats_mutex_
        detail::latency_histogram latency; // guarded by stats_mutex_
    };
    /// What the connector thread hands back.
    struct connect_outcome {
        std::size_t server = 0;
        std::uint32_t shard_count = 0;
        std::vector<std::unique_ptr<connection>> conns;
        std::error_code error;
    };

    struct connection {
        client_core* owner = nullptr;
        std::size_t server = 0;
        std::uint32_t shard = 0;
        std::unique_ptr<detail::frame_channel<stream_type>> ch;
        std::uint64_t next_id = 1;
        std::map<std::uint64_t, request> inflight;
        std::deque<std::uint64_t> put_queue; // puts with payload still to queue
        bool attached = false;
        std::uint32_t attach_status = 0;
        std::uint32_t interest = 0;

        detail::frame_action on_frame(const protocol::frame_header& h,
                                      std::span<const std::byte> body) {
            return owner->on_frame(*this, h, body);
        }
        void on_payload(const protocol::frame_header& h, bool crc_ok) {
            owner->on_payload(*this, h, crc_ok);
        }
    };

    explicit client_core(client_config cfg) : cfg_(std::move(cfg)), placement_(cfg_.servers) {}

    result<void> init() {
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
        for (std::size_t i = 0; i < servers_.size(); ++i) {
            auto out = open_connections(i);
            if (out.error && !first_error) first_error = out.error;
            settle(std::move(out));
        }
        if (first_error && servers_.size() == 1) return first_error;
        progress_ = std::make_unique<std::thread>([this] { progress_loop(); });
        progress_id_ = progress_->get_id();
        connector_ = std::make_unique<std::thread>([this] { connector_loop(); });
        return {};
    }

    void wake() noexcept {
        std::uint64_t one = 1;
        [[maybe_unused]] auto r = ::write(wake_fd_.get(), &one, sizeof(one));
    }

    /// Opens one connection per shard of server `i`: blocking, bounded by connect_timeout per
    /// connection. Touches no client state, so the connector thread may run it.
    connect_outcome open_connections(std::size_t i) {
        connect_outcome out;
        out.server = i;
        const auto& ep = servers_[i]->endpoint; // immutable after init
        const auto key = cfg_.key ? &*cfg_.key : nullptr;
        auto open = [&](std::uint32_t shard) -> result<std::unique_ptr<connection>> {
            const auto deadline = detail::clock::now() + cfg_.connect_timeout;
            auto st = Transport::connect(ep, cfg_.connect_timeout);
            if (!st) return st.error();
            auto sess = detail::client_handshake(*st, key, st->kind(), deadline);
            if (!sess) return sess.error();
            if (out.shard_count == 0) out.shard_count = sess->shard_count;
            if (sess->shard_count != out.shard_count) return errc::protocol;
            auto c = std::make_unique<connection>();
            c->owner = this;
            c->server = i;
            c->shard = shard;
            c->ch = std::make_unique<detail::frame_channel<stream_type>>(
                std::move(*st), std::move(sess->send_mac), std::move(sess->recv_mac), cfg_.limits);
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
                c->attach_status = ~0u;
                MEMKV_TRY(c->ch->on_readable(*c));
                if (c->attach_status != ~0u && c->attach_status != 0)
                    return make_error_code(static_cast<errc>(c->attach_status));
            }
            return c;
        };
        for (std::uint32_t k = 0; k == 0 || k < out.shard_count; ++k) {
            auto c = open(k);
            if (!c) {
                out.error = c.error();
                out.conns.clear();
                return out;
            }
            out.conns.push_back(std::move(*c));
        }
        return out;
    }

    /// Installs the connections of a successful connect, or marks the server down (progress
    /// thread, or init before it starts). Requests parked meanwhile are dispatched or failed.
    void settle(connect_outcome out) {
        auto& s = *servers_[out.server];
        auto parked = std::move(s.parked);
        s.parked.clear();
        if (out.error) {
            mark_down(out.server);
            for (auto& p : parked)
                fail_op(out.server, p.b, *p.op, make_error_code(errc::unavailable));
            return;
        }
        s.shards = std::move(out.conns);
        s.shard_count = out.shard_count;
        for (auto& c : s.shards)
            watch(*c);
        s.state = link::up;
        s.backoff = std::chrono::milliseconds(0);
        for (auto& p : parked)
            dispatch_one(p.b, *p.op);
        flush_groups();
    }

    /// Closes every connection of server `i` (failing what was on them) and schedules a
    /// reconnection after a capped exponential backoff with jitter.
    void mark_down(std::size_t i, std::error_code ec = make_error_code(errc::unavailable)) {
        auto& s = *servers_[i];
        for (auto& c : s.shards)
            close_connection(*c, ec);
        s.shards.clear();
        s.state = link::down;
        s.backoff = std::min(std::chrono::milliseconds(500),
                             std::max(std::chrono::milliseconds(10), s.backoff * 2));
        const auto jitter = std::chrono::milliseconds(jitter_rng_() % (s.backoff.count() / 4 + 1));
        s.retry_at = detail::clock::now() + s.backoff + jitter;
    }

    /// Hands server `i` to the connector thread.
    void start_connect(std::size_t i) {
        auto& s = *servers_[i];
        s.state = link::connecting;
        {
            std::lock_guard lock(connector_mutex_);
            connect_jobs_.push_back(i);
        }
        connector_cv_.notify_one();
        std::lock_guard lock(stats_mutex_);
        ++s.stats.reconnects;
    }

    /// The connector thread: opens connections off the progress thread, so that a server that
    /// does not answer never delays the others.
    void connector_loop() {
        for (;;) {
            std::size_t job;
            {
                std::unique_lock lock(connector_mutex_);
                connector_cv_.wait(lock, [&] { return connector_stop_ || !connect_jobs_.empty(); });
                if (connector_stop_) return;
                job = connect_jobs_.front();
                connect_jobs_.pop_front();
            }
            auto out = open_connections(job);
            {
                std::lock_guard lock(connector_mutex_);
                connected_.push_back(std::move(out));
            }
            wake();
        }
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
            std::deque<connect_outcome> connected;
            {
                std::lock_guard lock(connector_mutex_);
                connected.swap(connected_);
            }
            for (auto& out : connected)
                settle(std::move(out));
            for (auto& b : in)
                dispatch(b);
            for (auto& s : st)
                dispatch_stats(s);
            for (auto& s : servers_)
                for (auto& c : s->shards)
                    pump(*c);
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
        for (std::size_t i = 0; i < servers_.size(); ++i) {
            for (auto& c : servers_[i]->shards)
                close_connection(*c, make_error_code(errc::closed));
            for (auto& p : std::exchange(servers_[i]->parked, {}))
                complete(p.b, *p.op, make_error_code(errc::closed));
        }
        // Batches submitted but never dispatched complete too: nothing is left waiting.
        std::deque<std::shared_ptr<batch>> left;
        std::deque<std::shared_ptr<stats_request>> left_stats;
        {
            std::lock_guard lock(mutex_);
            left.swap(submitted_);
            left_stats.swap(stats_requests_);
        }
        for (auto& b : left)
            for (auto& op : b->ops)
                complete(b, op, make_error_code(errc::closed));
        for (auto& st : left_stats) {
            st->error = make_error_code(errc::closed);
            finish_stats(st);
        }
    }

    /// Queues payload chunks of pending puts (round robin, a few chunks ahead) and writes until
    /// every value is sent or the socket is full (then EPOLLOUT resumes it).
    void pump(connection& c) {
        while (c.ch) {
            queue_chunks(c);
            if (auto w = c.ch->flush(); !w) return fail_server(c.server, w.error());
            for (auto id : std::exchange(c.ch->sent_tokens(), {}))
                on_sent(c, id);
            if (!c.ch || c.put_queue.empty() || c.ch->want_write()) break;
        }
        update_interest(c);
    }

    void queue_chunks(connection& c) {
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
            c.ch->send(h, {}, v.subspan(r.sent, n), id); // borrows the caller's value
            ++r.queued_frames;
            r.sent += n;
            if (r.sent < v.size()) c.put_queue.push_back(id);
        }
    }

    /// A data frame of put `id` was written: the caller's value is no longer borrowed by it.
    void on_sent(connection& c, std::uint64_t id) {
        auto it = c.inflight.find(id);
        if (it == c.inflight.end()) return;
        --it->second.queued_frames;
        finish_put(c, it);
    }

    /// Completes a put once it is answered AND none of its value is queued or unsent: the
    /// server may answer early (exists, wrong_shard), but the protocol still wants the rest of
    /// the value, and the caller's buffer must not be read after the operation completed.
    void finish_put(connection& c, typename std::map<std::uint64_t, request>::iterator it) {
        auto& r = it->second;
        if (!r.replied || r.queued_frames != 0 || r.sent < r.op->value.size()) return;
        done(c, it, r.reply_status);
    }

    /// The connection to (server, shard) if the server is up; nullptr otherwise.
    connection* conn_for(std::size_t server, std::uint32_t shard) {
        auto& s = *servers_[server];
        if (s.state != link::up) return nullptr;
        return shard < s.shards.size() ? s.shards[shard].get() : nullptr;
    }

    void dispatch(const std::shared_ptr<batch>& b) {
        if (b->ops.empty()) return finish_batch(b);
        b->deadline = detail::clock::now() + cfg_.request_timeout;
        for (auto& op : b->ops) {
            op.status = {};
            dispatch_one(b, op);
        }
        flush_groups();
    }

    /// Routes one operation: grouped for its connection if its server is up, parked while it
    /// connects (never written, so it is sent once connected), failed with errc::unavailable
    /// while the server is down. Groups go out in flush_groups().
    void dispatch_one(const std::shared_ptr<batch>& b, operation& op) {
        std::size_t srv;
        if (b->raw_target) {
            srv = b->raw_target->first;
        } else {
            if (op.key.empty() || op.key.size() + cfg_.key_prefix.size() > cfg_.limits.max_key)
                return complete(b, op, make_error_code(errc::invalid_argument));
            if (op.kind == op_kind::put && (op.options.meta.size() > cfg_.limits.max_meta ||
                                            op.value.size() > cfg_.limits.max_value))
                return complete(b, op, make_error_code(errc::too_large));
            srv = locate_unchecked(op.key).first;
        }
        auto& s = *servers_[srv];
        if (s.state == link::down && detail::clock::now() >= s.retry_at) start_connect(srv);
        if (s.state == link::connecting) {
            s.parked.push_back({b, &op});
            return;
        }
        const auto shard = b->raw_target ? b->raw_target->second : locate_unchecked(op.key).second;
        connection* c = conn_for(srv, shard);
        if (!c) return fail_op(srv, b, op, make_error_code(errc::unavailable));
        auto& g = (op.kind == op_kind::exists ? exists_groups_ : groups_)[{c, b.get()}];
        g.first = b;
        g.second.push_back(&op);
    }

    void flush_groups() {
        auto groups = std::move(groups_);
        auto exists = std::move(exists_groups_);
        groups_.clear();
        exists_groups_.clear();
        for (auto& [key, g] : groups)
            send_batch(*key.first, g.first, g.second);
        for (auto& [key, g] : exists)
            send_exists(*key.first, g.first, g.second);
    }

    /// Completes an operation that failed before or without a reply, counting it for its server.
    void fail_op(std::size_t server, const std::shared_ptr<batch>& b, operation& op,
                 std::error_code ec, bool timed_out = false) {
        {
            std::lock_guard lock(stats_mutex_);
            auto& st = servers_[server]->stats;
            ++st.requests;
            ++st.errors;
            if (timed_out || ec == make_error_code(errc::timed_out)) ++st.timeouts;
        }
        complete(b, op, ec);
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

    std::size_t wire_key_size(const std::shared_ptr<batch>& b, const operation& op) const {
        return (b->raw_target ? 0 : cfg_.key_prefix.size()) + op.key.size();
    }

    /// How many of ops[first..] go into one frame: at most `max_count`, and at most
    /// limits.max_body body bytes, `size(op)` being an operation's encoded size (at least one
    /// operation, which alone always fits: keys and metadata are capped far below max_body).
    template <class Size>
    std::size_t frame_span(const std::vector<operation*>& ops, std::size_t first,
                           std::size_t max_count, Size size) const {
        std::size_t n = 0, body = 0;
        for (; first + n < ops.size() && n < max_count; ++n) {
            body += size(*ops[first + n]);
            if (n > 0 && body > cfg_.limits.max_body) break;
        }
        return n;
    }

    /// Sends the puts, gets and deletes of one batch on one connection as batch frames.
    void send_batch(connection& c, const std::shared_ptr<batch>& b, std::vector<operation*>& ops) {
        const auto now = detail::clock::now();
        const auto deadline = b->deadline;
        auto size = [&](const operation& op) {
            return protocol::batch_descriptor_size + wire_key_size(b, op) +
                   (op.kind == op_kind::put ? op.options.meta.size() : 0);
        };
        for (std::size_t first = 0, n = 0; first < ops.size(); first += n) {
            n = frame_span(ops, first, cfg_.limits.max_batch, size);
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
                r.start = now;
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
                default:
                    s.op = protocol::opcode::del;
                    break;
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
            for (auto id : puts)
                c.put_queue.push_back(id);
        }
        pump(c);
    }

    /// Most keys per exists frame: the reply (bitmap, sizes, up to 256 bytes of metadata per
    /// key) must fit one body.
    std::size_t exists_chunk() const noexcept {
        const std::size_t per_key = 8 + 2 + cfg_.limits.max_meta + 1;
        return std::max<std::size_t>(
            1, std::min<std::size_t>(cfg_.limits.max_batch, cfg_.limits.max_body / per_key));
    }

    /// Sends the exists operations of one batch on one connection: frames whose request and
    /// reply bodies both fit max_body.
    void send_exists(connection& c, const std::shared_ptr<batch>& b, std::vector<operation*>& ops) {
        const auto deadline = b->deadline;
        auto size = [&](const operation& op) { return 2 + wire_key_size(b, op); };
        for (std::size_t first = 0, n = 0; first < ops.size(); first += n) {
            n = frame_span(ops, first, exists_chunk(), size);
            std::vector<std::string> keys;
            keys.reserve(n);
            request r;
            r.b = b;
            r.deadline = deadline;
            r.start = detail::clock::now();
            for (std::size_t i = first; i < first + n; ++i) {
                keys.push_back(wire_key(b, *ops[i]));
                r.exists_ops.push_back(ops[i]);
            }
            std::vector<std::span<const std::byte>> views;
            for (const auto& k : keys)
                views.push_back(bytes(k));
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
        s->server_errors.assign(servers_.size(), {});
        for (std::size_t i = 0; i < servers_.size(); ++i) {
            for (std::uint32_t k = 0; k < std::max<std::uint32_t>(1, servers_[i]->shard_count);
                 ++k) {
                connection* c = conn_for(i, k);
                if (!c) {
                    s->server_errors[i] = make_error_code(errc::unavailable);
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
            c.attach_status = h.status();
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
            r.replied = true;
            r.reply_status = status;
            finish_put(c, it);
            return detail::frame_action::discard;
        case opcode::del:
            done(c, it, status);
            return detail::frame_action::discard;
        case opcode::stats: {
            auto s = r.stats;
            if (!s) return protocol_violation(c);
            if (auto d = protocol::decode_stats(body); d && !status) {
                const std::string p = "server" + std::to_string(c.server) + ".";
                std::lock_guard lock(mutex_);
                for (auto& [name, v] : *d)
                    s->entries.push_back({p + name, v});
            } else {
                s->server_errors[c.server] = status ? status : d.error();
            }
            c.inflight.erase(it);
            if (--s->remaining == 0) finish_stats(s);
            return detail::frame_action::discard;
        }
        case opcode::exists: {
            const auto n = static_cast<std::uint32_t>(r.exists_ops.size());
            if (status) {
                for (auto* op : r.exists_ops)
                    complete(r.b, *op, status);
            } else {
                auto d = protocol::decode_exists_reply(
                    n, protocol::flags::want_sizes | protocol::flags::want_meta, body, cfg_.limits);
                if (!d) return protocol_violation(c);
                record(c.server, r.start, {});
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
            // Checked before allocating: never more than a value can be, or than was asked for.
            if (h.value_len > cfg_.limits.max_value ||
                (r.op->length != 0 && h.value_len > r.op->length))
                return protocol_violation(c);
            r.op->meta_out.assign(body.begin(), body.end());
            r.op->value_size = h.length;
            r.expect = h.value_len;
            if (r.op->fragments.empty()) {
                r.owned.resize(h.value_len);
                r.dst = {std::span<std::byte>(r.owned)};
            } else {
                r.dst = r.op->fragments;
                std::uint64_t cap = 0;
                for (auto f : r.dst)
                    cap += f.size();
                if (cap < h.value_len)
                    r.failed = true, r.op->status = make_error_code(errc::too_large);
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
        default:
            return protocol_violation(c);
        }
    }

    /// Maps a payload frame's bytes into the request's destination fragments.
    detail::frame_action payload(connection& c, request& r, const protocol::frame_header& h) {
        if (h.offset != r.received || h.value_len != r.expect ||
            h.payload_len > r.expect - r.received)
            return protocol_violation(c);
        auto& iov = c.ch->payload_target();
        if (r.failed) { // drained into a scratch sink, so that the request still completes
            if (sink_.size() < h.payload_len) sink_.resize(h.payload_len);
            iov.push_back({sink_.data(), h.payload_len});
            return detail::frame_action::accept;
        }
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
        if (!r.op) return;
        record(c.server, r.start, status);
        complete(r.b, *r.op, status);
    }

    /// Counts a reply from server `i` and its latency.
    void record(std::size_t i, detail::clock::time_point start, std::error_code status) {
        const auto us =
            std::chrono::duration_cast<std::chrono::microseconds>(detail::clock::now() - start)
                .count();
        std::lock_guard lock(stats_mutex_);
        auto& s = *servers_[i];
        ++s.stats.requests;
        if (status && status != make_error_code(errc::not_found) &&
            status != make_error_code(errc::exists))
            ++s.stats.errors;
        s.latency.record(static_cast<std::uint64_t>(us));
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
        // never blocks). Its batch is no longer pending (for wait()) once it returned.
        if (b->cb) b->cb(b->ops);
        std::lock_guard lock(mutex_);
        pending_.erase(b->id);
        if (!b->cb && !b->internal) {
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
        // A timeout of a request already on the wire leaves a put or delete's outcome unknown
        // (errc::timed_out); a read simply failed (errc::unavailable).
        const bool timeout = ec == make_error_code(errc::timed_out);
        auto status_for = [&](const operation& op) {
            if (!timeout) return ec;
            const bool write = op.kind == op_kind::put || op.kind == op_kind::del;
            return write ? ec : make_error_code(errc::unavailable);
        };
        for (auto& [id, r] : inflight) {
            if (r.stats) {
                r.stats->server_errors[c.server] = ec;
                if (--r.stats->remaining == 0) finish_stats(r.stats);
            } else if (!r.exists_ops.empty()) {
                for (auto* op : r.exists_ops)
                    fail_op(c.server, r.b, *op, status_for(*op), timeout);
            } else if (r.op && r.replied) { // answered; only its unsent value is dropped
                complete(r.b, *r.op, r.reply_status);
            } else if (r.op) {
                fail_op(c.server, r.b, *r.op, status_for(*r.op), timeout);
            }
        }
    }

    /// Marks server `i` for failing; done in expire(), after the current batch of events, so
    /// that no connection is destroyed while an event or a loop still refers to it.
    void fail_server(std::size_t i, std::error_code ec) { failed_.emplace_back(i, ec); }

    /// Fences and fails a server whose requests passed their deadline (its connections are
    /// closed first: no late reply can land in a caller's buffer), fails parked requests that
    /// waited too long, and applies protocol violations found while reading.
    void expire() {
        for (auto s : violated_)
            fail_server(s, make_error_code(errc::protocol));
        violated_.clear();
        // A connection that broke (reset, closed, I/O error) makes its server unavailable;
        // only protocol and authentication failures keep their own code.
        for (auto [i, ec] : std::exchange(failed_, {}))
            if (servers_[i]->state == link::up)
                mark_down(i, ec == make_error_code(errc::protocol) ||
                                     ec == make_error_code(errc::unauthenticated)
                                 ? ec
                                 : make_error_code(errc::unavailable));
        const auto now = detail::clock::now();
        for (std::size_t i = 0; i < servers_.size(); ++i) {
            auto& s = *servers_[i];
            bool late = false;
            for (auto& c : s.shards)
                for (auto& [id, r] : c->inflight)
                    if (now >= r.deadline) late = true;
            if (late) mark_down(i, make_error_code(errc::timed_out));
            for (auto it = s.parked.begin(); it != s.parked.end();) {
                if (now < it->b->deadline) {
                    ++it;
                    continue;
                }
                auto p = *it;
                it = s.parked.erase(it);
                fail_op(i, p.b, *p.op, make_error_code(errc::unavailable));
            }
        }
    }

    client_config cfg_;
    placement placement_;
    std::vector<std::unique_ptr<server_state>> servers_;
    unique_fd epoll_, wake_fd_, done_fd_;
    std::unique_ptr<std::thread> progress_;
    std::thread::id progress_id_;

    mutable std::mutex mutex_; // guards everything below
    std::condition_variable inflight_cv_, done_cv_;
    bool stopping_ = false;
    std::deque<std::shared_ptr<batch>> submitted_;
    std::deque<std::shared_ptr<stats_request>> stats_requests_;
    std::uint64_t next_batch_ = 0;
    std::size_t inflight_ = 0;
    std::vector<std::uint64_t> completed_; // completed, for poll_completed()
    std::set<std::uint64_t> pending_;      // ids of batches submitted and not yet completed
    std::map<std::uint64_t, std::span<std::byte>> registered_;
    std::uint64_t next_registration_ = 0;

    // progress thread only
    std::vector<std::size_t> violated_;
    std::vector<std::pair<std::size_t, std::error_code>> failed_;
    std::vector<std::byte> sink_; // payload of requests that already failed
    std::map<std::pair<connection*, batch*>,
             std::pair<std::shared_ptr<batch>, std::vector<operation*>>>
        groups_, exists_groups_;
    std::minstd_rand jitter_rng_{static_cast<std::uint32_t>(::getpid())};

    // the connector thread and its queues
    std::unique_ptr<std::thread> connector_;
    std::mutex connector_mutex_; // guards the three below
    std::condition_variable connector_cv_;
    std::deque<std::size_t> connect_jobs_;
    std::deque<connect_outcome> connected_;
    bool connector_stop_ = false;

    mutable std::mutex stats_mutex_; // guards server_state::stats and ::latency
};

} // namespace detail

/// A client of a set of memkv servers. Keys are placed by the function in docs/protocol.md
/// (rendezvous over servers, then a shard); the client keeps one connection per (server, shard).
///
/// Thread-safe: any number of threads may call it at once. One progress thread does all network
/// I/O. Completions are reported by callback (on the progress thread), by polling
/// (`poll_completed()`), or by the eventfd `completion_fd()` (readable while completed batches
/// wait to be polled).
///
/// Buffers: values given to put and fragments given to get are borrowed until the operation
/// completes. A completed (or failed, or timed-out) operation never touches them again: a
/// connection is closed before a timeout is reported, so a late reply cannot land in them.
///
/// fork(): the child must create its own client. On the parent's, every call that returns a
/// result fails with errc::forked and touches nothing; poll_completed() and server_stats() are
/// empty, wait() returns at once, completion_fd() is -1, tracked_batches() is 0 (locate() and
/// server_count() still answer). Destroying it in the child leaks its state on purpose: the
/// parent's threads do not exist there and may have held its mutexes or waited on its
/// condition variables at the time of fork(), so they can be neither joined nor destroyed. The
/// inherited descriptors are close-on-exec; the child holds them until it execs or exits.
template <transport Transport>
class client {
    using core = detail::client_core<Transport>;

public:
    /// Completion callback of an asynchronous batch; runs on the progress thread.
    using callback = typename core::callback;

    /// Connects to `cfg.servers`; if empty, to those of MEMKV_SERVERS or MEMKV_SERVERS_FILE
    /// (client_config::servers_from_environment()). Without `cfg.key`, the first key of
    /// MEMKV_AUTH_KEY / MEMKV_AUTH_KEY_FILE is used, if any.
    static result<std::unique_ptr<client>> create(client_config cfg) {
        if (cfg.servers.empty()) {
            auto env = client_config::servers_from_environment();
            if (!env) return env.error();
            cfg.servers = std::move(*env);
        }
        if (std::string why; !client_config::check_servers(cfg.servers, &why)) {
            detail::log_error("memkv client: {}", why);
            return errc::invalid_argument;
        }
        if (!cfg.key) {
            auto ring = auth::key_ring::from_environment();
            if (!ring) return ring.error();
            if (!ring->empty()) cfg.key = ring->entries().front();
        }
        auto c = core::create(std::move(cfg));
        if (!c) return c.error();
        return std::unique_ptr<client>(new client(std::move(*c)));
    }

    client(const client&) = delete;
    client& operator=(const client&) = delete;
    ~client() {
        if (forked()) (void)core_.release(); // leaked on purpose: see the class comment
    }

    // ---- asynchronous batch API -------------------------------------------------------------

    /// Submits a batch. `ops` must stay alive (and its buffers valid) until completion, which is
    /// reported through `cb` if given, else through poll_completed() / completion_fd(). Waits
    /// while more than max_inflight operations are in flight.
    result<std::uint64_t> submit(std::span<operation> ops, callback cb = {}) {
        return guarded([&](core& c) { return c.submit(ops, std::move(cb)); });
    }

    /// Ids of batches completed since the last call (those submitted without a callback). A
    /// batch reported here is forgotten: wait() on it returns at once.
    std::vector<std::uint64_t> poll_completed() {
        return forked() ? std::vector<std::uint64_t>{} : core_->poll_completed();
    }

    /// Readable while completed batches wait for poll_completed().
    int completion_fd() const noexcept { return forked() ? -1 : core_->completion_fd(); }

    /// Blocks until batch `id` has completed (a callback batch: its callback returned); then it
    /// is no longer reported by poll_completed(). Returns at once for an id already completed
    /// and polled or waited for. Must not be called from a completion callback (it would wait
    /// for the thread running the callback); run(), stats() and the synchronous calls fail
    /// there with errc::invalid_argument instead.
    void wait(std::uint64_t id) {
        if (!forked()) core_->wait(id);
    }

    /// Batch ids the client holds: in flight, or completed and not yet polled or waited for.
    /// Bounded by max_inflight plus what the caller leaves unpolled (for tests and monitoring).
    std::size_t tracked_batches() const { return forked() ? 0 : core_->tracked_batches(); }

    /// Submits and waits. Does not signal completion_fd() (it is for submit()'s batches).
    result<void> run(std::span<operation> ops) {
        return guarded([&](core& c) { return c.run(ops); });
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
    result<std::uint64_t> get_into(std::string_view key,
                                   std::vector<std::span<std::byte>> fragments,
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

    /// Whether each key is present (one round trip per involved shard, more only when the keys
    /// of a shard exceed one frame).
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
        while (n < e->size() && (*e)[n])
            ++n;
        return n;
    }

    // ---- statistics and administration ------------------------------------------------------

    /// Server counters, gathered from every shard of every server, names prefixed by
    /// "serverI." (I = index in the server list), and "serverI.up": 1 when every shard of
    /// server I answered, 0 when one did not (some or all of its counters are then missing).
    /// Fails only when no server answered, with the first server's error.
    result<std::vector<server_stats_entry>> stats() {
        return guarded([](core& c) { return c.stats(); });
    }

    /// What this client saw of each server: counts, reconnects and reply latency percentiles.
    std::vector<client_server_stats> server_stats() const {
        return forked() ? std::vector<client_server_stats>{} : core_->server_stats();
    }

    /// Sends a ping on every connection and waits for the answers; fails with the first
    /// server's error when a server does not answer.
    result<void> ping() {
        return guarded([](core& c) { return c.ping(); });
    }

    /// Registers caller memory for zero-copy transfers and returns a handle. Over TCP and Unix
    /// sockets every buffer is already zero-copy (GET payloads are read from the socket straight
    /// into the caller's fragments), so this only validates and records the range; transports
    /// with out-of-band payloads (shm, RDMA) register it with the server or the device.
    result<std::uint64_t> register_buffer(std::span<std::byte> memory) {
        return guarded([&](core& c) { return c.register_buffer(memory); });
    }

    /// Forgets a registration. The memory must not be in use by an operation in flight.
    result<void> unregister_buffer(std::uint64_t handle) {
        return guarded([&](core& c) { return c.unregister_buffer(handle); });
    }

    /// The index of the server owning `key` and its shard there (after key_prefix).
    std::pair<std::size_t, std::uint32_t> locate(std::string_view key) const {
        return core_->locate(key);
    }

    std::size_t server_count() const noexcept { return core_->server_count(); }

    /// Sends one raw request frame to (server, shard) and waits for the reply status. For tests
    /// of server-side checks (wrong_shard): the key is sent as given, without the prefix.
    result<std::uint32_t> raw_get_status(std::size_t server, std::uint32_t shard,
                                         std::string_view key) {
        return guarded([&](core& c) { return c.raw_get_status(server, shard, key); });
    }

private:
    explicit client(std::unique_ptr<core> c) : core_(std::move(c)) {}

    /// Whether this is a child forked after the client was created.
    bool forked() const noexcept { return ::getpid() != pid_; }

    /// `f(core)`, or errc::forked in a forked child (the only check every result-returning
    /// call goes through).
    template <class F>
    auto guarded(F&& f) -> decltype(f(std::declval<core&>())) {
        if (forked()) return errc::forked;
        return std::forward<F>(f)(*core_);
    }

    pid_t pid_ = ::getpid();
    std::unique_ptr<core> core_;
};

} // namespace memkv
