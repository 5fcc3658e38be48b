// SPDX-License-Identifier: Apache-2.0
// fault_store<Inner>: a store that wraps a real one and injects faults from a seeded generator:
// EIO, short I/O, ENOSPC, misdirected writes, byte corruption, TRIM as a no-op, slow flushes and
// discards, and power cuts that lose a random subset of unflushed writes and tear multi-block
// writes at block boundaries.
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/socket.hpp>

#include <poll.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <vector>

namespace memkv::test {

/// Fault rates (probabilities per operation) and switches, shared by every fault_store made
/// from the same configuration (a server opens one per shard), with one seeded generator.
struct fault_plan {
    double read_eio = 0, write_eio = 0; ///< completion with -EIO
    double short_io = 0;                ///< completion with fewer bytes than asked
    double write_enospc = 0;            ///< completion with -ENOSPC
    double write_landed_eio = 0;        ///< the write lands but completes with -EIO
    double misdirect = 0;               ///< the write lands one block further on
    double corrupt_write = 0;           ///< one byte of the written data flipped
    double corrupt_read = 0;            ///< one byte of the data read flipped
    bool trim_noop = false;             ///< discard does nothing (NVMe need not zero)
    /// At destruction, unflushed writes are not written through but power-cut: each is dropped,
    /// written whole, or torn (a random subset of its blocks written), a third each.
    bool power_cut_at_close = false;
    /// Set by a test at the moment power is lost: from then on writes, flushes and discards
    /// complete without reaching anything, and at close the writes that were unflushed at that
    /// moment are power-cut as above. (The server's clean shutdown then cannot save anything.)
    std::atomic<bool> power_lost{false};
    /// With power_lost: keep every unflushed write at close (a process crash: whatever the
    /// kernel accepted survives) instead of cutting power.
    bool keep_unflushed = false;
    /// Slow metadata I/O: a flush (discard) completes, that is its completion is returned by
    /// poll(), no sooner than this long after its submission, and never before the inner
    /// store completed it. Neither submission nor poll() waits for it; notify_fd() becomes
    /// readable when it is due. Read at each submission: set them before the stores run.
    std::chrono::milliseconds flush_delay{0};
    std::chrono::milliseconds discard_delay{0}; ///< as flush_delay, for discards

    explicit fault_plan(std::uint64_t seed) : rng(seed) {}

    std::mutex mutex; // guards rng and the counters (shards run on several threads)
    std::mt19937_64 rng;
    std::uint64_t injected = 0, writes_dropped = 0, writes_torn = 0, writes_kept = 0;

    bool roll(double p) {
        if (p <= 0) return false;
        std::lock_guard lock(mutex);
        const bool hit = std::uniform_real_distribution<double>(0, 1)(rng) < p;
        injected += hit;
        return hit;
    }
    std::uint64_t next() {
        std::lock_guard lock(mutex);
        return rng();
    }
};

/// A store that behaves like `Inner` with the faults of its plan. Writes are buffered until a
/// flush (reads see them), so that a power cut can decide what reached the device.
///
/// A flush takes its snapshot at submission: the writes buffered then are written through to
/// the inner store and flushed there at once, and only the completion waits for the plan's
/// flush_delay. Writes submitted later stay buffered (a power cut may still lose them), so a
/// delayed flush never covers less than rule 4 of memkv::store asks, whatever follows it.
/// (A power cut while the completion waits keeps the snapshot: a store may make writes durable
/// before it says so.)
///
/// notify_fd() is always a real descriptor, readable when poll() has something to return or an
/// inner completion is pending: a timerfd (armed at once for completions already queued, or
/// for when the next delayed one is due), or, when the inner store has a notify_fd of its own,
/// an epoll descriptor watching both.
template <store Inner>
class fault_store {
public:
    static constexpr bool persistent = [] {
        if constexpr (requires { Inner::persistent; })
            return Inner::persistent;
        else
            return true;
    }();
    static constexpr bool trim_by_default = memkv::trim_by_default<Inner>;

    struct config {
        typename Inner::config inner{};
        std::shared_ptr<fault_plan> plan = std::make_shared<fault_plan>(1);
    };

    static config shard_config(const config& c, std::uint32_t i,
                               std::uint32_t n) requires(requires {
        Inner::shard_config(c.inner, i, n);
    }) {
        config s = c;
        s.inner = Inner::shard_config(c.inner, i, n);
        return s;
    }

    static result<fault_store> create(const config& c) {
        auto in = Inner::create(c.inner);
        if (!in) return in.error();
        fault_store f;
        f.inner_ = std::make_unique<Inner>(std::move(*in));
        f.plan_ = c.plan;
        f.timer_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
        if (!f.timer_) return errno_code(errno);
        if (const int inner_fd = f.inner_->notify_fd(); inner_fd >= 0) {
            f.epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
            if (!f.epoll_) return errno_code(errno);
            for (const int fd : {inner_fd, f.timer_.get()}) {
                epoll_event ev{};
                ev.events = EPOLLIN;
                ev.data.fd = fd;
                if (::epoll_ctl(f.epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
                    return errno_code(errno);
            }
        }
        return f;
    }

    fault_store() = default;
    fault_store(fault_store&&) noexcept = default;
    fault_store& operator=(fault_store&&) noexcept = default;
    ~fault_store() {
        if (!inner_) return;
        if (plan_->power_cut_at_close || plan_->power_lost)
            power_cut();
        else
            (void)write_through();
    }

    std::uint32_t block_size() const noexcept { return inner_->block_size(); }
    std::uint64_t capacity() const noexcept { return inner_->capacity(); }
    int notify_fd() const noexcept { return epoll_ ? epoll_.get() : timer_.get(); }

    result<void> read(std::uint64_t offset, std::span<std::byte> buf, std::uint64_t tag) noexcept {
        const auto t = ++next_tag_;
        MEMKV_TRY(inner_->read(offset, buf, t));
        reads_.emplace(t, pending_read{tag, offset, buf});
        return {};
    }

    result<void> write(std::uint64_t offset, std::span<const std::byte> buf,
                       std::uint64_t tag) noexcept {
        MEMKV_TRY(check(offset, buf.size(), buf.data()));
        if (plan_->power_lost) return done(tag, static_cast<std::int64_t>(buf.size()));
        if (plan_->roll(plan_->write_eio)) return done(tag, -EIO);
        if (plan_->roll(plan_->write_enospc)) return done(tag, -ENOSPC);
        std::vector<std::byte> data(buf.begin(), buf.end());
        if (!data.empty() && plan_->roll(plan_->corrupt_write))
            data[plan_->next() % data.size()] ^= std::byte{0x5a};
        std::uint64_t at = offset;
        if (plan_->roll(plan_->misdirect) && offset + 2 * buf.size() <= capacity())
            at = offset + buf.size();
        std::int64_t res = static_cast<std::int64_t>(buf.size());
        if (buf.size() > block_size() && plan_->roll(plan_->short_io)) {
            res -= block_size(); // the last block did not make it
            data.resize(data.size() - block_size());
        }
        unflushed_.push_back({at, std::move(data)});
        if (plan_->roll(plan_->write_landed_eio)) return done(tag, -EIO);
        return done(tag, res);
    }

    result<void> flush(std::uint64_t tag) noexcept {
        const auto due = due_after(plan_->flush_delay);
        if (plan_->power_lost) return done(tag, 0, due);
        MEMKV_TRY(write_through()); // the snapshot: every write buffered now
        const auto t = ++next_tag_;
        MEMKV_TRY(inner_->flush(t));
        flushes_.emplace(t, metadata_op{tag, due});
        if (due != 0) rearm();
        return {};
    }

    result<void> discard(std::uint64_t offset, std::uint64_t length, std::uint64_t tag) noexcept {
        MEMKV_TRY(check(offset, length, nullptr));
        const auto due = due_after(plan_->discard_delay);
        if (plan_->trim_noop || plan_->power_lost) return done(tag, 0, due);
        // Unflushed writes into the range are overtaken by the discard.
        std::erase_if(unflushed_, [&](const auto& w) {
            return w.offset >= offset && w.offset + w.data.size() <= offset + length;
        });
        MEMKV_TRY(write_through());
        const auto t = ++next_tag_;
        MEMKV_TRY(inner_->discard(offset, length, t));
        flushes_.emplace(t, metadata_op{tag, due});
        if (due != 0) rearm();
        return {};
    }

    /// Returns what completed, delayed flushes and discards once due. Never waits.
    std::size_t poll(std::span<io_completion> out) noexcept {
        release_due();
        std::size_t n = 0;
        while (n < out.size() && !ready_.empty()) {
            out[n++] = ready_.front();
            ready_.erase(ready_.begin());
        }
        io_completion in[32];
        while (n < out.size()) {
            const auto k = inner_->poll(std::span(in, std::min<std::size_t>(32, out.size() - n)));
            if (k == 0) break;
            for (std::size_t i = 0; i < k; ++i)
                if (auto c = translate(in[i])) out[n++] = *c;
        }
        rearm();
        return n;
    }

    /// Applies a power cut to the unflushed writes now (see fault_plan::power_cut_at_close).
    void power_cut() {
        if (plan_->keep_unflushed) {
            (void)write_through();
            return;
        }
        std::vector<unflushed> survivors;
        for (auto& w : unflushed_) {
            const auto choice = plan_->next() % 3;
            if (choice == 0) {
                std::lock_guard lock(plan_->mutex);
                ++plan_->writes_dropped;
                continue;
            }
            if (choice == 1 || w.data.size() <= block_size()) {
                std::lock_guard lock(plan_->mutex);
                ++plan_->writes_kept;
                survivors.push_back(std::move(w));
                continue;
            }
            {
                std::lock_guard lock(plan_->mutex);
                ++plan_->writes_torn;
            }
            for (std::size_t b = 0; b < w.data.size(); b += block_size())
                if (plan_->next() % 2)
                    survivors.push_back(
                        {w.offset + b, std::vector<std::byte>(w.data.begin() + b,
                                                              w.data.begin() + b + block_size())});
        }
        unflushed_ = std::move(survivors);
        (void)write_through();
        unflushed_.clear();
    }

private:
    struct pending_read {
        std::uint64_t tag, offset;
        std::span<std::byte> buf;
    };
    struct unflushed {
        std::uint64_t offset;
        std::vector<std::byte> data;
    };
    /// A flush or discard submitted to the inner store.
    struct metadata_op {
        std::uint64_t tag; // the user's
        std::int64_t due;  // CLOCK_MONOTONIC ns before which it does not complete; 0: no delay
    };

    static std::int64_t now_ns() noexcept {
        timespec ts{};
        ::clock_gettime(CLOCK_MONOTONIC, &ts);
        return std::int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
    }
    /// When an operation submitted now with `delay` is due (0: at once).
    static std::int64_t due_after(std::chrono::milliseconds delay) noexcept {
        if (delay.count() <= 0) return 0;
        return now_ns() + std::chrono::duration_cast<std::chrono::nanoseconds>(delay).count();
    }

    result<void> check(std::uint64_t offset, std::uint64_t length, const void* buf) const {
        const auto bs = block_size();
        if (offset % bs || length % bs || reinterpret_cast<std::uintptr_t>(buf) % bs)
            return errc::bad_alignment;
        if (offset > capacity() || length > capacity() - offset) return errc::invalid_argument;
        return {};
    }

    /// Queues the completion of an operation that completed at submission, for poll() now or
    /// (with a delay) at `due`.
    result<void> done(std::uint64_t tag, std::int64_t res, std::int64_t due = 0) {
        complete({tag, res}, due);
        return {};
    }

    /// Queues `c` for poll(): at once, or at `due` if that is still to come.
    void complete(io_completion c, std::int64_t due) {
        if (due != 0 && due > now_ns())
            delayed_.emplace(due, c);
        else
            ready_.push_back(c);
        rearm();
    }

    /// Moves the delayed completions that are due to ready_, in the order they fall due.
    void release_due() {
        const auto now = now_ns();
        while (!delayed_.empty() && delayed_.begin()->first <= now) {
            ready_.push_back(delayed_.begin()->second);
            delayed_.erase(delayed_.begin());
        }
    }

    /// Arms the timerfd at once when completions are queued, otherwise for when the next
    /// delayed one is due (one waiting here, or one the inner store has not completed yet: a
    /// caller may wait on notify_fd() before it polls), and disarms it when nothing is to come
    /// (setting it resets its readability). An overdue one that the inner store has not
    /// completed is signalled by the inner store's own notify_fd.
    void rearm() noexcept {
        const auto now = now_ns();
        std::int64_t want = 0;
        if (!ready_.empty()) {
            want = 1; // long past: fires at once
        } else {
            if (!delayed_.empty()) want = delayed_.begin()->first;
            for (const auto& [inner_tag, op] : flushes_)
                if (op.due > now && (want == 0 || op.due < want)) want = op.due;
        }
        if (want != 0 && want <= now) want = 1;
        // A timer that already fired for a time in the past stays readable: nothing to change.
        if (want == armed_ || (want == 1 && armed_ != 0 && armed_ <= now)) return;
        itimerspec its{};
        its.it_value.tv_sec = want / 1'000'000'000;
        its.it_value.tv_nsec = want % 1'000'000'000;
        if (::timerfd_settime(timer_.get(), TFD_TIMER_ABSTIME, &its, nullptr) == 0) armed_ = want;
    }

    /// The user's completion for inner completion `c`, or none: a flush or discard that is not
    /// due yet waits in delayed_.
    std::optional<io_completion> translate(const io_completion& c) {
        if (auto f = flushes_.find(c.tag); f != flushes_.end()) {
            const auto op = f->second;
            flushes_.erase(f);
            if (op.due != 0 && op.due > now_ns()) {
                complete({op.tag, c.res}, op.due);
                return std::nullopt;
            }
            return io_completion{op.tag, c.res};
        }
        auto it = reads_.find(c.tag);
        if (it == reads_.end()) return io_completion{0, -EIO}; // internal write-through
        auto r = it->second;
        reads_.erase(it);
        if (c.res < 0) return io_completion{r.tag, c.res};
        // Unflushed writes overlay what the device has.
        for (const auto& w : unflushed_) {
            const auto lo = std::max(w.offset, r.offset);
            const auto hi = std::min(w.offset + w.data.size(), r.offset + r.buf.size());
            if (lo < hi)
                std::memcpy(r.buf.data() + (lo - r.offset), w.data.data() + (lo - w.offset),
                            hi - lo);
        }
        if (plan_->roll(plan_->read_eio)) return io_completion{r.tag, -EIO};
        if (!r.buf.empty() && plan_->roll(plan_->corrupt_read))
            r.buf[plan_->next() % r.buf.size()] ^= std::byte{0xa5};
        if (r.buf.size() > block_size() && plan_->roll(plan_->short_io))
            return io_completion{r.tag, static_cast<std::int64_t>(r.buf.size() - block_size())};
        return io_completion{r.tag, c.res};
    }

    /// Writes every unflushed write to the inner store, synchronously.
    result<void> write_through() {
        if (unflushed_.empty()) return {};
        const auto bs = block_size();
        for (const auto& w : unflushed_) {
            // The inner store needs aligned memory.
            void* p = nullptr;
            if (::posix_memalign(&p, bs, std::max<std::size_t>(w.data.size(), bs)) != 0)
                return errc::no_space;
            std::unique_ptr<std::byte, decltype(&std::free)> buf(static_cast<std::byte*>(p),
                                                                 &std::free);
            std::memcpy(buf.get(), w.data.data(), w.data.size());
            const auto t = ++next_tag_;
            MEMKV_TRY(inner_->write(w.offset, std::span(buf.get(), w.data.size()), t));
            MEMKV_TRY(wait_for(t));
        }
        unflushed_.clear();
        return {};
    }

    /// Polls the inner store until `tag` completes; other completions are translated and kept.
    result<void> wait_for(std::uint64_t tag) {
        io_completion in[32];
        for (;;) {
            const auto k = inner_->poll(in);
            for (std::size_t i = 0; i < k; ++i) {
                if (in[i].tag == tag) {
                    if (in[i].res < 0) return errno_code(static_cast<int>(in[i].res));
                    // keep scanning the rest of this batch
                    for (std::size_t j = i + 1; j < k; ++j)
                        if (auto c = translate(in[j])) complete(*c, 0);
                    return {};
                }
                if (auto c = translate(in[i])) complete(*c, 0);
            }
            if (k == 0 && inner_->notify_fd() >= 0) {
                pollfd p{inner_->notify_fd(), POLLIN, 0};
                ::poll(&p, 1, 100);
            }
        }
    }

    std::unique_ptr<Inner> inner_;
    std::shared_ptr<fault_plan> plan_;
    std::uint64_t next_tag_ = 1ull << 62; // distinct from the user's tags
    std::map<std::uint64_t, pending_read> reads_;
    std::map<std::uint64_t, metadata_op> flushes_; // flushes and discards, by inner tag
    std::vector<unflushed> unflushed_;
    std::vector<io_completion> ready_;
    std::multimap<std::int64_t, io_completion> delayed_; // by when due (CLOCK_MONOTONIC ns)
    detail::unique_fd timer_, epoll_;                    // notify_fd(): epoll_ if open
    std::int64_t armed_ = 0; // what timer_ is set to (CLOCK_MONOTONIC ns), 0: disarmed
};

} // namespace memkv::test
