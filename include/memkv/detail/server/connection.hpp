// SPDX-License-Identifier: Apache-2.0
// server::connection: one attached connection of a shard, with its control channel, its data
// path and the operations it started.
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/event_loop.hpp>
#include <memkv/detail/frame_channel.hpp>
#include <memkv/detail/inline_data_path.hpp>
#include <memkv/detail/server/dispatch.hpp>
#include <memkv/detail/server/op_host.hpp>
#include <memkv/detail/server/record_write.hpp>
#include <memkv/detail/server/shard_services.hpp>
#include <memkv/detail/server/value_read.hpp>
#include <memkv/protocol/messages.hpp>

#include <sys/epoll.h>

#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

namespace memkv::detail::server {

/// What a shard needs of a connection, whatever its stream and data path.
class connection_base {
public:
    virtual ~connection_base() = default;
    virtual std::uint64_t id() const noexcept = 0;
    /// Readiness of its socket (epoll events).
    virtual void on_event(std::uint32_t events) = 0;
    /// Flushes replies, resumes a paused channel and sets the epoll interest (after anything
    /// that may change them: the shard calls it for every connection marked dirty).
    virtual void update() = 0;
    /// Completions of its data path for the shard to route (data_path::poll).
    virtual std::size_t poll_path(std::span<io_completion> out) = 0;
    /// Stop taking requests (the server stops): see server::stop().
    virtual void drain() = 0;
    /// Nothing left to answer or to write.
    virtual bool quiet() const noexcept = 0;
    /// Detaches its operations, fences its data path and leaves the event loop; the shard then
    /// routes what poll_path() still returns and destroys it.
    virtual void close() = 0;
};

/// The shard's bookkeeping that connections report to: which need update() and which must
/// close at the end of the loop round (never while a caller still holds a reference).
struct connection_marks {
    std::vector<std::uint64_t> dirty, doomed;
};

/// A connection of shard `shard` over `Stream`, moving payloads through `Path`. It decodes the
/// frames of its channel (dispatch: ids, caps, admission), starts and owns the operations
/// (record_write, value_read) and answers the rest itself (ping, stats, exists); it is those
/// operations' op_host. Back-pressure: it stops reading while its channel waits for a pull to
/// be armed, while it is over its in-flight cap (held buffers and queued bytes), and, draining,
/// unless a PUT's value is still arriving.
template <class Stream, data_path Path, store Store>
class connection final : public connection_base, public op_host {
public:
    using channel_type = frame_channel<Stream>;
    using stats_fn = std::function<std::vector<std::byte>()>;

    connection(std::uint64_t id, channel_type ch, std::string tenant, std::uint64_t attach_id,
               shard_services<Store>& s, shard_identity shard, event_loop& loop,
               connection_marks& marks, stats_fn stats)
        : id_(id), ch_(std::move(ch)), path_(ch_, s.cfg.limits.max_chunk),
          tenant_(std::move(tenant)), ledger_(attach_id, s.counters), s_(s), shard_(shard),
          loop_(loop), marks_(marks), stats_(std::move(stats)) {}
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;

    /// Joins the loop and answers the attach; frames sent right after it may already sit in
    /// the channel's staging buffer.
    result<void> open(std::uint64_t attach_id, bool draining) {
        draining_ = draining;
        MEMKV_TRY(loop_.add(ch_.stream().fd(), EPOLLIN, id_));
        interest_ = EPOLLIN;
        ch_.send(reply_header(protocol::opcode::attach, attach_id), {});
        s_.counters.connections.fetch_add(1, std::memory_order_relaxed);
        if (auto r = ch_.on_readable(*this); !r) fail(r.error());
        flush();
        mark();
        return {};
    }

    // ---- connection_base -------------------------------------------------------------------

    std::uint64_t id() const noexcept override { return id_; }

    void on_event(std::uint32_t events) override {
        if (dead_) return;
        if ((events & (EPOLLERR | EPOLLHUP)) && !(events & EPOLLIN))
            return fail(make_error_code(errc::closed));
        if (events & EPOLLIN)
            if (auto r = ch_.on_readable(*this); !r) return fail(r.error());
        if (events & EPOLLOUT) flush();
        mark();
    }

    void update() override {
        dirty_ = false;
        if (dead_) return;
        if (ch_.want_write()) flush(); // replies go out before the next wait
        if (dead_) return;
        if (ch_.paused())
            if (auto r = ch_.resume(*this); !r) return fail(r.error());
        std::uint32_t want = 0;
        // Draining: read only while a PUT's value is still arriving, so that it can finish.
        if (!ch_.paused() && (!draining_ || receiving()) && !over_cap()) want |= EPOLLIN;
        if (ch_.want_write()) want |= EPOLLOUT;
        if (want != interest_) {
            (void)loop_.modify(ch_.stream().fd(), want, id_);
            interest_ = want;
        }
    }

    std::size_t poll_path(std::span<io_completion> out) override { return path_.poll(out); }

    void drain() override {
        draining_ = true;
        mark();
    }

    bool quiet() const noexcept override { return ledger_.idle() && !ch_.want_write(); }

    void close() override {
        loop_.remove(ch_.stream().fd());
        auto ops = std::move(ops_);
        ops_.clear();
        for (auto& [id, op] : ops)
            std::visit([](auto& o) { o->detach(); }, op);
        path_.fence(); // queued frames die with the channel: their buffers come back
        s_.counters.connections.fetch_sub(1, std::memory_order_relaxed);
    }

    // ---- frame_channel handler -------------------------------------------------------------

    frame_action on_frame(const protocol::frame_header& h, std::span<const std::byte> body) {
        using protocol::opcode;
        if (h.is_reply()) return protocol_error();
        switch (h.code()) {
        case opcode::ping:
        case opcode::stats:
            if (!ledger_.begin(h.request_id) || h.body_len || h.payload_len)
                return protocol_error();
            send_reply(h.code(), h.request_id, {},
                       h.code() == opcode::stats ? stats_() : std::vector<std::byte>{});
            return frame_action::discard;
        case opcode::put:
            // A PUT paused on its own frame is dispatched again on resume: start it only once
            // (it may have been answered meanwhile: a refusal skips its value).
            if (h.request_id == paused_put_ || ops_.contains(h.request_id)) return put_data(h);
            [[fallthrough]];
        case opcode::get:
        case opcode::del: {
            if (!ledger_.begin(h.request_id)) return protocol_error();
            auto r = decode_request(h, body, ch_limits());
            if (!r) return malformed(r.error());
            if (r->op == opcode::put && !room_for_put()) return protocol_error();
            start(*r);
            return r->op == opcode::put ? put_data(h) : frame_action::discard;
        }
        case opcode::exists:
            if (h.payload_len || !ledger_.begin(h.request_id)) return protocol_error();
            return exists(h, body);
        case opcode::batch:
            return batch(h, body);
        case opcode::data:
            // A data frame carries at least one byte of a transfer in progress.
            if (h.body_len || h.payload_len == 0) return protocol_error();
            return data(h);
        case opcode::attach:
            return protocol_error();
        }
        return protocol_error();
    }

    void on_payload(const protocol::frame_header& h, bool crc_ok) { path_.on_payload(h, crc_ok); }

    // ---- op_host ---------------------------------------------------------------------------

    result<void> pull(const protocol::payload_ref& ref, std::span<std::byte> dst,
                      std::uint64_t tag) override {
        mark(); // a channel paused for this pull may go on
        return path_.pull(ref, dst, tag);
    }
    result<void> push(std::span<const std::byte> src, const protocol::payload_ref& ref,
                      std::uint64_t tag) override {
        mark();
        return path_.push(src, ref, tag);
    }
    void skip(const protocol::payload_ref& ref) override {
        mark();
        path_.skip(ref);
    }
    bool reply_rides_payload() const noexcept override { return Path::reply_rides_payload; }
    bool pulls_on_demand() const noexcept override { return Path::pulls_on_demand; }

    void reply(protocol::opcode op, std::uint64_t id, std::error_code status) override {
        send_reply(op, id, status, {});
    }
    void announce_get(const get_reply& r) override {
        if constexpr (Path::reply_rides_payload)
            path_.announce_reply(get_head(r), bytes_of(r.meta));
    }
    void reply_get(const get_reply& r) override {
        ch_.send(get_head(r), bytes_of(r.meta));
        answered(r.id);
    }
    void fail_get(std::uint64_t id, std::error_code status, std::uint64_t range_len,
                  bool head_out) override {
        if (!head_out) return send_reply(protocol::opcode::get, id, status, {});
        auto h = reply_header(protocol::opcode::data, id, status);
        h.value_len = range_len;
        ch_.send(h, {});
        answered(id);
    }
    void answered(std::uint64_t id) override {
        ledger_.answered(id);
        mark();
    }

    bool may_hold_buffer() const noexcept override { return !over_cap(1); }
    void held_buffers(int delta) noexcept override {
        held_ = static_cast<std::size_t>(static_cast<long>(held_) + delta);
        mark(); // a connection paused over its cap may read again
    }
    void op_done(std::uint64_t id) override {
        auto it = ops_.find(id);
        if (it == ops_.end()) return;
        if (std::holds_alternative<std::shared_ptr<record_write<Store>>>(it->second)) --puts_;
        ops_.erase(it);
        mark();
    }

private:
    using op_ptr =
        std::variant<std::shared_ptr<record_write<Store>>, std::shared_ptr<value_read<Store>>>;

    const protocol::limits& ch_limits() const noexcept { return s_.cfg.limits; }

    void mark() {
        if (dirty_) return;
        dirty_ = true;
        marks_.dirty.push_back(id_);
    }

    void send_reply(protocol::opcode op, std::uint64_t id, std::error_code status,
                    std::vector<std::byte> body) {
        ch_.send(reply_header(op, id, status), std::move(body));
        answered(id);
    }

    protocol::frame_header get_head(const get_reply& r) const noexcept {
        auto h = reply_header(protocol::opcode::get, r.id);
        h.length = r.value_size;
        h.value_len = r.range_len;
        return h;
    }

    static std::vector<std::byte> bytes_of(const std::string& s) {
        const auto* p = reinterpret_cast<const std::byte*>(s.data());
        return {p, p + s.size()};
    }

    /// Starts an admitted PUT, GET or DEL, or answers its refusal.
    void start(const data_request& r) {
        using protocol::opcode;
        auto& c = s_.counters;
        (r.op == opcode::put   ? c.puts
         : r.op == opcode::get ? c.gets
                               : c.dels)
            .fetch_add(1, std::memory_order_relaxed);
        if (auto refused = admit(draining_, r.key, shard_, c)) {
            if (r.op == opcode::put && r.value_len > 0)
                path_.skip({r.id, 0, r.value_len, r.value_len}); // its value is read and dropped
            return send_reply(r.op, r.id, refused, {});
        }
        if (r.op == opcode::get) return start_get(r);
        storage::record_info info;
        info.tenant = tenant_;
        info.key.assign(reinterpret_cast<const char*>(r.key.data()), r.key.size());
        if (r.op == opcode::put) {
            info.meta.assign(reinterpret_cast<const char*>(r.meta.data()), r.meta.size());
            info.flags = (r.flags & protocol::flags::pin) ? storage::record_flags::pinned : 0;
            info.value_len = r.value_len;
            // The wire carries 64 bits; more than 2^32 s (136 years) is taken as 2^32 s.
            const std::uint64_t ttl = std::min<std::uint64_t>(r.length, 0xffffffffu);
            info.expires_unix_ms = ttl ? storage::unix_ms() + ttl * 1000 : 0;
        }
        auto op =
            std::make_shared<record_write<Store>>(s_, *this, r.id, r.op, std::move(info), r.flags);
        ops_.emplace(r.id, op);
        ++puts_;
        op->start();
    }

    void start_get(const data_request& r) {
        auto key = storage::index_key(tenant_, r.key);
        const auto* e = s_.engine.find(key, s_.now_ms());
        if (!e) {
            s_.counters.misses.fetch_add(1, std::memory_order_relaxed);
            return send_reply(protocol::opcode::get, r.id, make_error_code(errc::not_found), {});
        }
        if (r.offset > e->value_len)
            return send_reply(protocol::opcode::get, r.id, make_error_code(errc::invalid_argument),
                              {});
        s_.counters.hits.fetch_add(1, std::memory_order_relaxed);
        const auto len =
            r.length == 0 ? e->value_len - r.offset : std::min(r.length, e->value_len - r.offset);
        auto op =
            std::make_shared<value_read<Store>>(s_, *this, r.id, *e, std::move(key), r.offset, len);
        ops_.emplace(r.id, op);
        op->start();
    }

    frame_action batch(const protocol::frame_header& h, std::span<const std::byte> body) {
        using protocol::opcode;
        if (h.payload_len) return protocol_error();
        auto subs = protocol::decode_batch(h, body, ch_limits());
        if (!subs) return malformed(subs.error());
        if (!ledger_.begin_batch(h.request_id, *subs)) return protocol_error();
        s_.counters.batches.fetch_add(1, std::memory_order_relaxed);
        for (const auto& sub : *subs) {
            if (!ledger_.begin(sub.id)) return protocol_error();
            if (sub.op == opcode::put && !room_for_put()) return protocol_error();
            start(from_sub_request(sub));
        }
        return frame_action::discard;
    }

    frame_action exists(const protocol::frame_header& h, std::span<const std::byte> body) {
        using protocol::opcode;
        auto keys = protocol::decode_exists_request(h, body, ch_limits());
        if (!keys) return malformed(keys.error());
        const bool sizes = h.flags & protocol::flags::want_sizes;
        const bool metas = h.flags & protocol::flags::want_meta;
        protocol::exists_reply r;
        std::vector<std::span<const std::byte>> meta;
        if (draining_) return reply_now(opcode::exists, h.request_id, errc::closed);
        const auto now = s_.now_ms();
        for (const auto& k : *keys) {
            if (auto refused = admit(false, k, shard_, s_.counters)) {
                send_reply(opcode::exists, h.request_id, refused, {});
                return frame_action::discard;
            }
            const auto* e = s_.engine.find(storage::index_key(tenant_, k), now);
            r.present.push_back(e != nullptr);
            if (sizes) r.sizes.push_back(e ? e->value_len : 0);
            if (metas)
                meta.push_back(e ? std::as_bytes(std::span(e->meta))
                                 : std::span<const std::byte>{});
        }
        r.meta = std::move(meta);
        s_.counters.exists_keys.fetch_add(keys->size(), std::memory_order_relaxed);
        auto out = protocol::encode_exists_reply(r, h.flags);
        // Sizes and metadata of thousands of keys may not fit one body: the client splits.
        if (out.size() > ch_limits().max_body)
            return reply_now(opcode::exists, h.request_id, errc::too_large);
        send_reply(opcode::exists, h.request_id, {}, std::move(out));
        return frame_action::discard;
    }

    frame_action reply_now(protocol::opcode op, std::uint64_t id, errc e) {
        send_reply(op, id, make_error_code(e), {});
        return frame_action::discard;
    }

    /// data() for a PUT's own frame, remembering a pause on it (see paused_put_).
    frame_action put_data(const protocol::frame_header& h) {
        const auto a = data(h);
        paused_put_ = a == frame_action::pause ? h.request_id : 0;
        return a;
    }

    /// Where the payload of a PUT or data frame goes (the data path decides), or a protocol
    /// error for bytes nothing expects.
    frame_action data(const protocol::frame_header& h) {
        if (h.payload_len == 0) return frame_action::discard;
        record_write<Store>* put = nullptr;
        if (auto it = ops_.find(h.request_id); it != ops_.end()) {
            const auto* w = std::get_if<std::shared_ptr<record_write<Store>>>(&it->second);
            // A frame of a PUT must carry that PUT's value length.
            if (!w || (*w)->value_len() != h.value_len) return protocol_error();
            put = w->get();
        }
        auto d = path_.on_data(h);
        if (put && put->receiving() &&
            (d == data_disposition::pause || d == data_disposition::unknown)) {
            // The stream reached bytes the PUT has no buffer for yet: it arms them now if it
            // can (pulls_on_demand), else the channel waits until it has.
            put->want(h.offset + h.payload_len);
            d = path_.on_data(h);
            if (d == data_disposition::unknown) return frame_action::pause; // no space yet
        }
        switch (d) {
        case data_disposition::accept:
            return frame_action::accept;
        case data_disposition::discard:
            return frame_action::discard;
        case data_disposition::pause:
            return frame_action::pause;
        case data_disposition::unknown:
        case data_disposition::invalid:
            break;
        }
        return protocol_error();
    }

    /// Whether a PUT's value is still arriving.
    bool receiving() const noexcept {
        for (const auto& [id, op] : ops_)
            if (const auto* w = std::get_if<std::shared_ptr<record_write<Store>>>(&op);
                w && (*w)->receiving())
                return true;
        return false;
    }

    /// PUTs in progress and refused values being drained are bounded per connection (each
    /// holds engine space or path state); a client that opens more without sending their
    /// values is broken or hostile.
    bool room_for_put() const noexcept {
        std::size_t skipped = 0;
        if constexpr (requires { path_.skipped_transfers(); }) skipped = path_.skipped_transfers();
        return puts_ + skipped < max_pending_puts;
    }
    static constexpr std::size_t max_pending_puts = 4096;

    /// True when this connection, holding `more` further buffers, is over its in-flight cap
    /// (held buffers and queued bytes) and something of it is under way whose end marks it
    /// again (a store I/O or a frame being sent). Buffers of pulls not completed (partly filled,
    /// waiting for this connection's own input) never stop it alone: PUTs whose chunks
    /// interleave would wait on each other forever.
    bool over_cap(std::size_t more = 0) const noexcept {
        const std::size_t bytes = (held_ + more) * s_.pool.buffer_size() + path_.bytes_in_flight();
        if (bytes <= s_.cfg.connection_inflight_cap) return false;
        if (ch_.want_write()) return true;
        if constexpr (requires { path_.open_pulls(); })
            return held_ > path_.open_pulls();
        else
            return held_ > 0;
    }

    void flush() {
        if (dead_) return;
        if (auto r = ch_.flush(); !r) return fail(r.error());
        if constexpr (requires { path_.on_sent(); }) path_.on_sent();
    }

    frame_action protocol_error() { return malformed(make_error_code(errc::protocol)); }

    /// A frame that breaks the protocol's rules (errc::protocol) or a cap (too_large): the
    /// channel stops and the connection fails.
    frame_action malformed(std::error_code ec) {
        fail(ec);
        return frame_action::pause;
    }

    /// Marks the connection dead; the shard closes it at the end of the loop round. Malformed
    /// or oversized frames get a final error reply (request id 0) first; MAC failures get
    /// nothing (replies never reveal which check failed).
    void fail(std::error_code ec) {
        if (dead_) return;
        if (ec == make_error_code(errc::protocol) || ec == make_error_code(errc::too_large)) {
            s_.counters.protocol_errors.fetch_add(1, std::memory_order_relaxed);
            ch_.send(reply_header(protocol::opcode::ping, 0, ec), {});
            (void)ch_.flush();
        } else if (ec == make_error_code(errc::unauthenticated)) {
            s_.counters.auth_failures.fetch_add(1, std::memory_order_relaxed);
        }
        dead_ = true;
        marks_.doomed.push_back(id_);
    }

    std::uint64_t id_;
    channel_type ch_;
    Path path_;
    std::string tenant_;
    request_ledger ledger_;
    shard_services<Store>& s_;
    shard_identity shard_;
    event_loop& loop_;
    connection_marks& marks_;
    stats_fn stats_;
    std::unordered_map<std::uint64_t, op_ptr> ops_;
    std::size_t held_ = 0; // pool buffers held by this connection's operations
    std::size_t puts_ = 0; // record writes (PUT, DEL) in ops_
    /// The PUT whose own frame the channel paused on (waiting for space or a buffer): its
    /// re-dispatch on resume continues it even if it was answered meanwhile.
    std::uint64_t paused_put_ = 0;
    std::uint32_t interest_ = 0;
    bool draining_ = false, dirty_ = false, dead_ = false;
};

} // namespace memkv::detail::server
