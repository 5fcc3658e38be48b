// SPDX-License-Identifier: Apache-2.0
// Checks of fault_store's slow flushes and discards (fault_plan::flush_delay, discard_delay),
// written once for any inner store: test_fault_store.cpp runs them over memory_store,
// test_fault_store_file.cpp over file_store.
#pragma once

#include "support/catch.hpp"
#include "support/fault_store.hpp"

#include <poll.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <vector>

namespace memkv::test::delays {

using namespace std::chrono_literals;
using clock = std::chrono::steady_clock;

/// The delay under test: long enough that "at once" and "after the delay" cannot be confused.
constexpr std::chrono::milliseconds delay = 200ms;
/// How long any wait below may take before the check gives up (a store that never completes).
constexpr std::chrono::milliseconds give_up = 10s;

/// Zeroed memory aligned to 4096 bytes (the stores' block size), as the stores ask.
class aligned_bytes {
public:
    explicit aligned_bytes(std::size_t n) : n_(n) {
        void* p = nullptr;
        if (::posix_memalign(&p, 4096, n) != 0) std::abort();
        std::memset(p, 0, n);
        p_.reset(static_cast<std::byte*>(p));
    }
    std::span<std::byte> span() const noexcept { return {p_.get(), n_}; }

private:
    struct free_deleter {
        void operator()(std::byte* p) const noexcept { std::free(p); }
    };
    std::unique_ptr<std::byte, free_deleter> p_;
    std::size_t n_;
};

/// `n` bytes of `b` repeated, block-aligned.
inline aligned_bytes filled(std::size_t n, std::uint8_t b) {
    aligned_bytes a(n);
    std::memset(a.span().data(), b, n);
    return a;
}

/// True when every byte of `s` is `b`.
inline bool all_of(std::span<const std::byte> s, std::uint8_t b) {
    return std::all_of(s.begin(), s.end(), [b](std::byte x) { return x == std::byte{b}; });
}

/// `d` in milliseconds, for messages.
inline double ms(clock::duration d) {
    return std::chrono::duration<double, std::milli>(d).count();
}

/// What waiting for completions saw.
struct waited {
    std::vector<io_completion> got;        ///< every completion polled, in order
    clock::duration longest_poll{};        ///< the slowest single poll() call
    int wakeups = 0;                       ///< poll(2) waits on notify_fd() that saw it readable
    int timeouts = 0;                      ///< poll(2) waits that ran out instead
    clock::time_point last = clock::now(); ///< when the last completion was polled

    /// Whether the operation tagged `tag` completed.
    bool has(std::uint64_t tag) const {
        return std::any_of(got.begin(), got.end(), [&](const auto& c) { return c.tag == tag; });
    }
    /// The result of the operation tagged `tag`; INT64_MIN if it did not complete.
    std::int64_t res(std::uint64_t tag) const {
        for (const auto& c : got)
            if (c.tag == tag) return c.res;
        return std::numeric_limits<std::int64_t>::min();
    }
};

/// Polls `s` until every tag of `tags` completed or give_up passed, sleeping only in poll(2) on
/// notify_fd() between polls (each wait up to give_up: the descriptor has to wake it); times
/// every poll() call. Appends to `w`.
template <class S>
void wait_for(S& s, std::initializer_list<std::uint64_t> tags, waited& w) {
    const auto deadline = clock::now() + give_up;
    io_completion c[8];
    for (;;) {
        const auto p0 = clock::now();
        const std::size_t n = s.poll(c);
        const auto p1 = clock::now();
        w.longest_poll = std::max(w.longest_poll, p1 - p0);
        if (n > 0) w.last = p1;
        w.got.insert(w.got.end(), c, c + n);
        if (std::all_of(tags.begin(), tags.end(), [&](auto t) { return w.has(t); })) return;
        if (n > 0) continue;
        if (p1 >= deadline) return;
        pollfd p{s.notify_fd(), POLLIN, 0};
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - p1);
        if (::poll(&p, 1, static_cast<int>(left.count()) + 1) == 1)
            ++w.wakeups;
        else
            ++w.timeouts;
    }
}

/// Which delayed operation a check submits.
enum class delayed_op { flush, discard };

/// A flush (or discard) submitted with a delay: submission returns at once, poll() returns
/// nothing for it at first and never waits, notify_fd() wakes the caller when it is due, and it
/// completes no sooner than the delay after its submission. The store's plan has the delay set.
template <class S>
void check_delayed_completion(S& s, delayed_op op) {
    const auto bs = s.block_size();
    auto data = filled(bs, 0x11);
    REQUIRE(s.write(0, data.span(), 1));
    waited first;
    wait_for(s, {1}, first);
    REQUIRE(first.res(1) == static_cast<std::int64_t>(bs));

    constexpr std::uint64_t tag = 100;
    const auto t0 = clock::now();
    if (op == delayed_op::flush)
        REQUIRE(s.flush(tag));
    else
        REQUIRE(s.discard(4 * bs, 2 * bs, tag));
    const auto submitted = clock::now() - t0;
    CHECK(submitted < delay / 2); // the submitting thread is not held for the delay

    io_completion c[8];
    const auto p0 = clock::now();
    const std::size_t n = s.poll(c);
    const auto polled = clock::now() - p0;
    CHECK(polled < delay / 2);
    CHECK(std::none_of(c, c + n, [](const auto& x) { return x.tag == tag; }));

    waited w;
    wait_for(s, {tag}, w);
    const auto elapsed = w.last - t0;
    INFO("completed after " << ms(elapsed) << " ms, slowest poll() " << ms(w.longest_poll)
                            << " ms, " << w.wakeups << " wake-ups, " << w.timeouts
                            << " waits ran out");
    REQUIRE(w.has(tag));
    CHECK(w.res(tag) == 0);
    CHECK(elapsed >= delay);           // not before the delay
    CHECK(w.longest_poll < delay / 2); // poll() never waits for it
    CHECK(w.timeouts == 0);            // notify_fd() woke the waiter when it was due
    CHECK(w.wakeups < 10);             // and was not readable all along (no busy loop)
    CHECK(elapsed < give_up / 2);
}

/// While a flush is delayed, a write, a read and an undelayed discard submitted after it
/// complete without waiting for it (they all complete before it does), and the read sees the
/// write. The store's plan has flush_delay set and no discard_delay.
template <class S>
void check_other_io_meanwhile(S& s) {
    const auto bs = s.block_size();
    auto data = filled(bs, 0x22);
    auto back = filled(bs, 0);
    constexpr std::uint64_t f = 10, w = 11, r = 12, d = 13;
    const auto t0 = clock::now();
    REQUIRE(s.flush(f));
    REQUIRE(s.write(2 * bs, data.span(), w));
    REQUIRE(s.read(2 * bs, back.span(), r));
    REQUIRE(s.discard(8 * bs, bs, d));

    waited others;
    wait_for(s, {w, r, d}, others);
    INFO("the others took " << ms(others.last - t0) << " ms");
    REQUIRE(others.has(w));
    REQUIRE(others.has(r));
    REQUIRE(others.has(d));
    CHECK(!others.has(f)); // they did not wait for the flush
    CHECK(others.res(w) == static_cast<std::int64_t>(bs));
    CHECK(others.res(r) == static_cast<std::int64_t>(bs));
    CHECK(others.res(d) == 0);
    CHECK(all_of(back.span(), 0x22));

    waited flushed;
    wait_for(s, {f}, flushed);
    REQUIRE(flushed.has(f));
    CHECK(flushed.res(f) == 0);
    CHECK(flushed.last - t0 >= delay);
}

} // namespace memkv::test::delays
