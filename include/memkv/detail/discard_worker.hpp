// SPDX-License-Identifier: Apache-2.0
// discard_worker: discards (hole punching, BLKDISCARD) run off the caller's thread.
#pragma once

#include <memkv/concepts.hpp>

#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

namespace memkv::detail {

/// Runs a store's discards on a thread of its own, started at the first one, so that the thread
/// that submits them (a shard's) never waits for the device: Linux has no asynchronous
/// BLKDISCARD for the kernels memkv supports, and io_uring's fallocate would serialise with the
/// ring's other work. Each finished discard is queued for reap() and signalled on `notify_fd`
/// (the store's eventfd), like a completion of the ring.
///
/// Contracts: post() and reap() are called by the store's owner thread; a job touches nothing
/// but the descriptor it was given; destruction waits for the jobs posted (the store's devices
/// stay open until then). Movable: the state lives on the heap.
class discard_worker {
public:
    discard_worker() = default;
    discard_worker(discard_worker&&) noexcept = default;
    discard_worker& operator=(discard_worker&& o) noexcept {
        stop();
        s_ = std::move(o.s_);
        return *this;
    }
    ~discard_worker() { stop(); }

    /// Runs `job` (returns 0, or the errno it failed with) on the worker and then completes
    /// `tag`. Without a thread (it could not be started) the job runs here.
    void post(std::uint64_t tag, std::function<int()> job, int notify_fd) {
        if (!s_) s_ = std::make_unique<state>();
        auto& s = *s_;
        {
            std::lock_guard lock(s.m);
            s.notify_fd = notify_fd;
            s.jobs.push_back({tag, std::move(job)});
        }
        if (!s.thread.joinable()) {
            try {
                s.thread = std::thread([st = s_.get()] { st->run(); });
            } catch (...) {
                s.run_pending(); // no thread: synchronously, as before
                return;
            }
        }
        s.cv.notify_one();
    }

    /// Discards finished since the last call, as {tag, errno (0: done)}. When some are left
    /// behind (`out` too small), `notify_fd` is signalled again: it stays readable while
    /// completions are pending (store rule 6), whoever read it meanwhile.
    std::size_t reap(std::span<io_completion> out) {
        if (!s_) return 0;
        std::lock_guard lock(s_->m);
        const std::size_t n = std::min(out.size(), s_->done.size());
        std::copy_n(s_->done.begin(), n, out.begin());
        s_->done.erase(s_->done.begin(), s_->done.begin() + static_cast<std::ptrdiff_t>(n));
        if (!s_->done.empty()) s_->signal();
        return n;
    }

private:
    struct job {
        std::uint64_t tag;
        std::function<int()> run;
    };
    struct state {
        std::mutex m; // guards all but `thread`
        std::condition_variable cv;
        std::deque<job> jobs;
        std::vector<io_completion> done;
        int notify_fd = -1;
        bool stopping = false;
        std::thread thread;

        void run() {
            std::unique_lock lock(m);
            for (;;) {
                cv.wait(lock, [&] { return stopping || !jobs.empty(); });
                if (jobs.empty()) return; // stopping, and nothing left
                lock.unlock();
                run_pending();
                lock.lock();
            }
        }
        /// Runs the queued jobs and signals each completion.
        void run_pending() {
            std::unique_lock lock(m);
            while (!jobs.empty()) {
                auto j = std::move(jobs.front());
                jobs.pop_front();
                lock.unlock();
                const int err = j.run();
                lock.lock();
                done.push_back({j.tag, err});
                signal();
            }
        }
        void signal() const noexcept {
            const std::uint64_t one = 1;
            [[maybe_unused]] auto r = ::write(notify_fd, &one, sizeof(one));
        }
    };

    void stop() noexcept {
        if (!s_) return;
        {
            std::lock_guard lock(s_->m);
            s_->stopping = true;
        }
        s_->cv.notify_all();
        if (s_->thread.joinable()) s_->thread.join();
        s_.reset();
    }

    std::unique_ptr<state> s_;
};

} // namespace memkv::detail
