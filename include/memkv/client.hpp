// SPDX-License-Identifier: Apache-2.0
// memkv::client<Transport>: a thread-safe client that shards keys across servers.
#pragma once

#include <memkv/client_config.hpp>
#include <memkv/client_types.hpp>
#include <memkv/concepts.hpp>
#include <memkv/detail/client/core.hpp>
#include <memkv/detail/log.hpp>

#include <unistd.h>

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace memkv {

/// A client of a set of memkv servers. Keys are placed by the function in docs/protocol.md
/// (rendezvous over servers, then a shard); the client keeps one connection per (server, shard).
/// A movable handle (`auto c = client<T>::create(cfg); c->put(...)`); a moved-from client may
/// only be destroyed or assigned to.
///
/// Thread-safe: any number of threads may call it at once. One progress thread does all network
/// I/O. Completions are reported by callback (on the progress thread), by polling
/// (`poll_completed()`), or by the eventfd `completion_fd()` (readable while completed batches
/// wait to be polled).
///
/// A miss is a status, not an error: get() answers an empty optional, an operation of a batch
/// errc::not_found in its status.
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
    using core = detail::client::core<Transport>;

public:
    /// Completion callback of an asynchronous batch; runs on the progress thread.
    using callback = typename core::callback;

    /// Connects to `cfg.servers`; if empty, to those of MEMKV_SERVERS or MEMKV_SERVERS_FILE
    /// (client_config::servers_from_environment()). Without `cfg.key`, the first key of
    /// MEMKV_AUTH_KEY / MEMKV_AUTH_KEY_FILE is used, if any. The transport is made from `tcfg`;
    /// a transport_set is restricted to the member cfg.transport (else MEMKV_TRANSPORT) names.
    /// errc::invalid_argument when this client's transport has no such member.
    static result<client> create(client_config cfg, typename Transport::config tcfg = {}) {
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
        // A set's member is chosen by cfg.transport, else MEMKV_TRANSPORT (else tcfg.only as
        // given); a single transport only refuses an explicit cfg.transport naming another.
        constexpr bool is_set = requires {
            tcfg.only;
        };
        std::string why;
        auto kind = cfg.transport_choice(is_set, &why);
        if (!kind) {
            detail::log_error("memkv client: {}", why);
            return kind.error();
        }
        if (*kind && !offers(**kind)) {
            detail::log_error("memkv client: the transport '{}' is not in this client",
                              transport_name(**kind));
            return errc::invalid_argument;
        }
        if constexpr (is_set)
            if (*kind) tcfg.only = *kind;
        auto t = Transport::create(tcfg);
        if (!t) return t.error();
        auto c = core::create(std::move(cfg), std::move(*t));
        if (!c) return c.error();
        return client(std::move(*c));
    }

    client(client&&) noexcept = default;
    client& operator=(client&& o) noexcept {
        if (this != &o) {
            leak_if_forked();
            core_ = std::move(o.core_);
            pid_ = o.pid_;
        }
        return *this;
    }
    ~client() { leak_if_forked(); }

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
        operation op = make(op_kind::put, key);
        op.value = value;
        op.options = opt;
        MEMKV_TRY(run_one(op));
        if (op.status == make_error_code(errc::exists) && opt.if_absent) return {};
        return status_of(op);
    }

    /// The value under `key`, or an empty optional on a miss. `meta` receives its metadata.
    result<std::optional<std::vector<std::byte>>> get(std::string_view key,
                                                      std::vector<std::byte>* meta = nullptr) {
        operation op = make(op_kind::get, key);
        auto hit = lookup(op);
        if (!hit) return hit.error();
        if (!*hit) return std::optional<std::vector<std::byte>>();
        if (meta) *meta = std::move(op.meta_out);
        return std::optional<std::vector<std::byte>>(std::move(op.data));
    }

    /// Reads `length` bytes (0 = to the end) from `offset` of the value straight into the
    /// fragments, in order (zero-copy scatter). Returns the bytes written, or an empty optional
    /// on a miss.
    result<std::optional<std::uint64_t>> get_into(std::string_view key,
                                                  std::vector<std::span<std::byte>> fragments,
                                                  std::uint64_t offset = 0,
                                                  std::uint64_t length = 0) {
        operation op = make(op_kind::get, key);
        op.fragments = std::move(fragments);
        op.offset = offset;
        op.length = length;
        auto hit = lookup(op);
        if (!hit) return hit.error();
        return *hit ? std::optional<std::uint64_t>(op.size) : std::nullopt;
    }

    /// A byte range of the value, copied into a new vector; an empty optional on a miss.
    result<std::optional<std::vector<std::byte>>>
    get_range(std::string_view key, std::uint64_t offset, std::uint64_t length) {
        operation op = make(op_kind::get, key);
        op.offset = offset;
        op.length = length;
        auto hit = lookup(op);
        if (!hit) return hit.error();
        if (!*hit) return std::optional<std::vector<std::byte>>();
        return std::optional<std::vector<std::byte>>(std::move(op.data));
    }

    /// Whether each key is present (one round trip per involved shard, more only when the keys
    /// of a shard exceed one frame).
    result<std::vector<bool>> exists(std::span<const std::string> keys) {
        std::vector<operation> ops(keys.size());
        for (std::size_t i = 0; i < keys.size(); ++i)
            ops[i] = make(op_kind::exists, keys[i]);
        MEMKV_TRY(run(ops));
        std::vector<bool> out(keys.size());
        for (std::size_t i = 0; i < keys.size(); ++i) {
            if (ops[i].status) return ops[i].status;
            out[i] = ops[i].exists;
        }
        return out;
    }

    /// Deletes `key`: true when it was there, false when there was nothing to delete.
    result<bool> del(std::string_view key) {
        operation op = make(op_kind::del, key);
        return lookup(op);
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

    /// Sends a stats request on every connection and waits for the answers; fails with the
    /// first server's error when a server does not answer.
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

    /// Whether this client's transport has a member of kind `k`.
    static constexpr bool offers(transport_kind k) noexcept {
        if constexpr (requires { Transport::has_member(k); })
            return Transport::has_member(k);
        else
            return k == Transport::kind;
    }

    static operation make(op_kind kind, std::string_view key) {
        operation op;
        op.kind = kind;
        op.key = key;
        return op;
    }

    /// The one path of every synchronous call: runs `op` alone and waits for it.
    result<void> run_one(operation& op) { return run({&op, 1}); }

    /// Runs `op` (a get or a del): true on a hit, false on a miss, the error otherwise.
    result<bool> lookup(operation& op) {
        MEMKV_TRY(run_one(op));
        if (op.status == make_error_code(errc::not_found)) return false;
        if (op.status) return op.status;
        return true;
    }

    static result<void> status_of(const operation& op) {
        return op.status ? result<void>(op.status) : result<void>();
    }

    /// Whether this is a child forked after the client was created.
    bool forked() const noexcept { return ::getpid() != pid_; }
    void leak_if_forked() noexcept {
        if (core_ && forked()) (void)core_.release(); // see the class comment
    }

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
