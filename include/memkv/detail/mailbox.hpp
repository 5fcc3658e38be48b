// SPDX-License-Identifier: Apache-2.0
// mailbox<T>: messages posted by any thread to the thread that runs an event_loop.
#pragma once

#include <memkv/detail/event_loop.hpp>

#include <deque>
#include <mutex>
#include <utility>

namespace memkv::detail {

/// A queue that any thread posts to and one event loop's thread drains. Posting wakes the loop
/// (event_loop::wake), so the owner drains its mailboxes in its on_wake handler or on every
/// round. The loop must outlive the mailbox's posters.
template <class T>
class mailbox {
public:
    explicit mailbox(event_loop& loop) noexcept : loop_(&loop) {}
    mailbox(const mailbox&) = delete;
    mailbox& operator=(const mailbox&) = delete;

    /// Queues `item` and wakes the owner (any thread).
    void post(T item) {
        {
            std::lock_guard lock(mutex_);
            items_.push_back(std::move(item));
        }
        loop_->wake();
    }

    /// Everything posted so far, oldest first (owner thread).
    std::deque<T> take() {
        std::deque<T> out;
        std::lock_guard lock(mutex_);
        out.swap(items_);
        return out;
    }

private:
    event_loop* loop_;
    std::mutex mutex_;
    std::deque<T> items_;
};

} // namespace memkv::detail
