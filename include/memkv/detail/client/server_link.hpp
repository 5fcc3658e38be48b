// SPDX-License-Identifier: Apache-2.0
// client::server_link: one server as the client sees it (its connections, link state, backoff,
// parked requests), and the connector thread that opens connections off the progress thread.
#pragma once

#include <memkv/auth/key_ring.hpp>
#include <memkv/client_config.hpp>
#include <memkv/concepts.hpp>
#include <memkv/detail/client/batch_tracker.hpp>
#include <memkv/detail/client/connection.hpp>
#include <memkv/detail/frame_channel.hpp>
#include <memkv/detail/handshake_io.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace memkv::detail::client {

/// up: connections open; connecting: the connector thread is opening them (requests wait,
/// never written, so they are sent once it is up); down: failed, retried after a backoff
/// (requests fail at once with errc::unavailable meanwhile).
enum class link_state : std::uint8_t { up, connecting, down };

/// An operation waiting for its server's connections.
struct parked_op {
    std::shared_ptr<batch> b;
    operation* op = nullptr;
};

/// What opening a server's connections gave: one per shard, or the error.
template <class Stream>
struct connect_outcome {
    std::size_t server = 0;
    std::uint32_t shard_count = 0;
    std::vector<std::unique_ptr<connection<Stream>>> conns;
    std::error_code error;
};

/// One server: its endpoint, its shard count, one connection per shard while up, and the link
/// state with its backoff. Owned by the progress thread, but for `shard_count`, `state` and
/// `stats`, read from any thread.
template <transport Transport>
struct server_link {
    using stream_type = typename Transport::stream;

    std::string endpoint_text;
    typename Transport::endpoint endpoint;
    std::atomic<std::uint32_t> shard_count{0}; // read by locate() on any thread
    std::vector<std::unique_ptr<connection<stream_type>>> shards;
    std::atomic<link_state> state{link_state::down}; // read by server_stats() on any thread
    clock::time_point retry_at{};
    std::chrono::milliseconds backoff{0};
    std::vector<parked_op> parked;
    link_stats stats;

    /// The connection to `shard` if the server is up.
    connection<stream_type>* conn(std::uint32_t shard) noexcept {
        if (state != link_state::up) return nullptr;
        return shard < shards.size() ? shards[shard].get() : nullptr;
    }

    /// After a failure: down, retried after a capped exponential backoff with jitter.
    void back_off(std::minstd_rand& rng) {
        state = link_state::down;
        backoff = std::min(std::chrono::milliseconds(500),
                           std::max(std::chrono::milliseconds(10), backoff * 2));
        const auto jitter = std::chrono::milliseconds(rng() % (backoff.count() / 4 + 1));
        retry_at = clock::now() + backoff + jitter;
    }
};

/// Opens one connection per shard of server `i` at `ep`: blocking, each bounded by
/// connect_timeout (handshake, then attach). Touches nothing of the client but the tracker and
/// the server's counters (both thread-safe) and `transport`'s connect (transport rule 5), so the
/// connector thread may run it.
template <transport Transport>
connect_outcome<typename Transport::stream>
open_connections(Transport& transport, std::size_t i, const typename Transport::endpoint& ep,
                 const client_config& cfg, batch_tracker& tracker, link_stats& stats) {
    using stream_type = typename Transport::stream;
    connect_outcome<stream_type> out;
    out.server = i;
    const auto key = cfg.key ? &*cfg.key : nullptr;
    auto open = [&](std::uint32_t shard) -> result<std::unique_ptr<connection<stream_type>>> {
        const auto deadline = clock::now() + cfg.connect_timeout;
        auto st = transport.connect(ep, cfg.connect_timeout);
        if (!st) return st.error();
        auto sess = client_handshake(*st, key, st->kind(), deadline);
        if (!sess) return sess.error();
        if (out.shard_count == 0) out.shard_count = sess->shard_count;
        if (sess->shard_count != out.shard_count) return errc::protocol;
        auto c = std::make_unique<connection<stream_type>>(
            i, shard,
            frame_channel<stream_type>(std::move(*st), std::move(sess->send_mac),
                                       std::move(sess->recv_mac), cfg.limits),
            connection_context{cfg, tracker, stats});
        MEMKV_TRY(c->attach(deadline));
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

/// A thread that runs connection jobs one at a time and hands each outcome to `done`, so that
/// a server that does not answer never delays the progress thread or the other servers.
template <class Outcome>
class connector {
public:
    using job = std::function<Outcome()>;

    explicit connector(std::function<void(Outcome)> done)
        : done_(std::move(done)), thread_([this] { run(); }) {}
    connector(const connector&) = delete;
    connector& operator=(const connector&) = delete;
    ~connector() {
        {
            std::lock_guard lock(m_);
            stop_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }

    void post(job j) {
        {
            std::lock_guard lock(m_);
            jobs_.push_back(std::move(j));
        }
        cv_.notify_one();
    }

private:
    void run() {
        for (;;) {
            job j;
            {
                std::unique_lock lock(m_);
                cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
                if (stop_) return;
                j = std::move(jobs_.front());
                jobs_.pop_front();
            }
            done_(j());
        }
    }

    std::function<void(Outcome)> done_;
    std::mutex m_;
    std::condition_variable cv_;
    std::deque<job> jobs_;
    bool stop_ = false;
    std::thread thread_; // last: started once the rest is built
};

} // namespace memkv::detail::client
