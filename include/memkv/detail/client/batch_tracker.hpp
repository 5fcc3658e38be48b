// SPDX-License-Identifier: Apache-2.0
// client::batch_tracker: the batches of one client between submit() and their completion.
#pragma once

#include <memkv/client_types.hpp>
#include <memkv/detail/socket.hpp>
#include <memkv/error.hpp>
#include <memkv/result.hpp>

#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <utility>
#include <vector>

namespace memkv::detail::client {

using clock = std::chrono::steady_clock;

/// A batch of operations submitted together.
struct batch {
    std::uint64_t id = 0;
    std::span<operation> ops;
    std::function<void(std::span<operation>)> cb;
    std::size_t remaining = 0;
    /// Sent as given to (server, shard), without placement or key prefix (raw_get_status).
    std::optional<std::pair<std::size_t, std::uint32_t>> raw_target;
    bool internal = false; ///< a synchronous call's: not reported by poll_completed()
    /// Set at dispatch: every operation of the batch ends by then, however long it waited for
    /// its server's connection first.
    clock::time_point deadline;
};

/// Makes a batch of `ops`.
inline std::shared_ptr<batch>
make_batch(std::span<operation> ops, std::function<void(std::span<operation>)> cb, bool internal) {
    auto b = std::make_shared<batch>();
    b->ops = ops;
    b->cb = std::move(cb);
    b->internal = internal;
    b->remaining = ops.size();
    return b;
}

/// Ids, the in-flight cap and completion reporting of a client's batches: a batch completes
/// by its callback (on the progress thread), by poll_completed() and the eventfd, and wakes
/// wait(). Thread-safe.
///
/// Contracts:
///  - submit() assigns the id and hands the batch to `post` under the tracker's lock, so that
///    close() (also under it) orders every submission: either it was posted before the close,
///    or it is refused with errc::closed. Nothing submitted is ever left uncompleted.
///  - A batch counts against max_inflight from submit() until its last operation completed.
class batch_tracker {
public:
    static result<batch_tracker> create(std::size_t max_inflight) {
        batch_tracker t(max_inflight);
        t.s_->done_fd.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!t.s_->done_fd) return errno_code(errno);
        return t;
    }

    /// Takes `b`, waiting while the in-flight cap is reached unless `may_wait` is false (the
    /// progress thread, whose callbacks may submit), and posts it. Returns its id.
    template <class Post>
    result<std::uint64_t> submit(std::shared_ptr<batch> b, bool may_wait, Post&& post) {
        auto& s = *s_;
        const auto n = b->ops.size();
        std::unique_lock lock(s.m);
        if (may_wait)
            s.room.wait(lock,
                        [&] { return s.closing || s.inflight + n <= s.max || s.inflight == 0; });
        if (s.closing) return errc::closed;
        b->id = ++s.next;
        s.inflight += n;
        s.pending.insert(b->id);
        const auto id = b->id;
        post(std::move(b));
        return id;
    }

    /// Runs `post` unless the tracker is closed (under its lock, ordered with close() as
    /// submit() is). False when closed.
    template <class Post>
    bool post_if_open(Post&& post) {
        std::lock_guard lock(s_->m);
        if (s_->closing) return false;
        post();
        return true;
    }

    /// Refuses new batches from now on and wakes the submitters that wait for room.
    void close() {
        std::lock_guard lock(s_->m);
        s_->closing = true;
        s_->room.notify_all();
    }

    /// Operation `op` of `b` ended with `status`; the batch completes with its last one.
    void complete(const std::shared_ptr<batch>& b, operation& op, std::error_code status) {
        op.status = status;
        if (--b->remaining == 0) finish(b);
    }

    /// Completes a batch none of whose operations is left (an empty batch, at dispatch).
    void finish(const std::shared_ptr<batch>& b) {
        auto& s = *s_;
        {
            std::lock_guard lock(s.m);
            s.inflight -= b->ops.size();
            s.room.notify_all();
        }
        // The callback may submit more work (it runs on the progress thread, which submit()
        // never blocks). Its batch is no longer pending (for wait()) once it returned.
        if (b->cb) b->cb(b->ops);
        std::lock_guard lock(s.m);
        s.pending.erase(b->id);
        if (!b->cb && !b->internal) {
            s.completed.push_back(b->id);
            std::uint64_t one = 1;
            [[maybe_unused]] auto r = ::write(s.done_fd.get(), &one, sizeof(one));
        }
        s.done.notify_all();
    }

    std::vector<std::uint64_t> poll_completed() {
        std::lock_guard lock(s_->m);
        std::uint64_t v;
        [[maybe_unused]] auto r = ::read(s_->done_fd.get(), &v, sizeof(v));
        return std::exchange(s_->completed, {});
    }

    int completion_fd() const noexcept { return s_->done_fd.get(); }

    void wait(std::uint64_t id) {
        std::unique_lock lock(s_->m);
        s_->done.wait(lock, [&] { return !s_->pending.contains(id); });
        std::erase(s_->completed, id);
    }

    std::size_t tracked() const {
        std::lock_guard lock(s_->m);
        return s_->pending.size() + s_->completed.size();
    }

    /// Waits until `ready()` holds, `ready` being checked under the tracker's lock, and woken
    /// by notify() (stats gathering).
    template <class Ready>
    void wait_until(Ready ready) {
        std::unique_lock lock(s_->m);
        s_->done.wait(lock, ready);
    }
    /// Runs `f` under the tracker's lock and wakes wait_until().
    template <class F>
    void notify(F f) {
        std::lock_guard lock(s_->m);
        f();
        s_->done.notify_all();
    }

private:
    struct state {
        mutable std::mutex m; // guards everything below
        std::condition_variable room, done;
        bool closing = false;
        std::uint64_t next = 0;
        std::size_t inflight = 0, max = 0;
        std::vector<std::uint64_t> completed; // for poll_completed()
        std::set<std::uint64_t> pending;      // submitted, not yet completed
        unique_fd done_fd;
    };
    explicit batch_tracker(std::size_t max) : s_(std::make_unique<state>()) { s_->max = max; }
    std::unique_ptr<state> s_;
};

} // namespace memkv::detail::client
