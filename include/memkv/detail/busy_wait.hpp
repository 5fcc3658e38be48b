// SPDX-License-Identifier: Apache-2.0
// Waiting for a store resource that another process still holds (a server killed a moment ago
// keeps its file lock or exclusive device open until the kernel has finished its I/O).
#pragma once

#include <unistd.h>

#include <chrono>

namespace memkv::detail {

/// How often a busy resource is tried again.
inline constexpr std::chrono::milliseconds busy_retry_interval{50};

/// Calls `attempt()` until it returns true (done, or failed for a reason other than being busy)
/// or `wait` has passed, every busy_retry_interval; `on_first_wait()` runs once, before the
/// first pause (to say what is being waited for). Returns false when the wait ran out.
template <class Attempt, class OnFirstWait>
bool retry_while_busy(std::chrono::milliseconds wait, Attempt&& attempt,
                      OnFirstWait&& on_first_wait) {
    const auto deadline = std::chrono::steady_clock::now() + wait;
    for (bool waited = false;; waited = true) {
        if (attempt()) return true;
        if (std::chrono::steady_clock::now() >= deadline) return false;
        if (!waited) on_first_wait();
        ::usleep(static_cast<useconds_t>(busy_retry_interval.count() * 1000));
    }
}

} // namespace memkv::detail
