// SPDX-License-Identifier: Apache-2.0
// client::core: the implementation behind memkv::client: placement, the progress thread's loop,
// routing operations to connections, deadlines and fencing.
#pragma once

#include <memkv/client_config.hpp>
#include <memkv/client_types.hpp>
#include <memkv/concepts.hpp>
#include <memkv/detail/client/batch_tracker.hpp>
#include <memkv/detail/client/connection.hpp>
#include <memkv/detail/client/server_link.hpp>
#include <memkv/detail/event_loop.hpp>
#include <memkv/detail/mailbox.hpp>
#include <memkv/protocol/placement.hpp>

#include <sys/epoll.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <variant>
#include <vector>

namespace memkv::detail::client {

/// The implementation of memkv::client (documented there). One progress thread owns the
/// connections and runs the loop: it takes submitted batches, stats requests and connector
/// outcomes from its mailbox, groups each batch's operations per connection (batch frames),
/// reads replies, and fences and fails a server whose requests passed their deadline (its
/// connections are closed before the timeout is reported: no late reply can land in a
/// caller's buffer). It knows nothing of fork(): client checks the process before every call.
template <transport Transport>
class core {
    using stream_type = typename Transport::stream;
    using conn_type = connection<stream_type>;
    using outcome = connect_outcome<stream_type>;
    using link_type = server_link<Transport>;
    using inbox_item = std::variant<std::shared_ptr<batch>, std::shared_ptr<stats_gather>, outcome>;

public:
    using callback = std::function<void(std::span<operation>)>;

    static result<std::unique_ptr<core>> create(client_config cfg, Transport transport) {
        auto tracker = batch_tracker::create(cfg.max_inflight);
        if (!tracker) return tracker.error();
        auto loop = event_loop::create();
        if (!loop) return loop.error();
        std::unique_ptr<core> c(
            new core(std::move(cfg), std::move(transport), std::move(*tracker), std::move(*loop)));
        MEMKV_TRY(c->init());
        return c;
    }

    core(const core&) = delete;
    core& operator=(const core&) = delete;
    ~core() {
        stopping_.store(true, std::memory_order_release);
        loop_.wake();
        if (progress_.joinable()) progress_.join();
    }

    result<std::uint64_t> submit(std::span<operation> ops, callback cb) {
        return submit_batch(make_batch(ops, std::move(cb), false));
    }
    std::vector<std::uint64_t> poll_completed() { return tracker_.poll_completed(); }
    int completion_fd() const noexcept { return tracker_.completion_fd(); }
    void wait(std::uint64_t id) { tracker_.wait(id); }
    std::size_t tracked_batches() const { return tracker_.tracked(); }

    /// Submits and waits. Does not signal completion_fd() (it is for submit()'s batches).
    result<void> run(std::span<operation> ops) {
        if (on_progress_thread()) return errc::invalid_argument; // would wait for itself
        auto id = submit_batch(make_batch(ops, {}, true));
        if (!id) return id.error();
        tracker_.wait(*id);
        return {};
    }

    result<std::vector<server_stats_entry>> stats() {
        auto g = gather_stats();
        if (!g) return g.error();
        auto& r = **g;
        for (std::size_t i = 0; i < r.server_errors.size(); ++i)
            r.entries.push_back(
                {"server" + std::to_string(i) + ".up", r.server_errors[i] ? 0u : 1u});
        if (std::ranges::all_of(r.server_errors, [](const auto& e) { return bool(e); }))
            return r.server_errors.front();
        return std::move(r.entries);
    }

    /// Succeeds when every shard of every server answered; else the first server's error.
    result<void> ping() {
        auto g = gather_stats();
        if (!g) return g.error();
        for (const auto& e : (*g)->server_errors)
            if (e) return e;
        return {};
    }

    std::vector<client_server_stats> server_stats() const {
        std::vector<client_server_stats> out;
        for (const auto& s : servers_) {
            std::lock_guard lock(s->stats.m);
            auto st = s->stats.counts;
            st.endpoint = s->endpoint_text;
            st.up = s->state == link_state::up;
            st.p50_us = s->stats.latency.quantile(0.5);
            st.p99_us = s->stats.latency.quantile(0.99);
            st.p999_us = s->stats.latency.quantile(0.999);
            st.max_us = s->stats.latency.max();
            out.push_back(std::move(st));
        }
        return out;
    }

    result<std::uint64_t> register_buffer(std::span<std::byte> memory) {
        if (memory.empty()) return errc::invalid_argument;
        std::lock_guard lock(registry_mutex_);
        registered_.emplace(++next_registration_, memory);
        return next_registration_;
    }
    result<void> unregister_buffer(std::uint64_t handle) {
        std::lock_guard lock(registry_mutex_);
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
        tracker_.wait(*id);
        return op.status ? static_cast<std::uint32_t>(op.status.value()) : 0u;
    }

private:
    core(client_config cfg, Transport transport, batch_tracker tracker, event_loop loop)
        : cfg_(std::move(cfg)), transport_(std::move(transport)), placement_(cfg_.servers),
          tracker_(std::move(tracker)), loop_(std::move(loop)), inbox_(loop_) {}

    result<void> init() {
        for (const auto& text : cfg_.servers) {
            auto ep = transport_.parse(text);
            if (!ep) return ep.error();
            auto s = std::make_unique<link_type>();
            s->endpoint_text = text;
            s->endpoint = std::move(*ep);
            servers_.push_back(std::move(s));
        }
        // Connect eagerly so that configuration errors show at once; a server that is down
        // now is retried later and its requests fail with errc::unavailable meanwhile.
        std::error_code first_error;
        for (std::size_t i = 0; i < servers_.size(); ++i) {
            auto out = open_connections(transport_, i, servers_[i]->endpoint, cfg_, tracker_,
                                        servers_[i]->stats);
            if (out.error && !first_error) first_error = out.error;
            settle(std::move(out));
        }
        if (first_error && servers_.size() == 1) return first_error;
        connector_ = std::make_unique<connector<outcome>>(
            [this](outcome o) { inbox_.post(inbox_item(std::move(o))); });
        progress_ = std::thread([this] { progress_loop(); });
        progress_id_ = progress_.get_id();
        return {};
    }

    bool on_progress_thread() const noexcept { return std::this_thread::get_id() == progress_id_; }

    /// Queues a batch for the progress thread (waiting while the in-flight cap is reached,
    /// never on the progress thread, whose callbacks may submit). Returns its id.
    result<std::uint64_t> submit_batch(std::shared_ptr<batch> b) {
        return tracker_.submit(std::move(b), !on_progress_thread(),
                               [this](std::shared_ptr<batch> x) { inbox_.post(std::move(x)); });
    }

    /// Asks every shard of every server for its counters and waits for all answers or
    /// failures. Fails from a callback (it would wait for itself) or when the client closes.
    result<std::shared_ptr<stats_gather>> gather_stats() {
        if (on_progress_thread()) return errc::invalid_argument;
        auto g = std::make_shared<stats_gather>();
        if (!tracker_.post_if_open([&] { inbox_.post(g); })) return errc::closed;
        tracker_.wait_until([&] { return g->done; });
        if (g->error) return g->error;
        if (stopping_.load(std::memory_order_acquire)) return errc::closed; // cut short
        return g;
    }

    // ---- progress thread -------------------------------------------------------------------

    void progress_loop() {
        while (!stopping_.load(std::memory_order_acquire)) {
            for (auto& item : inbox_.take())
                std::visit([this](auto& x) { this->take(std::move(x)); }, item);
            for (auto& s : servers_)
                for (auto& c : s->shards)
                    pump(*c);
            loop_.run_once(
                std::chrono::milliseconds(10),
                [this](std::uint64_t token, std::uint32_t events) { on_event(token, events); },
                [] {});
            expire();
        }
        shut_down();
    }

    void take(std::shared_ptr<batch> b) { dispatch(b); }
    void take(std::shared_ptr<stats_gather> g) { dispatch_stats(g); }
    void take(outcome o) { settle(std::move(o)); }

    void on_event(std::uint64_t token, std::uint32_t events) {
        auto& c = *reinterpret_cast<conn_type*>(token);
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
            if (auto r = c.on_readable(); !r) return fail_server(c.server(), r.error());
            if (c.violated()) return fail_server(c.server(), make_error_code(errc::protocol));
        }
        pump(c);
    }

    /// Writes what `c` has queued (values too) and updates its epoll interest.
    void pump(conn_type& c) {
        if (auto r = c.pump(); !r) return fail_server(c.server(), r.error());
        const std::uint32_t want = EPOLLIN | (c.want_write() ? EPOLLOUT : 0u);
        if (want == c.interest) return;
        (void)loop_.modify(c.fd(), want, token_of(c));
        c.interest = want;
    }

    static std::uint64_t token_of(conn_type& c) noexcept {
        return reinterpret_cast<std::uintptr_t>(&c);
    }

    /// Installs the connections of a successful connect, or marks the server down (progress
    /// thread, or init before it starts). Requests parked meanwhile are dispatched or failed.
    void settle(outcome out) {
        auto& s = *servers_[out.server];
        auto parked = std::exchange(s.parked, {});
        if (out.error) {
            mark_down(out.server);
            for (auto& p : parked)
                fail_op(out.server, p.b, *p.op, make_error_code(errc::unavailable));
            return;
        }
        s.shards = std::move(out.conns);
        s.shard_count = out.shard_count;
        for (auto& c : s.shards) {
            c->interest = EPOLLIN;
            (void)loop_.add(c->fd(), EPOLLIN, token_of(*c));
        }
        s.state = link_state::up;
        s.backoff = std::chrono::milliseconds(0);
        for (auto& p : parked)
            dispatch_one(p.b, *p.op);
        flush_groups();
    }

    /// Closes every connection of server `i` (failing what was on them) and schedules a
    /// reconnection after a backoff.
    void mark_down(std::size_t i, std::error_code ec = make_error_code(errc::unavailable)) {
        auto& s = *servers_[i];
        for (auto& c : s.shards) {
            loop_.remove(c->fd());
            c->close(ec);
        }
        s.shards.clear();
        s.back_off(jitter_rng_);
    }

    /// Hands server `i` to the connector thread.
    void start_connect(std::size_t i) {
        auto& s = *servers_[i];
        s.state = link_state::connecting;
        connector_->post([this, i] {
            return open_connections(transport_, i, servers_[i]->endpoint, cfg_, tracker_,
                                    servers_[i]->stats);
        });
        std::lock_guard lock(s.stats.m);
        ++s.stats.counts.reconnects;
    }

    void dispatch(const std::shared_ptr<batch>& b) {
        if (b->ops.empty()) return tracker_.finish(b);
        b->deadline = clock::now() + cfg_.request_timeout;
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
                return tracker_.complete(b, op, make_error_code(errc::invalid_argument));
            if (op.kind == op_kind::put && (op.options.meta.size() > cfg_.limits.max_meta ||
                                            op.value.size() > cfg_.limits.max_value))
                return tracker_.complete(b, op, make_error_code(errc::too_large));
            srv = locate(op.key).first;
        }
        auto& s = *servers_[srv];
        if (s.state == link_state::down && clock::now() >= s.retry_at) start_connect(srv);
        if (s.state == link_state::connecting) {
            s.parked.push_back({b, &op});
            return;
        }
        const auto shard = b->raw_target ? b->raw_target->second : locate(op.key).second;
        auto* c = s.conn(shard);
        if (!c) return fail_op(srv, b, op, make_error_code(errc::unavailable));
        auto& g = (op.kind == op_kind::exists ? exists_groups_ : groups_)[{c, b.get()}];
        g.first = b;
        g.second.push_back(&op);
    }

    void flush_groups() {
        auto groups = std::exchange(groups_, {});
        auto exists = std::exchange(exists_groups_, {});
        for (auto& [key, g] : groups) {
            const batch& b = *g.first;
            key.first->send_batch(g.first, g.second,
                                  [&](const operation& op) { return wire_key(b, op); });
            pump(*key.first);
        }
        for (auto& [key, g] : exists) {
            const batch& b = *g.first;
            key.first->send_exists(g.first, g.second,
                                   [&](const operation& op) { return wire_key(b, op); });
            pump(*key.first);
        }
    }

    std::string wire_key(const batch& b, const operation& op) const {
        return b.raw_target ? op.key : cfg_.key_prefix + op.key;
    }

    /// Completes an operation that failed before or without a reply.
    void fail_op(std::size_t server, const std::shared_ptr<batch>& b, operation& op,
                 std::error_code ec, bool timed_out = false) {
        servers_[server]->stats.failure(timed_out || ec == make_error_code(errc::timed_out));
        tracker_.complete(b, op, ec);
    }

    void dispatch_stats(const std::shared_ptr<stats_gather>& g) {
        g->server_errors.assign(servers_.size(), {});
        for (std::size_t i = 0; i < servers_.size(); ++i) {
            for (std::uint32_t k = 0; k < std::max<std::uint32_t>(1, servers_[i]->shard_count);
                 ++k) {
                auto* c = servers_[i]->conn(k);
                if (!c) {
                    g->server_errors[i] = make_error_code(errc::unavailable);
                    continue;
                }
                c->send_stats(g, clock::now() + cfg_.request_timeout);
                ++g->remaining;
                pump(*c);
            }
        }
        if (g->remaining == 0) tracker_.notify([&] { g->done = true; });
    }

    /// Marks server `i` for failing; done in expire(), after the current batch of events, so
    /// that no connection is destroyed while an event still refers to it.
    void fail_server(std::size_t i, std::error_code ec) { failed_.emplace_back(i, ec); }

    /// Fails the servers marked failed (a broken connection makes its server unavailable; only
    /// protocol and authentication failures keep their own code), fences and fails a server
    /// whose requests passed their deadline, and fails parked requests that waited too long.
    void expire() {
        for (auto [i, ec] : std::exchange(failed_, {}))
            if (servers_[i]->state == link_state::up)
                mark_down(i, ec == make_error_code(errc::protocol) ||
                                     ec == make_error_code(errc::unauthenticated)
                                 ? ec
                                 : make_error_code(errc::unavailable));
        const auto now = clock::now();
        for (std::size_t i = 0; i < servers_.size(); ++i) {
            auto& s = *servers_[i];
            if (std::ranges::any_of(s.shards, [&](const auto& c) { return c->late(now); }))
                mark_down(i, make_error_code(errc::timed_out));
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

    /// After the loop: nothing more is taken, everything in flight or waiting completes with
    /// errc::closed.
    void shut_down() {
        tracker_.close(); // what was submitted before is in the mailbox
        for (auto& s : servers_) {
            for (auto& c : s->shards) {
                loop_.remove(c->fd());
                c->close(make_error_code(errc::closed));
            }
            s->shards.clear();
            for (auto& p : std::exchange(s->parked, {}))
                tracker_.complete(p.b, *p.op, make_error_code(errc::closed));
        }
        for (auto& item : inbox_.take()) {
            if (auto* b = std::get_if<std::shared_ptr<batch>>(&item)) {
                if ((*b)->ops.empty()) tracker_.finish(*b);
                for (auto& op : (*b)->ops)
                    tracker_.complete(*b, op, make_error_code(errc::closed));
            } else if (auto* g = std::get_if<std::shared_ptr<stats_gather>>(&item)) {
                tracker_.notify([&] {
                    (*g)->error = make_error_code(errc::closed);
                    (*g)->done = true;
                });
            }
        }
    }

    client_config cfg_;
    Transport transport_;
    placement placement_;
    std::vector<std::unique_ptr<link_type>> servers_;
    batch_tracker tracker_;
    event_loop loop_;
    mailbox<inbox_item> inbox_;
    std::atomic<bool> stopping_{false};
    std::thread progress_;
    std::thread::id progress_id_;

    // progress thread only
    std::vector<std::pair<std::size_t, std::error_code>> failed_;
    std::map<std::pair<conn_type*, batch*>,
             std::pair<std::shared_ptr<batch>, std::vector<operation*>>>
        groups_, exists_groups_;
    std::minstd_rand jitter_rng_{static_cast<std::uint32_t>(::getpid())};

    std::mutex registry_mutex_; // guards the two below
    std::map<std::uint64_t, std::span<std::byte>> registered_;
    std::uint64_t next_registration_ = 0;

    std::unique_ptr<connector<outcome>> connector_; // last: its jobs use the members above
};

} // namespace memkv::detail::client
