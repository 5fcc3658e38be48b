// SPDX-License-Identifier: Apache-2.0
// A closed-loop load generator for the failover tests: a fixed number of request slots per
// server, each submitting one asynchronous GET (get_into a canary-guarded buffer) or PUT at a
// time, recording every request's submission and completion time and status, verifying every
// value, and checking that buffers of failed GETs are never written after their completion.
#pragma once

#include "failover/server_process.hpp"
#include "support/seed.hpp"
#include "support/server_fixture.hpp"

#include <memkv/memkv.hpp>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace memkv::test::failover {

/// A destination buffer with canary bytes on both sides.
class guarded_buffer {
public:
    static constexpr std::size_t canary = 64;

    /// `size` destination bytes, filled with a pattern derived from `fill` (never a value).
    guarded_buffer(std::size_t size, std::uint8_t fill) : mem_(size + 2 * canary), size_(size) {
        for (std::size_t i = 0; i < canary; ++i) {
            mem_[i] = canary_byte(i);
            mem_[canary + size + i] = canary_byte(canary + i);
        }
        auto d = dest();
        for (std::size_t i = 0; i < size; ++i)
            d[i] = std::byte(static_cast<std::uint8_t>(fill + i * 131));
    }

    std::span<std::byte> dest() noexcept { return {mem_.data() + canary, size_}; }
    std::span<const std::byte> dest() const noexcept { return {mem_.data() + canary, size_}; }

    bool canaries_ok() const noexcept {
        for (std::size_t i = 0; i < canary; ++i)
            if (mem_[i] != canary_byte(i) || mem_[canary + size_ + i] != canary_byte(canary + i))
                return false;
        return true;
    }

private:
    static std::byte canary_byte(std::size_t i) noexcept {
        return std::byte(static_cast<std::uint8_t>(0xC3 ^ (i * 7)));
    }
    std::vector<std::byte> mem_;
    std::size_t size_;
};

/// One completed request.
struct record {
    std::uint32_t server = 0;
    bool put = false;
    std::error_code status;
    clock::time_point submitted, completed;
    double latency_ms() const { return ms_between(submitted, completed); }
};

/// The keys of the test, grouped by owning server, with their values.
struct key_set {
    std::vector<std::string> keys;
    std::vector<std::vector<std::byte>> values;
    std::vector<std::vector<std::size_t>> by_server; ///< indices into keys

    /// `per_server` keys for each of the client's servers, values of `min`..`max` bytes.
    template <class Client>
    static key_set make(const Client& c, std::size_t per_server, std::size_t min, std::size_t max,
                        std::uint64_t seed) {
        key_set ks;
        ks.by_server.resize(c.server_count());
        std::mt19937_64 g(seed);
        auto full = [&] {
            for (const auto& v : ks.by_server)
                if (v.size() < per_server) return false;
            return true;
        };
        for (std::size_t i = 0; !full(); ++i) {
            auto key = "failover-" + std::to_string(seed) + "-" + std::to_string(i);
            const auto server = c.locate(key).first;
            if (ks.by_server[server].size() >= per_server) continue;
            const auto size = min + static_cast<std::size_t>(g() % (max - min + 1));
            ks.by_server[server].push_back(ks.keys.size());
            ks.values.push_back(pattern(seed ^ (i + 1), size));
            ks.keys.push_back(std::move(key));
        }
        return ks;
    }

    /// Writes the keys of `server` (all servers if none), in batches of `batch` puts: the first
    /// failure, or success.
    template <class Client>
    std::error_code write(Client& c, std::optional<std::size_t> server = std::nullopt,
                          std::size_t batch = 16) const {
        std::vector<operation> ops;
        for (std::size_t s = 0; s < by_server.size(); ++s) {
            if (server && *server != s) continue;
            for (auto k : by_server[s]) {
                operation op;
                op.kind = op_kind::put;
                op.key = keys[k];
                op.value = values[k];
                ops.push_back(std::move(op));
            }
        }
        for (std::size_t first = 0; first < ops.size(); first += batch) {
            const auto part = std::span(ops).subspan(first, std::min(batch, ops.size() - first));
            if (auto r = c.run(part); !r) return r.error();
            for (const auto& op : part)
                if (op.status) return op.status;
        }
        return {};
    }
};

/// The closed-loop load. Slots of a server resubmit at once after a reply (a hit or a miss)
/// and after `error_pause` following an error (an engine would recompute, not spin).
template <class Client>
class load {
public:
    struct options {
        std::size_t get_slots_per_server = 32;
        std::size_t put_slots_per_server = 0;
        std::chrono::milliseconds error_pause{100};
        /// Failed GET buffers are kept and rechecked this long after their completion.
        std::chrono::milliseconds keep_failed{2000};
    };

    /// What the buffer checks found.
    struct buffer_report {
        std::uint64_t verified_hits = 0;    ///< GET hits whose bytes matched the value
        std::uint64_t wrong_bytes = 0;      ///< GET hits with other bytes (must be 0)
        std::uint64_t canary_damage = 0;    ///< canaries overwritten (must be 0)
        std::uint64_t failed_checked = 0;   ///< failed/missed GET buffers rechecked later
        std::uint64_t written_after = 0;    ///< ... modified after completion (must be 0)
        std::uint64_t held_past_resume = 0; ///< ... kept until the resume time + keep_failed
    };

    load(Client& c, const key_set& keys, options opt) : client_(c), keys_(keys), opt_(opt) {
        std::uint32_t id = 0;
        for (std::size_t s = 0; s < keys.by_server.size(); ++s) {
            for (std::size_t i = 0; i < opt.get_slots_per_server + opt.put_slots_per_server; ++i) {
                auto sl = std::make_unique<slot>();
                sl->server = static_cast<std::uint32_t>(s);
                sl->put = i >= opt.get_slots_per_server;
                sl->rng.seed(seed() ^ (0x51075ull * ++id));
                slots_.push_back(std::move(sl));
            }
        }
        records_.reserve(1u << 20);
    }
    ~load() { stop(); }

    std::size_t slots() const noexcept { return slots_.size(); }

    /// Starts the driver thread and submits every slot.
    void start() {
        {
            std::lock_guard lock(mutex_);
            active_ = slots_.size();
        }
        driver_ = std::thread([this] { drive(); });
        for (auto& s : slots_)
            submit(*s);
    }

    /// Stops resubmitting, waits for every request to complete and rechecks every kept buffer.
    void stop() {
        if (!driver_.joinable()) return;
        {
            std::unique_lock lock(mutex_);
            stopping_ = true;
            cv_.notify_all();
            idle_cv_.wait(lock, [&] { return active_ == 0; });
            quit_ = true;
            cv_.notify_all();
        }
        driver_.join();
        check_kept(clock::now(), true);
    }

    /// Failed GETs completing from `t` until resume() are kept until resume + keep_failed
    /// (a stalled server's late replies would come after it resumes).
    void hold_from(clock::time_point t) {
        std::lock_guard lock(mutex_);
        hold_from_ = t;
    }
    void resume(clock::time_point t) {
        std::lock_guard lock(mutex_);
        resumed_ = t;
    }

    /// The records so far (a copy).
    std::vector<record> records() const {
        std::lock_guard lock(mutex_);
        return records_;
    }
    buffer_report report() const {
        std::lock_guard lock(mutex_);
        return report_;
    }
    /// The requests in flight now.
    std::size_t in_flight() const noexcept { return in_flight_.load(); }

private:
    struct slot {
        std::uint32_t server = 0;
        bool put = false;
        std::mt19937_64 rng;
        operation op;
        std::size_t key = 0;
        std::unique_ptr<guarded_buffer> buf;
        clock::time_point submitted;
    };
    struct kept {
        std::unique_ptr<guarded_buffer> buf;
        std::vector<std::byte> snapshot;
        clock::time_point completed;
    };

    void submit(slot& s) {
        const auto& mine = keys_.by_server[s.server];
        s.key = mine[s.rng() % mine.size()];
        s.op = operation{};
        s.op.key = keys_.keys[s.key];
        if (s.put) {
            s.op.kind = op_kind::put;
            s.op.value = keys_.values[s.key];
        } else {
            s.op.kind = op_kind::get;
            s.buf = std::make_unique<guarded_buffer>(keys_.values[s.key].size(),
                                                     static_cast<std::uint8_t>(s.rng()));
            s.op.fragments = {s.buf->dest()};
        }
        ++in_flight_;
        s.submitted = clock::now();
        auto r = client_.submit({&s.op, 1}, [this, &s](std::span<operation>) { completed(s); });
        if (!r) {
            s.op.status = r.error();
            completed(s);
        }
    }

    /// The slot's request completed (on the client's progress thread).
    void completed(slot& s) {
        const auto now = clock::now();
        --in_flight_;
        const auto status = s.op.status;
        const bool ok = !status || status == errc::not_found;
        std::unique_lock lock(mutex_);
        records_.push_back({s.server, s.put, status, s.submitted, now});
        if (!s.put) {
            if (!s.buf->canaries_ok()) ++report_.canary_damage;
            if (!status) {
                const auto& v = keys_.values[s.key];
                const auto d = s.buf->dest();
                if (s.op.size == v.size() && std::memcmp(d.data(), v.data(), v.size()) == 0)
                    ++report_.verified_hits;
                else
                    ++report_.wrong_bytes;
                s.buf.reset();
            } else {
                // A miss or a failure: nothing may write this buffer from now on.
                const auto d = s.buf->dest();
                kept_.push_back(
                    {std::move(s.buf), std::vector<std::byte>(d.begin(), d.end()), now});
            }
        }
        if (stopping_) {
            if (--active_ == 0) idle_cv_.notify_all();
            return;
        }
        if (ok) {
            lock.unlock();
            submit(s); // from the progress thread: submit() never blocks there
            return;
        }
        delayed_.push_back({now + opt_.error_pause, &s});
        cv_.notify_all();
    }

    void drive() {
        auto next_check = clock::now();
        std::unique_lock lock(mutex_);
        while (!quit_) {
            cv_.wait_for(lock, std::chrono::milliseconds(10));
            const auto now = clock::now();
            std::vector<slot*> ready;
            while (!delayed_.empty() && (stopping_ || delayed_.front().first <= now)) {
                ready.push_back(delayed_.front().second);
                delayed_.pop_front();
            }
            if (stopping_) {
                active_ -= ready.size();
                if (active_ == 0) idle_cv_.notify_all();
                ready.clear();
            }
            lock.unlock();
            for (auto* s : ready)
                submit(*s);
            if (now >= next_check) {
                check_kept(now, false);
                next_check = now + std::chrono::milliseconds(100);
            }
            lock.lock();
        }
    }

    /// Rechecks kept buffers whose time has come (all of them when `final`). The comparisons
    /// run outside the lock, so that completions on the progress thread never wait for them.
    void check_kept(clock::time_point now, bool final) {
        std::vector<std::pair<kept, bool>> due; // (buffer, held past the resume time)
        {
            std::lock_guard lock(mutex_);
            std::deque<kept> keep;
            for (auto& k : kept_) {
                auto until = k.completed + opt_.keep_failed;
                bool held = false;
                if (hold_from_ && k.completed >= *hold_from_) {
                    held = true;
                    if (!resumed_ && !final) {
                        keep.push_back(std::move(k));
                        continue;
                    }
                    if (resumed_) until = std::max(until, *resumed_ + opt_.keep_failed);
                }
                if (!final && now < until) {
                    keep.push_back(std::move(k));
                    continue;
                }
                due.emplace_back(std::move(k), held);
            }
            kept_.swap(keep);
        }
        buffer_report r;
        for (const auto& [k, held] : due) {
            ++r.failed_checked;
            if (held) ++r.held_past_resume;
            if (!k.buf->canaries_ok()) ++r.canary_damage;
            const auto d = k.buf->dest();
            if (!std::equal(d.begin(), d.end(), k.snapshot.begin(), k.snapshot.end()))
                ++r.written_after;
        }
        std::lock_guard lock(mutex_);
        report_.failed_checked += r.failed_checked;
        report_.held_past_resume += r.held_past_resume;
        report_.canary_damage += r.canary_damage;
        report_.written_after += r.written_after;
    }

    Client& client_;
    const key_set& keys_;
    options opt_;
    std::vector<std::unique_ptr<slot>> slots_;
    std::thread driver_;
    std::atomic<std::size_t> in_flight_{0};

    mutable std::mutex mutex_; // guards everything below
    std::condition_variable cv_, idle_cv_;
    bool stopping_ = false, quit_ = false;
    std::size_t active_ = 0; ///< slots still cycling
    std::deque<std::pair<clock::time_point, slot*>> delayed_;
    std::vector<record> records_;
    std::deque<kept> kept_;
    std::optional<clock::time_point> hold_from_, resumed_;
    buffer_report report_;
};

/// Statistics of the records of one server in a window of submission times.
struct window_stats {
    std::size_t count = 0, ok = 0; ///< ok: a reply (hit or miss)
    double p50 = 0, p99 = 0, max = 0;
    std::size_t over_deadline = 0; ///< completed later than the deadline after submission
    double success_ratio() const { return count ? static_cast<double>(ok) / count : 1.0; }
};

/// Requests to `server` submitted in [from, to); `deadline_ms` counts those that took longer.
inline window_stats window(const std::vector<record>& rs, std::uint32_t server,
                           clock::time_point from, clock::time_point to, double deadline_ms = 1e18,
                           bool puts = true) {
    window_stats w;
    std::vector<double> lat;
    for (const auto& r : rs) {
        if (r.server != server || r.submitted < from || r.submitted >= to) continue;
        if (!puts && r.put) continue;
        ++w.count;
        if (!r.status || r.status == errc::not_found) ++w.ok;
        const auto l = r.latency_ms();
        lat.push_back(l);
        w.max = std::max(w.max, l);
        if (l > deadline_ms) ++w.over_deadline;
    }
    w.p50 = quantile(lat, 0.5);
    w.p99 = quantile(lat, 0.99);
    return w;
}

} // namespace memkv::test::failover
