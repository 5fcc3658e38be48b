// SPDX-License-Identifier: Apache-2.0
// event_loop: one thread's readiness loop (epoll over its pollers, and a wake descriptor that
// other threads signal). Used by the server shards, the acceptor and the client's progress
// thread.
#pragma once

#include <memkv/detail/socket.hpp>
#include <memkv/error.hpp>
#include <memkv/result.hpp>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>

namespace memkv::detail {

/// Waits for readiness of the descriptors registered with it (sockets, a store's completion fd,
/// later an RDMA completion channel), each under a token of the owner's choosing, and for
/// wake() from any thread.
///
/// Contracts:
///  1. add/modify/remove and run_once are called by the owning thread only; wake() by any.
///  2. run_once() reports each ready descriptor as (token, epoll events) and a wake as the
///     single call on_wake(); wakes that arrive while the loop is busy are not lost: the next
///     run_once() returns at once.
///  3. A descriptor is removed before it is closed (epoll would otherwise keep reporting it).
class event_loop {
public:
    /// The token reserved for the wake descriptor; owners never use it.
    static constexpr std::uint64_t wake_token = ~0ull;

    static result<event_loop> create() noexcept {
        event_loop l;
        l.epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
        if (!l.epoll_) return errno_code(errno);
        l.wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!l.wake_) return errno_code(errno);
        MEMKV_TRY(l.add(l.wake_.get(), EPOLLIN, wake_token));
        return l;
    }

    event_loop() = default;
    event_loop(event_loop&&) noexcept = default;
    event_loop& operator=(event_loop&&) noexcept = default;

    /// Watches `fd` for `events` (EPOLLIN, EPOLLOUT, ...), reported under `token`.
    result<void> add(int fd, std::uint32_t events, std::uint64_t token) noexcept {
        return control(EPOLL_CTL_ADD, fd, events, token);
    }
    /// Changes what `fd` is watched for.
    result<void> modify(int fd, std::uint32_t events, std::uint64_t token) noexcept {
        return control(EPOLL_CTL_MOD, fd, events, token);
    }
    /// Stops watching `fd` (before it is closed).
    void remove(int fd) noexcept { ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr); }

    /// Makes the loop's current or next run_once() return (any thread).
    void wake() noexcept {
        std::uint64_t one = 1;
        [[maybe_unused]] auto r = ::write(wake_.get(), &one, sizeof(one));
    }

    /// Waits up to `timeout` (0: only what is ready now) and dispatches: `on_event(token,
    /// events)` per ready descriptor, `on_wake()` once if woken. Returns the events handled.
    template <class OnEvent, class OnWake>
    int run_once(std::chrono::milliseconds timeout, OnEvent&& on_event, OnWake&& on_wake) {
        epoll_event events[max_events];
        const int n =
            ::epoll_wait(epoll_.get(), events, max_events, static_cast<int>(timeout.count()));
        for (int i = 0; i < n; ++i) {
            if (events[i].data.u64 == wake_token) {
                std::uint64_t v;
                [[maybe_unused]] auto r = ::read(wake_.get(), &v, sizeof(v));
                on_wake();
                continue;
            }
            on_event(events[i].data.u64, events[i].events);
        }
        return n < 0 ? 0 : n;
    }

private:
    static constexpr int max_events = 64;

    result<void> control(int op, int fd, std::uint32_t events, std::uint64_t token) noexcept {
        epoll_event ev{};
        ev.events = events;
        ev.data.u64 = token;
        if (::epoll_ctl(epoll_.get(), op, fd, &ev) != 0) return errno_code(errno);
        return {};
    }

    unique_fd epoll_, wake_;
};

} // namespace memkv::detail
