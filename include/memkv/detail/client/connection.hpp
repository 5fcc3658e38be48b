// SPDX-License-Identifier: Apache-2.0
// client::connection: one connection of the client to one shard of one server, with the
// requests in flight on it.
#pragma once

#include <memkv/client_config.hpp>
#include <memkv/client_types.hpp>
#include <memkv/detail/client/batch_tracker.hpp>
#include <memkv/detail/client/link_stats.hpp>
#include <memkv/detail/client/payload.hpp>
#include <memkv/detail/client/requests.hpp>
#include <memkv/detail/client/request_encoder.hpp>
#include <memkv/detail/frame_channel.hpp>
#include <memkv/detail/handshake_io.hpp>
#include <memkv/protocol/messages.hpp>

#include <poll.h>

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <variant>
#include <vector>

namespace memkv::detail::client {

/// What a connection lends from its client: the configuration, the batch tracker and the
/// record of its server.
struct connection_context {
    const client_config& cfg;
    batch_tracker& tracker;
    link_stats& stats;
    /// Completes a stats gather (under the tracker's lock).
    void finish_gather(const std::shared_ptr<stats_gather>& g) {
        tracker.notify([&] { g->done = true; });
    }
};

/// A connection to shard `shard` of server `server`. It sends the requests the client groups
/// for it, pushes PUT values out in data frames (outgoing_value, round robin over its PUTs),
/// decodes replies and completes operations. A reply that breaks the protocol makes it
/// violated(); the client then fails the whole server.
template <class Stream>
class connection {
public:
    connection(std::size_t server, std::uint32_t shard, frame_channel<Stream> ch,
               connection_context ctx)
        : server_(server), shard_(shard), ch_(std::move(ch)), ctx_(ctx) {}
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;

    std::size_t server() const noexcept { return server_; }
    int fd() noexcept { return ch_.stream().fd(); }
    bool want_write() const noexcept { return ch_.want_write(); }
    bool violated() const noexcept { return violated_; }
    std::uint32_t interest = 0; ///< its epoll interest, kept by the client

    /// Sends the attach and waits for its answer (blocking, until `deadline`: the connector
    /// thread). The server's refusal comes back as its status.
    result<void> attach(clock::time_point deadline) {
        const auto f = bare_frame(protocol::opcode::attach, next_id_++, shard_);
        ch_.send(f.header, {});
        while (ch_.want_write()) {
            MEMKV_TRY(ch_.flush());
            if (ch_.want_write()) MEMKV_TRY(wait_fd(fd(), POLLOUT, deadline));
        }
        while (!attached_) {
            MEMKV_TRY(wait_fd(fd(), POLLIN, deadline));
            MEMKV_TRY(ch_.on_readable(*this));
            if (attach_status_ != 0) return make_error_code(static_cast<errc>(attach_status_));
        }
        return {};
    }

    /// Sends the puts, gets and deletes of `b` for this connection as batch frames.
    /// `wire_key(op)` is an operation's key as sent.
    template <class WireKey>
    void send_batch(const std::shared_ptr<batch>& b, std::span<operation* const> ops,
                    WireKey wire_key) {
        const auto now = clock::now();
        std::vector<std::string> keys;
        std::vector<std::size_t> sizes;
        for (auto* op : ops) {
            keys.push_back(wire_key(*op));
            sizes.push_back(batch_entry_size(*op, keys.back().size()));
        }
        const auto& lim = ctx_.cfg.limits;
        for (std::size_t first = 0, n = 0; first < ops.size(); first += n) {
            n = frame_span(sizes, first, lim.max_batch, lim.max_body);
            std::vector<protocol::sub_request> subs;
            const auto batch_id = next_id_++;
            for (std::size_t i = first; i < first + n; ++i) {
                const auto id = next_id_++;
                subs.push_back(sub_request_of(*ops[i], keys[i], id));
                track(id, *ops[i], b, now);
            }
            const auto f = batch_frame(batch_id, subs);
            ch_.send(f.header, f.body);
            for (std::size_t i = first; i < first + n; ++i)
                if (ops[i]->kind == op_kind::put && !ops[i]->value.empty())
                    put_queue_.push_back(subs[i - first].id);
        }
    }

    /// Sends the exists operations of `b` for this connection: frames whose request and reply
    /// bodies both fit max_body.
    template <class WireKey>
    void send_exists(const std::shared_ptr<batch>& b, std::span<operation* const> ops,
                     WireKey wire_key) {
        std::vector<std::string> keys;
        std::vector<std::size_t> sizes;
        for (auto* op : ops) {
            keys.push_back(wire_key(*op));
            sizes.push_back(2 + keys.back().size());
        }
        const auto& lim = ctx_.cfg.limits;
        for (std::size_t first = 0, n = 0; first < ops.size(); first += n) {
            n = frame_span(sizes, first, exists_chunk(lim), lim.max_body);
            exists_request r{{b, clock::now(), b->deadline},
                             {ops.begin() + first, ops.begin() + first + n}};
            const auto f = exists_frame(next_id_, std::span(keys).subspan(first, n));
            inflight_.emplace(next_id_++, std::move(r));
            ch_.send(f.header, f.body);
        }
    }

    /// Asks this shard for its counters, for `g`.
    void send_stats(const std::shared_ptr<stats_gather>& g, clock::time_point deadline) {
        const auto f = bare_frame(protocol::opcode::stats, next_id_);
        inflight_.emplace(next_id_++, stats_request{{nullptr, clock::now(), deadline}, g});
        ch_.send(f.header, {});
    }

    /// Reads what arrived and completes what it answers.
    result<void> on_readable() { return ch_.on_readable(*this); }

    /// Queues value chunks of pending puts (round robin, a few chunks ahead) and writes until
    /// every value is sent or the socket is full.
    result<void> pump() {
        for (;;) {
            queue_chunks();
            MEMKV_TRY(ch_.flush());
            for (auto id : std::exchange(ch_.sent_tokens(), {}))
                on_sent(id);
            if (put_queue_.empty() || ch_.want_write()) return {};
        }
    }

    /// Whether a request on it passed its deadline.
    bool late(clock::time_point now) const noexcept {
        for (const auto& [id, r] : inflight_)
            if (std::visit([&](const auto& q) { return now >= q.deadline; }, r)) return true;
        return false;
    }

    /// Closes the channel first (so that nothing can land in a caller's buffer afterwards:
    /// the fence) and fails every request on it with `ec`. A timeout of a request already on
    /// the wire leaves a put's or a delete's outcome unknown (errc::timed_out); a read simply
    /// failed (errc::unavailable).
    void close(std::error_code ec);

    // ---- frame_channel handler -------------------------------------------------------------

    frame_action on_frame(const protocol::frame_header& h, std::span<const std::byte> body);
    void on_payload(const protocol::frame_header& h, bool crc_ok);

private:
    void track(std::uint64_t id, operation& op, const std::shared_ptr<batch>& b,
               clock::time_point now) {
        const request_base base{b, now, b->deadline};
        switch (op.kind) {
        case op_kind::put:
            inflight_.emplace(id, put_request{base, &op, {}});
            break;
        case op_kind::get:
            inflight_.emplace(id, get_request{base, &op, {}});
            break;
        default:
            inflight_.emplace(id, del_request{base, &op});
            break;
        }
    }

    void queue_chunks() {
        const auto chunk = ctx_.cfg.chunk_size;
        while (!put_queue_.empty() && ch_.queued_bytes() < 2 * chunk) {
            const auto id = put_queue_.front();
            put_queue_.pop_front();
            auto it = inflight_.find(id);
            if (it == inflight_.end()) continue;
            auto& r = std::get<put_request>(it->second);
            const auto v = r.op->value;
            const auto h = data_header(id, v.size(), r.value.sent);
            ch_.send(h, {}, r.value.next_chunk(v, chunk), id); // borrows the caller's value
            if (r.value.more(v)) put_queue_.push_back(id);
        }
    }

    /// A data frame of put `id` was written: the caller's value is no longer borrowed by it.
    void on_sent(std::uint64_t id) {
        auto it = inflight_.find(id);
        if (it == inflight_.end()) return;
        auto& r = std::get<put_request>(it->second);
        --r.value.queued;
        if (r.value.complete(r.op->value)) done(it, r.value.status);
    }

    frame_action on_get(typename std::map<std::uint64_t, request>::iterator it,
                        const protocol::frame_header& h, std::span<const std::byte> body,
                        std::error_code status);
    frame_action on_exists(typename std::map<std::uint64_t, request>::iterator it,
                           std::span<const std::byte> body, std::error_code status);
    void on_stats(typename std::map<std::uint64_t, request>::iterator it,
                  std::span<const std::byte> body, std::error_code status);

    /// Maps frame `h`'s payload into the GET's destination.
    frame_action payload(get_request& r, const protocol::frame_header& h) {
        if (!r.value.target(h, ch_.payload_target(), sink_)) return violation();
        return frame_action::accept;
    }

    /// Completes the request at `it` with `status` (replied: its latency counts).
    void done(typename std::map<std::uint64_t, request>::iterator it, std::error_code status) {
        auto r = std::move(it->second);
        inflight_.erase(it);
        std::visit(
            [&](auto& q) {
                if constexpr (requires { q.op; }) {
                    ctx_.stats.reply(q.start, status);
                    ctx_.tracker.complete(q.b, *q.op, status);
                }
            },
            r);
    }

    frame_action violation() {
        violated_ = true;
        return frame_action::pause;
    }

    std::size_t server_;
    std::uint32_t shard_;
    frame_channel<Stream> ch_;
    connection_context ctx_;
    std::uint64_t next_id_ = 1;
    std::map<std::uint64_t, request> inflight_;
    std::deque<std::uint64_t> put_queue_; // puts with value still to queue
    std::vector<std::byte> sink_;         // payload of requests that already failed
    bool attached_ = false, violated_ = false;
    std::uint32_t attach_status_ = 0;
};

template <class Stream>
frame_action connection<Stream>::on_frame(const protocol::frame_header& h,
                                          std::span<const std::byte> body) {
    using protocol::opcode;
    if (!h.is_reply()) return violation();
    if (h.code() == opcode::attach) {
        attach_status_ = h.status();
        attached_ = h.status() == 0;
        return frame_action::discard;
    }
    auto it = inflight_.find(h.request_id);
    if (it == inflight_.end()) return violation();
    const std::error_code status =
        h.status() ? make_error_code(static_cast<errc>(h.status())) : std::error_code{};
    auto& r = it->second;
    switch (h.code()) {
    case opcode::put: {
        auto* p = std::get_if<put_request>(&r);
        if (!p) return violation();
        p->value.replied = true;
        p->value.status = status;
        if (p->value.complete(p->op->value)) done(it, status);
        return frame_action::discard;
    }
    case opcode::del:
        if (!std::holds_alternative<del_request>(r)) return violation();
        done(it, status);
        return frame_action::discard;
    case opcode::stats:
        if (!std::holds_alternative<stats_request>(r)) return violation();
        on_stats(it, body, status);
        return frame_action::discard;
    case opcode::exists:
        if (!std::holds_alternative<exists_request>(r)) return violation();
        return on_exists(it, body, status);
    case opcode::get:
        if (!std::holds_alternative<get_request>(r)) return violation();
        return on_get(it, h, body, status);
    case opcode::data: {
        auto* g = std::get_if<get_request>(&r);
        if (!g || (g->value.expect == 0 && !h.status())) return violation();
        if (h.status()) { // the server failed midway
            done(it, status);
            return frame_action::discard;
        }
        return payload(*g, h);
    }
    default:
        return violation();
    }
}

template <class Stream>
frame_action connection<Stream>::on_get(typename std::map<std::uint64_t, request>::iterator it,
                                        const protocol::frame_header& h,
                                        std::span<const std::byte> body, std::error_code status) {
    auto& r = std::get<get_request>(it->second);
    auto& op = *r.op;
    if (status || (h.payload_len == 0 && h.value_len == 0)) {
        if (!status) {
            op.meta_out.assign(body.begin(), body.end());
            op.value_size = h.length;
            op.size = 0;
        }
        done(it, status);
        return frame_action::discard;
    }
    // Checked before allocating: never more than a value can be, or than was asked for.
    if (h.value_len > ctx_.cfg.limits.max_value || (op.length != 0 && h.value_len > op.length))
        return violation();
    op.meta_out.assign(body.begin(), body.end());
    op.value_size = h.length;
    r.value.begin(op, h.value_len);
    return payload(r, h);
}

template <class Stream>
void connection<Stream>::on_payload(const protocol::frame_header& h, bool crc_ok) {
    auto it = inflight_.find(h.request_id);
    if (it == inflight_.end()) return;
    auto* r = std::get_if<get_request>(&it->second);
    if (!r || !r->value.arrived(h, crc_ok, ctx_.cfg.verify_checksums, *r->op)) return;
    done(it, r->op->status);
}

template <class Stream>
frame_action connection<Stream>::on_exists(typename std::map<std::uint64_t, request>::iterator it,
                                           std::span<const std::byte> body,
                                           std::error_code status) {
    auto r = std::move(std::get<exists_request>(it->second));
    const auto n = static_cast<std::uint32_t>(r.ops.size());
    if (status) {
        inflight_.erase(it);
        for (auto* op : r.ops)
            ctx_.tracker.complete(r.b, *op, status);
        return frame_action::discard;
    }
    auto d = protocol::decode_exists_reply(
        n, protocol::flags::want_sizes | protocol::flags::want_meta, body, ctx_.cfg.limits);
    if (!d) {
        it->second = std::move(r); // failed with the connection
        return violation();
    }
    inflight_.erase(it);
    ctx_.stats.reply(r.start, {});
    for (std::uint32_t i = 0; i < n; ++i) {
        auto& op = *r.ops[i];
        op.exists = d->present[i];
        op.size = d->sizes.empty() ? 0 : d->sizes[i];
        if (!d->meta.empty()) op.meta_out.assign(d->meta[i].begin(), d->meta[i].end());
        ctx_.tracker.complete(r.b, op, {});
    }
    return frame_action::discard;
}

template <class Stream>
void connection<Stream>::on_stats(typename std::map<std::uint64_t, request>::iterator it,
                                  std::span<const std::byte> body, std::error_code status) {
    auto g = std::get<stats_request>(it->second).gather;
    inflight_.erase(it);
    if (auto d = protocol::decode_stats(body); d && !status) {
        const std::string p = "server" + std::to_string(server_) + ".";
        for (auto& [name, v] : *d)
            g->entries.push_back({p + name, v});
    } else {
        g->server_errors[server_] = status ? status : d.error();
    }
    if (--g->remaining == 0) ctx_.finish_gather(g);
}

template <class Stream>
void connection<Stream>::close(std::error_code ec) {
    ch_.stream().close();
    auto inflight = std::move(inflight_);
    inflight_.clear();
    put_queue_.clear();
    const bool timeout = ec == make_error_code(errc::timed_out);
    auto status_for = [&](const operation& op) {
        if (!timeout) return ec;
        const bool write = op.kind == op_kind::put || op.kind == op_kind::del;
        return write ? ec : make_error_code(errc::unavailable);
    };
    auto fail = [&](const std::shared_ptr<batch>& b, operation& op) {
        ctx_.stats.failure(timeout);
        ctx_.tracker.complete(b, op, status_for(op));
    };
    for (auto& [id, r] : inflight) {
        std::visit(
            [&](auto& q) {
                using Q = std::decay_t<decltype(q)>;
                if constexpr (std::is_same_v<Q, stats_request>) {
                    q.gather->server_errors[server_] = ec;
                    if (--q.gather->remaining == 0) ctx_.finish_gather(q.gather);
                } else if constexpr (std::is_same_v<Q, exists_request>) {
                    for (auto* op : q.ops)
                        fail(q.b, *op);
                } else if constexpr (std::is_same_v<Q, put_request>) {
                    // Answered: only its unsent value is dropped.
                    if (q.value.replied)
                        ctx_.tracker.complete(q.b, *q.op, q.value.status);
                    else
                        fail(q.b, *q.op);
                } else {
                    fail(q.b, *q.op);
                }
            },
            r);
    }
}

} // namespace memkv::detail::client
