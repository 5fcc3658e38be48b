// SPDX-License-Identifier: Apache-2.0
// gated_store: a memory_store whose reads a test can hold behind a shared gate, so that an
// ordering a server test relies on (small reads overtaking a large one) happens every run.
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/socket.hpp>
#include <memkv/store/memory_store.hpp>

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace memkv::test {

/// Holds reads of every gated_store made from configurations that share it (a server opens one
/// store per shard). While closed by hold_reads(n), a read of at least n bytes is carried out at
/// submission but its completion is held back until open(). Any thread may close, open and
/// query it; the stores use it from their shard threads.
class gate {
public:
    /// From now on (until open()), holds every read of at least `min_length` bytes.
    void hold_reads(std::uint64_t min_length) {
        std::lock_guard lock(mutex_);
        hold_from_ = min_length;
    }

    /// Releases every held read and holds no more: the notify_fd() of each store holding one
    /// becomes readable, and its next poll() returns them.
    void open() {
        std::lock_guard lock(mutex_);
        hold_from_.reset();
        ++generation_;
        // Under the lock: a store unsubscribes (and then closes its descriptor) under it too.
        const std::uint64_t one = 1;
        for (const int fd : fds_)
            [[maybe_unused]] auto r = ::write(fd, &one, sizeof(one));
    }

    /// Reads held now, over every store of this gate.
    std::size_t held() const {
        std::lock_guard lock(mutex_);
        return held_;
    }

    /// Waits until at least `n` reads are held or `timeout` passed; returns how many are held.
    std::size_t wait_held(std::size_t n, std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex_);
        cv_.wait_for(lock, timeout, [&] { return held_ >= n; });
        return held_;
    }

private:
    friend class gated_store;

    /// The generation a read of `length` bytes is held in, or none if it is not held.
    std::optional<std::uint64_t> try_hold(std::uint64_t length) {
        std::lock_guard lock(mutex_);
        if (!hold_from_ || length < *hold_from_) return std::nullopt;
        ++held_;
        cv_.notify_all();
        return generation_;
    }
    /// The current generation: reads held in an older one are released.
    std::uint64_t generation() const {
        std::lock_guard lock(mutex_);
        return generation_;
    }
    void released(std::size_t n) {
        std::lock_guard lock(mutex_);
        held_ -= n;
    }
    void subscribe(int fd) {
        std::lock_guard lock(mutex_);
        fds_.push_back(fd);
    }
    void unsubscribe(int fd) {
        std::lock_guard lock(mutex_);
        std::erase(fds_, fd);
    }

    mutable std::mutex mutex_;
    std::condition_variable cv_;
    std::optional<std::uint64_t> hold_from_; // closed for reads of at least this many bytes
    std::uint64_t generation_ = 0;           // incremented by every open()
    std::size_t held_ = 0;
    std::vector<int> fds_; // the stores' eventfds, signalled by open()
};

/// A memory_store whose reads its gate can hold (see gate). Everything else behaves as in
/// memory_store, except that completions are signalled on a real descriptor: notify_fd() is an
/// eventfd that is readable whenever poll() has something to return (a held read's completion
/// does not count until the gate opens).
class gated_store {
public:
    /// Like memory_store: nothing survives the process.
    static constexpr bool persistent = false;

    struct config {
        memory_store::config inner{};
        /// Shared by every store made from this configuration (and its shard configurations).
        std::shared_ptr<test::gate> gate = std::make_shared<test::gate>();
    };

    /// Each shard gets its own memory (memory_store::shard_config) and the same gate.
    static config shard_config(const config& c, std::uint32_t i, std::uint32_t n) {
        config s = c;
        s.inner = memory_store::shard_config(c.inner, i, n);
        return s;
    }

    static result<gated_store> create(const config& c) {
        if (!c.gate) return errc::invalid_argument;
        auto in = memory_store::create(c.inner);
        if (!in) return in.error();
        gated_store s;
        s.event_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!s.event_) return errno_code(errno);
        s.inner_ = std::move(*in);
        s.gate_ = c.gate;
        s.gate_->subscribe(s.event_.get());
        return s;
    }

    gated_store() = default;
    gated_store(gated_store&&) noexcept = default;
    gated_store& operator=(gated_store&& o) noexcept {
        if (this != &o) {
            leave_gate();
            inner_ = std::move(o.inner_);
            gate_ = std::move(o.gate_);
            event_ = std::move(o.event_);
            signalled_ = o.signalled_;
            ready_ = std::move(o.ready_);
            held_ = std::move(o.held_);
        }
        return *this;
    }
    ~gated_store() { leave_gate(); }

    std::uint32_t block_size() const noexcept { return inner_.block_size(); }
    std::uint64_t capacity() const noexcept { return inner_.capacity(); }
    int notify_fd() const noexcept { return event_.get(); }

    /// Reads at once; the completion is held if the gate holds reads of this length.
    result<void> read(std::uint64_t offset, std::span<std::byte> buf, std::uint64_t tag) noexcept {
        MEMKV_TRY(inner_.read(offset, buf, tag));
        if (const auto generation = gate_->try_hold(buf.size())) {
            held_.push_back({take(), *generation});
            return {};
        }
        return queue(take());
    }
    result<void> write(std::uint64_t offset, std::span<const std::byte> buf,
                       std::uint64_t tag) noexcept {
        MEMKV_TRY(inner_.write(offset, buf, tag));
        return queue(take());
    }
    result<void> flush(std::uint64_t tag) noexcept {
        MEMKV_TRY(inner_.flush(tag));
        return queue(take());
    }
    result<void> discard(std::uint64_t offset, std::uint64_t length, std::uint64_t tag) noexcept {
        MEMKV_TRY(inner_.discard(offset, length, tag));
        return queue(take());
    }

    /// Returns completed operations, and the held reads once the gate opened since they were
    /// held. Never waits.
    std::size_t poll(std::span<io_completion> out) noexcept {
        std::uint64_t v;
        [[maybe_unused]] auto r = ::read(event_.get(), &v, sizeof(v)); // re-armed below if needed
        signalled_ = false;
        if (!held_.empty()) {
            const auto now = gate_->generation();
            const auto before = held_.size();
            std::erase_if(held_, [&](const held_read& h) {
                if (h.generation >= now) return false;
                ready_.push_back(h.done);
                return true;
            });
            if (held_.size() != before) gate_->released(before - held_.size());
        }
        const std::size_t n = std::min(out.size(), ready_.size());
        std::copy_n(ready_.begin(), n, out.begin());
        ready_.erase(ready_.begin(), ready_.begin() + static_cast<std::ptrdiff_t>(n));
        if (!ready_.empty()) signal();
        return n;
    }

private:
    struct held_read {
        io_completion done;
        std::uint64_t generation; // released once the gate's generation is past it
    };

    /// The completion of the operation just submitted to the inner store, which completes
    /// every operation before submission returns and queues it for its next poll().
    io_completion take() noexcept {
        io_completion c{};
        [[maybe_unused]] const auto n = inner_.poll(std::span(&c, 1));
        return c;
    }

    result<void> queue(io_completion c) {
        ready_.push_back(c);
        signal();
        return {};
    }

    /// Makes notify_fd() readable (once until the next poll()).
    void signal() noexcept {
        if (signalled_) return;
        const std::uint64_t one = 1;
        [[maybe_unused]] auto r = ::write(event_.get(), &one, sizeof(one));
        signalled_ = true;
    }

    void leave_gate() noexcept {
        if (!gate_ || !event_) return;
        gate_->unsubscribe(event_.get());
        gate_->released(held_.size());
        held_.clear();
    }

    memory_store inner_;
    std::shared_ptr<test::gate> gate_;
    detail::unique_fd event_;
    bool signalled_ = false;
    std::vector<io_completion> ready_;
    std::vector<held_read> held_;
};

static_assert(store<gated_store>);

} // namespace memkv::test
