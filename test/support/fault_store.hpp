// SPDX-License-Identifier: Apache-2.0
// fault_store<Inner>: a store that wraps a real one and injects faults from a seeded generator:
// EIO, short I/O, ENOSPC, misdirected writes, byte corruption, TRIM as a no-op, and power cuts
// that lose a random subset of unflushed writes and tear multi-block writes at block boundaries.
#pragma once

#include <memkv/concepts.hpp>

#include <poll.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
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
    int notify_fd() const noexcept { return inner_->notify_fd(); }

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
        if (plan_->power_lost) return done(tag, 0);
        MEMKV_TRY(write_through());
        const auto t = ++next_tag_;
        MEMKV_TRY(inner_->flush(t));
        flushes_.emplace(t, tag);
        return {};
    }

    result<void> discard(std::uint64_t offset, std::uint64_t length, std::uint64_t tag) noexcept {
        MEMKV_TRY(check(offset, length, nullptr));
        if (plan_->trim_noop || plan_->power_lost) return done(tag, 0);
        // Unflushed writes into the range are overtaken by the discard.
        std::erase_if(unflushed_, [&](const auto& w) {
            return w.offset >= offset && w.offset + w.data.size() <= offset + length;
        });
        MEMKV_TRY(write_through());
        const auto t = ++next_tag_;
        MEMKV_TRY(inner_->discard(offset, length, t));
        flushes_.emplace(t, tag);
        return {};
    }

    std::size_t poll(std::span<io_completion> out) noexcept {
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
                out[n++] = translate(in[i]);
        }
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

    result<void> check(std::uint64_t offset, std::uint64_t length, const void* buf) const {
        const auto bs = block_size();
        if (offset % bs || length % bs || reinterpret_cast<std::uintptr_t>(buf) % bs)
            return errc::bad_alignment;
        if (offset > capacity() || length > capacity() - offset) return errc::invalid_argument;
        return {};
    }

    result<void> done(std::uint64_t tag, std::int64_t res) {
        ready_.push_back({tag, res});
        return {};
    }

    io_completion translate(const io_completion& c) {
        if (auto f = flushes_.find(c.tag); f != flushes_.end()) {
            const auto tag = f->second;
            flushes_.erase(f);
            return {tag, c.res};
        }
        auto it = reads_.find(c.tag);
        if (it == reads_.end()) return {0, -EIO}; // internal write-through: not reported
        auto r = it->second;
        reads_.erase(it);
        if (c.res < 0) return {r.tag, c.res};
        // Unflushed writes overlay what the device has.
        for (const auto& w : unflushed_) {
            const auto lo = std::max(w.offset, r.offset);
            const auto hi = std::min(w.offset + w.data.size(), r.offset + r.buf.size());
            if (lo < hi)
                std::memcpy(r.buf.data() + (lo - r.offset), w.data.data() + (lo - w.offset),
                            hi - lo);
        }
        if (plan_->roll(plan_->read_eio)) return {r.tag, -EIO};
        if (!r.buf.empty() && plan_->roll(plan_->corrupt_read))
            r.buf[plan_->next() % r.buf.size()] ^= std::byte{0xa5};
        if (r.buf.size() > block_size() && plan_->roll(plan_->short_io))
            return {r.tag, static_cast<std::int64_t>(r.buf.size() - block_size())};
        return {r.tag, c.res};
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
                        ready_.push_back(translate(in[j]));
                    return {};
                }
                ready_.push_back(translate(in[i]));
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
    std::map<std::uint64_t, std::uint64_t> flushes_; // inner tag -> user tag
    std::vector<unflushed> unflushed_;
    std::vector<io_completion> ready_;
};

} // namespace memkv::test
