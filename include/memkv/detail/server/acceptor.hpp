// SPDX-License-Identifier: Apache-2.0
// server::acceptor: accepting connections, authenticating them and handing each to its shard.
#pragma once

#include <memkv/auth/key_ring.hpp>
#include <memkv/concepts.hpp>
#include <memkv/detail/event_loop.hpp>
#include <memkv/detail/frame_channel.hpp>
#include <memkv/detail/handshake_io.hpp>
#include <memkv/detail/server/dispatch.hpp>
#include <memkv/detail/server/shard.hpp>
#include <memkv/server_config.hpp>

#include <sys/epoll.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

namespace memkv::detail::server {

/// The acceptor of a server, run on a thread of its own: it accepts on every listener, steps
/// each new connection's handshake (only the fixed-size hello and proof are read before
/// authentication; a hello asking for a data transport its listener cannot carry is refused),
/// reads its attach, and hands it to the shard it asked for, with the data transport it asked
/// for. A connection
/// costs a socket and a few hundred bytes until then, and is closed when its handshake times
/// out or when max_pending_connections are already waiting.
template <transport Transport>
class acceptor {
    using stream_type = typename Transport::stream;
    using listener_type = typename Transport::listener;

public:
    /// Where an attached connection goes: to shard `shard`'s mailbox.
    using handoff =
        std::function<void(std::uint32_t shard, std::unique_ptr<attached_connection<stream_type>>)>;
    /// The key ring in force (read at every new connection: reload_keys() takes effect at once).
    using key_source = std::function<std::shared_ptr<const auth::key_ring>()>;

    static result<std::unique_ptr<acceptor>> create(const server_config& cfg,
                                                    std::vector<listener_type> listeners,
                                                    key_source keys, handoff give) {
        auto loop = event_loop::create();
        if (!loop) return loop.error();
        std::unique_ptr<acceptor> a(new acceptor(cfg, std::move(*loop), std::move(listeners),
                                                 std::move(keys), std::move(give)));
        for (std::size_t i = 0; i < a->listeners_.size(); ++i)
            MEMKV_TRY(a->loop_.add(a->listeners_[i].fd(), EPOLLIN, i));
        return a;
    }

    /// Runs until stop().
    void run() {
        while (!stopping_.load(std::memory_order_acquire)) {
            loop_.run_once(
                std::chrono::milliseconds(100),
                [this](std::uint64_t token, std::uint32_t) {
                    if (token < listeners_.size())
                        accept_all(listeners_[token]);
                    else
                        step(token);
                },
                [] {});
            expire();
        }
        pending_.clear();
        listeners_.clear();
    }

    /// Makes run() return (any thread).
    void stop() noexcept {
        stopping_.store(true, std::memory_order_release);
        loop_.wake();
    }

    /// Connections refused during the handshake (bad key, bad hello, timeout, too many).
    std::uint64_t failures() const noexcept { return failures_.load(std::memory_order_relaxed); }

private:
    static constexpr std::uint64_t pending_base = 1ull << 32;

    /// A connection between accept and attach; the frame handler of its channel once
    /// authenticated (only an attach is accepted).
    struct pending {
        std::uint64_t id;
        server_handshake<stream_type> hs;
        std::unique_ptr<frame_channel<stream_type>> ch; // after authentication
        std::string tenant;
        bool attached = false, bad = false;
        std::uint32_t shard = 0;
        std::uint64_t attach_id = 0;

        frame_action on_frame(const protocol::frame_header& h, std::span<const std::byte>) {
            if (attached || h.is_reply() || h.code() != protocol::opcode::attach ||
                h.body_len != 0 || h.payload_len != 0 || h.request_id == 0) {
                bad = true;
                return frame_action::pause;
            }
            attached = true;
            shard = h.aux;
            attach_id = h.request_id;
            return frame_action::yield; // stop reading: the shard takes it from here
        }
        void on_payload(const protocol::frame_header&, bool) {}
    };

    acceptor(const server_config& cfg, event_loop loop, std::vector<listener_type> listeners,
             key_source keys, handoff give)
        : cfg_(cfg), loop_(std::move(loop)), listeners_(std::move(listeners)),
          keys_(std::move(keys)), give_(std::move(give)) {}

    void accept_all(listener_type& l) {
        for (;;) {
            auto s = l.accept();
            if (!s) return;
            if (pending_.size() >= cfg_.max_pending_connections) {
                failures_.fetch_add(1, std::memory_order_relaxed);
                continue; // closed as it goes out of scope
            }
            const auto id = pending_base + ++next_pending_;
            const int fd = s->fd();
            pending_.push_back(
                pending{id,
                        server_handshake<stream_type>(std::move(*s), keys_(), cfg_.shards,
                                                      clock::now() + cfg_.handshake_timeout),
                        nullptr,
                        {},
                        false,
                        false,
                        0,
                        0});
            if (!loop_.add(fd, EPOLLIN, id)) pending_.pop_back();
        }
    }

    void drop(typename std::list<pending>::iterator it) {
        failures_.fetch_add(1, std::memory_order_relaxed);
        loop_.remove(fd_of(*it));
        pending_.erase(it);
    }

    static int fd_of(pending& p) { return p.ch ? p.ch->stream().fd() : p.hs.stream().fd(); }

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
            p.ch = std::make_unique<frame_channel<stream_type>>(
                std::move(p.hs.stream()), std::move((*r)->send_mac), std::move((*r)->recv_mac),
                cfg_.limits);
        }
        if (auto r = p.ch->on_readable(p); !r || p.bad) return drop(it);
        if (!p.attached) return;
        loop_.remove(p.ch->stream().fd());
        if (p.shard >= cfg_.shards) {
            // Tell the client why, then close.
            p.ch->send(reply_header(protocol::opcode::attach, p.attach_id,
                                    make_error_code(errc::invalid_argument)),
                       {});
            (void)p.ch->flush();
            pending_.erase(it);
            return;
        }
        give_(p.shard,
              std::make_unique<attached_connection<stream_type>>(attached_connection<stream_type>{
                  std::move(*p.ch), std::move(p.tenant), p.attach_id, p.hs.requested()}));
        pending_.erase(it);
    }

    void expire() {
        const auto now = clock::now();
        for (auto it = pending_.begin(); it != pending_.end();) {
            auto next = std::next(it);
            if (now >= it->hs.deadline()) drop(it);
            it = next;
        }
    }

    const server_config& cfg_;
    event_loop loop_;
    std::vector<listener_type> listeners_;
    key_source keys_;
    handoff give_;
    std::list<pending> pending_;
    std::uint64_t next_pending_ = 0;
    std::atomic<bool> stopping_{false};
    std::atomic<std::uint64_t> failures_{0};
};

} // namespace memkv::detail::server
