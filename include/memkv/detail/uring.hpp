// SPDX-License-Identifier: Apache-2.0
// A small RAII wrapper over liburing (>= 2.3) for the stores: one ring per store instance, an
// eventfd that becomes readable when completions are pending, and reads and writes that complete
// only when all their bytes are done (short I/O and -EAGAIN are resubmitted, as in liburing's
// examples/io_uring-cp.c).
#pragma once

#if !__has_include(<liburing.h>)
#error "memkv/detail/uring.hpp needs liburing >= 2.3 (Debian: liburing-dev); link memkv::uring"
#endif

#include <memkv/concepts.hpp>
#include <memkv/detail/log.hpp>
#include <memkv/detail/socket.hpp>
#include <memkv/error.hpp>
#include <memkv/result.hpp>

#include <liburing.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <utility>
#include <vector>

namespace memkv::detail {

/// Counters of one uring (monotonic; never reset).
struct uring_stats {
    std::uint64_t bytes_read = 0;       ///< bytes of reads that completed successfully
    std::uint64_t bytes_written = 0;    ///< bytes of writes that completed successfully
    std::uint64_t fixed_ops = 0;        ///< submissions that used a registered (fixed) buffer
    std::uint64_t short_resubmits = 0;  ///< remainders resubmitted after a short read or write
    std::uint64_t eagain_resubmits = 0; ///< submissions repeated after -EAGAIN or -EINTR
    std::uint64_t backlogged = 0;       ///< operations that waited in user space for ring space
    std::uint64_t rings_rebuilt = 0;    ///< rings replaced because another thread took over
};

/// @brief One io_uring with an eventfd, for one store instance.
///
/// Contract:
///  - `read`, `write` and `fsync` never block. When the submission queue is full the ring is
///    submitted and the SQE retried; when the kernel already holds as many operations as the
///    completion queue has entries (or the kernel refuses more for now), the operation waits in a
///    user-space backlog that `reap` drains. Each accepted operation produces exactly one
///    completion, from `reap`, with its `user_data`.
///  - A read or write completes only when all its bytes are transferred (`res` = length) or an
///    error occurred (`res` = -errno, as the kernel reported it). Short transfers are resubmitted
///    for the remainder, -EAGAIN/-EINTR are resubmitted as they are. A read that reaches end of
///    file completes with the bytes it got.
///  - Buffers are borrowed until their completion is reaped. When a buffer lies entirely inside a
///    region passed to `register_buffers`, the fixed-buffer opcodes are used.
///  - `event_fd()` (registered with io_uring_register_eventfd) becomes readable when a completion
///    is pending; `reap` re-arms it when it leaves completions behind, so that a caller that waits
///    for readability before every `reap` never misses one.
///  - One thread at a time. Where the kernel offers IORING_SETUP_SINGLE_ISSUER, the ring is
///    created disabled and enabled by the first thread that submits; when another thread takes
///    over (a store created on the main thread and handed to a shard thread), a fresh ring is made
///    for it and the old one is drained by `reap`, transparently.
///  - Destruction waits (up to 10 s) for operations the kernel still holds, so that no DMA lands in
///    a buffer after its owner is gone.
class uring {
public:
    /// Largest byte count submitted in one SQE; larger requests go in several pieces.
    static constexpr std::uint64_t max_chunk = 1ull << 30;

    /// A ring with `queue_depth` submission entries (clamped to [1, 4096]).
    /// IORING_SETUP_SINGLE_ISSUER and IORING_SETUP_COOP_TASKRUN are used where the kernel accepts
    /// them (each falls back when setup answers -EINVAL). EPERM/ENOSYS mean io_uring is disabled
    /// (sandbox, sysctl kernel.io_uring_disabled).
    static result<uring> create(unsigned queue_depth) noexcept {
        if (queue_depth == 0) return errc::invalid_argument;
        auto s = std::make_unique<state>();
        s->depth = std::min(queue_depth, 4096u);
        const int efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (efd < 0) return errno_code(errno);
        s->efd.reset(efd);
        constexpr unsigned coop = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
        constexpr unsigned attempts[] = {
            IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_R_DISABLED | coop, coop, 0u};
        int err = -EINVAL;
        for (const unsigned flags : attempts) {
            err = s->open_ring(flags, s->cur);
            if (err != -EINVAL) break;
        }
        if (err < 0) return errno_code(err);
        uring u;
        u.s_ = std::move(s);
        return u;
    }

    uring() noexcept = default;
    uring(uring&&) noexcept = default;
    uring& operator=(uring&&) noexcept = default;
    ~uring() = default;

    /// The eventfd: readable when completions are pending.
    int event_fd() const noexcept { return s_->efd.get(); }
    /// Submission queue entries of the ring.
    unsigned queue_depth() const noexcept { return s_->depth; }
    /// IORING_SETUP_* flags the ring was created with.
    unsigned setup_flags() const noexcept { return s_->flags; }
    /// Operations accepted and not yet reaped (fsync groups count once).
    std::size_t in_flight() const noexcept { return s_->outstanding; }
    const uring_stats& stats() const noexcept { return s_->stats; }

    /// Registers memory for fixed-buffer I/O (io_uring_register_buffers), replacing an earlier
    /// registration. Regions over 1 GiB are registered in 1 GiB pieces (the kernel's limit per
    /// buffer). Fails with errc::retry while operations are in flight; with ENOMEM when
    /// RLIMIT_MEMLOCK is too small (I/O then simply does not use fixed buffers).
    result<void> register_buffers(std::span<const iovec> regions) noexcept {
        if (s_->outstanding != 0 || !s_->backlog.empty()) return errc::retry;
        MEMKV_TRY(s_->take_over(false));
        std::vector<iovec> pieces;
        for (const iovec& r : regions) {
            auto* base = static_cast<std::byte*>(r.iov_base);
            for (std::size_t at = 0; at < r.iov_len; at += max_chunk)
                pieces.push_back({base + at, std::min<std::size_t>(max_chunk, r.iov_len - at)});
        }
        if (!s_->bufs.empty()) {
            (void)io_uring_unregister_buffers(&s_->cur->ring);
            s_->bufs.clear();
        }
        if (pieces.empty()) return {};
        const int r = io_uring_register_buffers(&s_->cur->ring, pieces.data(),
                                                static_cast<unsigned>(pieces.size()));
        if (r < 0) return errno_code(r);
        s_->bufs = std::move(pieces);
        return {};
    }
    /// Drops the fixed-buffer registration. Fails with errc::retry while operations are in flight.
    result<void> unregister_buffers() noexcept { return register_buffers({}); }

    /// Reads `buf.size()` bytes at `offset` of `fd` into `buf`.
    result<void> read(int fd, std::uint64_t offset, std::span<std::byte> buf,
                      std::uint64_t user_data) noexcept {
        return s_->start_rw(kind::read, fd, offset, buf.data(), buf.size(), user_data);
    }
    /// Writes `buf` at `offset` of `fd`.
    result<void> write(int fd, std::uint64_t offset, std::span<const std::byte> buf,
                       std::uint64_t user_data) noexcept {
        return s_->start_rw(kind::write, fd, offset, const_cast<std::byte*>(buf.data()), buf.size(),
                            user_data);
    }
    /// fsync (fdatasync when `datasync`) of every descriptor in `fds`, in parallel; one completion
    /// when all are done: 0, or the first -errno.
    result<void> fsync(std::span<const int> fds, bool datasync, std::uint64_t user_data) noexcept {
        return s_->start_fsync(fds, datasync, user_data);
    }
    result<void> fsync(int fd, bool datasync, std::uint64_t user_data) noexcept {
        return fsync(std::span<const int>(&fd, 1), datasync, user_data);
    }
    /// Queues a completion that needs no kernel I/O (an operation done synchronously) and
    /// signals the eventfd.
    void post(std::uint64_t user_data, std::int64_t res) noexcept {
        s_->ready.push_back({user_data, res});
        s_->signal();
    }

    /// Moves up to `out.size()` finished operations to `out`; never blocks. Also resubmits short
    /// transfers and drains the backlog.
    std::size_t reap(std::span<io_completion> out) noexcept { return s_->reap(out); }

    /// Waits until the eventfd is readable or `timeout` passes; true if readable.
    bool wait(std::chrono::milliseconds timeout) const noexcept {
        pollfd p{s_->efd.get(), POLLIN, 0};
        return ::poll(&p, 1, static_cast<int>(timeout.count())) > 0;
    }

private:
    enum class kind : std::uint8_t { read, write, fsync, group };
    static constexpr std::uint32_t no_parent = ~0u;

    /// One accepted operation, or one fsync of a group; identified by its index (the SQE's
    /// user_data).
    struct op {
        std::uint64_t user_data = 0;      // the caller's; unused for group members
        std::byte* buf = nullptr;         // start of the caller's buffer
        std::uint64_t len = 0;            // total bytes
        std::uint64_t done = 0;           // bytes transferred so far
        std::uint64_t offset = 0;         // file offset of buf[0]
        std::int64_t first_error = 0;     // group: the first negative result of a member
        std::uint32_t parent = no_parent; // group member: index of its group, else no_parent
        std::uint32_t pending = 0;        // group: members not finished
        std::uint32_t retries = 0;        // -EAGAIN resubmissions so far
        int fd = -1;                      //
        int buf_index = -1;               // registered buffer holding [buf, buf+len), or -1
        kind k = kind::read;              //
        bool datasync = false;            // fsync: IORING_FSYNC_DATASYNC
    };

    /// A ring and the number of SQEs handed to it whose CQE has not been reaped.
    struct ring_holder {
        io_uring ring{};
        unsigned in_kernel = 0;
        bool live = false;    // io_uring_queue_init succeeded
        bool enabled = false; // false while IORING_SETUP_R_DISABLED holds
        ring_holder() = default;
        ring_holder(const ring_holder&) = delete;
        ring_holder& operator=(const ring_holder&) = delete;
        ~ring_holder() {
            if (live) io_uring_queue_exit(&ring);
        }
    };

    static pid_t current_tid() noexcept {
        thread_local const pid_t tid = static_cast<pid_t>(::syscall(SYS_gettid));
        return tid;
    }

    /// Everything, behind one pointer so that moving a uring is cheap and leaves no dangling
    /// state; the destructor drains the kernel's operations.
    struct state {
        std::unique_ptr<ring_holder> cur;                  // the ring new SQEs go to
        std::vector<std::unique_ptr<ring_holder>> retired; // rings of former threads, draining
        unique_fd efd;                                     // registered with every ring
        std::vector<op> ops;                               // indexed by SQE user_data
        std::vector<std::uint32_t> free_ops;               // unused indices of ops
        std::deque<std::uint32_t> backlog;                 // ops waiting for ring space, FIFO
        std::deque<io_completion> ready;                   // finished, not yet reaped
        std::vector<iovec> bufs;                           // registered buffers, in index order
        uring_stats stats;
        std::size_t outstanding = 0; // accepted caller operations not yet reaped
        unsigned depth = 0;          // SQ entries
        unsigned cq_cap = 0;         // CQ entries: the most SQEs handed to the kernel at once
        unsigned flags = 0;          // IORING_SETUP_* of the rings
        pid_t owner = 0;             // thread the current ring is enabled for (single issuer)
        bool unsubmitted = false;    // SQEs prepared since the last successful submit

        state() = default;
        state(const state&) = delete;
        state& operator=(const state&) = delete;
        ~state() {
            drain(cur);
            for (auto& r : retired)
                drain(r);
        }

        int open_ring(unsigned setup, std::unique_ptr<ring_holder>& out) noexcept {
            auto h = std::make_unique<ring_holder>();
            io_uring_params p{};
            p.flags = setup;
            int r = io_uring_queue_init_params(depth, &h->ring, &p);
            if (r < 0) return r;
            h->live = true;
            h->enabled = (setup & IORING_SETUP_R_DISABLED) == 0;
            if ((r = io_uring_register_eventfd(&h->ring, efd.get())) < 0) return r;
            if (!bufs.empty() &&
                (r = io_uring_register_buffers(&h->ring, bufs.data(),
                                               static_cast<unsigned>(bufs.size()))) < 0)
                return r;
            flags = setup;
            cq_cap = p.cq_entries;
            out = std::move(h);
            return 0;
        }
        /// Makes the current ring usable by the calling thread (single issuer: the ring is
        /// enabled by its first submitter; a new thread gets a new ring). `enable` false: only
        /// replace a ring owned by another thread (registration works on a disabled ring).
        result<void> take_over(bool enable) noexcept {
            if ((flags & IORING_SETUP_SINGLE_ISSUER) == 0) return {};
            const pid_t me = current_tid();
            if (owner == me) return {};
            if (!cur->enabled) {
                if (!enable) return {};
                // io_uring_enable_rings() is declared but not exported by liburing 2.3.
                if (::syscall(__NR_io_uring_register, cur->ring.ring_fd,
                              IORING_REGISTER_ENABLE_RINGS, nullptr, 0) < 0)
                    return errno_code(errno);
                cur->enabled = true;
                owner = me;
                return {};
            }
            std::unique_ptr<ring_holder> fresh;
            const int r = open_ring(flags, fresh);
            if (r < 0) {
                log_error("io_uring: cannot make a ring for a new thread: {}",
                          errno_code(r).message());
                return errno_code(r);
            }
            if (unsubmitted) (void)io_uring_submit(&cur->ring);
            if (cur->in_kernel != 0) retired.push_back(std::move(cur));
            cur = std::move(fresh);
            unsubmitted = false;
            owner = 0;
            ++stats.rings_rebuilt;
            if (enable) return take_over(true);
            return {};
        }

        std::uint32_t alloc_op() {
            if (!free_ops.empty()) {
                const std::uint32_t i = free_ops.back();
                free_ops.pop_back();
                ops[i] = op{};
                return i;
            }
            ops.emplace_back();
            return static_cast<std::uint32_t>(ops.size() - 1);
        }

        int fixed_index(const std::byte* p, std::uint64_t len) const noexcept {
            for (std::size_t i = 0; i < bufs.size(); ++i) {
                const auto* base = static_cast<const std::byte*>(bufs[i].iov_base);
                if (p >= base && p + len <= base + bufs[i].iov_len) return static_cast<int>(i);
            }
            return -1;
        }

        result<void> start_rw(kind k, int fd, std::uint64_t offset, std::byte* buf,
                              std::uint64_t len, std::uint64_t user_data) noexcept {
            if (len == 0) {
                ready.push_back({user_data, 0});
                signal();
                return {};
            }
            MEMKV_TRY(take_over(true));
            const std::uint32_t i = alloc_op();
            op& o = ops[i];
            o.user_data = user_data;
            o.buf = buf;
            o.len = len;
            o.offset = offset;
            o.fd = fd;
            o.k = k;
            o.parent = no_parent;
            o.buf_index = fixed_index(buf, len);
            ++outstanding;
            queue(i);
            kick();
            return {};
        }

        result<void> start_fsync(std::span<const int> fds, bool datasync,
                                 std::uint64_t user_data) noexcept {
            if (fds.empty()) {
                ready.push_back({user_data, 0});
                signal();
                return {};
            }
            MEMKV_TRY(take_over(true));
            std::uint32_t parent = no_parent;
            if (fds.size() > 1) {
                parent = alloc_op();
                ops[parent].k = kind::group;
                ops[parent].user_data = user_data;
                ops[parent].parent = no_parent;
                ops[parent].pending = static_cast<std::uint32_t>(fds.size());
            }
            ++outstanding;
            for (const int fd : fds) {
                const std::uint32_t i = alloc_op();
                op& o = ops[i];
                o.user_data = user_data;
                o.fd = fd;
                o.k = kind::fsync;
                o.datasync = datasync;
                o.parent = parent;
                queue(i);
            }
            kick();
            return {};
        }

        /// Hands op `i` to the ring, or to the backlog when there is no room (FIFO).
        void queue(std::uint32_t i) noexcept {
            if (!backlog.empty() || !prep(i)) {
                backlog.push_back(i);
                ++stats.backlogged;
            }
        }

        bool prep(std::uint32_t i) noexcept {
            ring_holder& h = *cur;
            if (h.in_kernel >= cq_cap) return false; // never more than the CQ can hold
            io_uring_sqe* sqe = io_uring_get_sqe(&h.ring);
            if (sqe == nullptr) {
                submit(); // SQ full: hand it to the kernel and try once more
                sqe = io_uring_get_sqe(&h.ring);
                if (sqe == nullptr) return false;
            }
            const op& o = ops[i];
            const auto n = static_cast<unsigned>(std::min(o.len - o.done, max_chunk));
            std::byte* p = o.buf + o.done;
            const std::uint64_t at = o.offset + o.done;
            switch (o.k) {
            case kind::read:
                if (o.buf_index >= 0)
                    io_uring_prep_read_fixed(sqe, o.fd, p, n, at, o.buf_index);
                else
                    io_uring_prep_read(sqe, o.fd, p, n, at);
                break;
            case kind::write:
                if (o.buf_index >= 0)
                    io_uring_prep_write_fixed(sqe, o.fd, p, n, at, o.buf_index);
                else
                    io_uring_prep_write(sqe, o.fd, p, n, at);
                break;
            case kind::fsync:
            case kind::group:
                io_uring_prep_fsync(sqe, o.fd, o.datasync ? IORING_FSYNC_DATASYNC : 0);
                break;
            }
            if (o.buf_index >= 0) ++stats.fixed_ops;
            io_uring_sqe_set_data64(sqe, i);
            ++h.in_kernel;
            unsubmitted = true;
            return true;
        }

        void submit() noexcept {
            const int r = io_uring_submit(&cur->ring);
            // -EAGAIN/-EBUSY: the kernel wants completions reaped first; the SQEs stay queued
            // and go with the next submit (reap retries).
            if (r >= 0 || io_uring_sq_ready(&cur->ring) == 0) unsubmitted = false;
        }

        /// Submits what was prepared; signals the eventfd when progress needs a `reap` that no
        /// completion would otherwise trigger.
        void kick() noexcept {
            if (unsubmitted) submit();
            if (unsubmitted || (!backlog.empty() && cur->in_kernel == 0)) signal();
        }

        void signal() const noexcept { (void)::eventfd_write(efd.get(), 1); }

        void finish(std::uint32_t i, std::int64_t res) noexcept {
            op& o = ops[i];
            if (o.parent != no_parent) {
                const std::uint32_t g = o.parent;
                free_ops.push_back(i);
                op& grp = ops[g];
                if (res < 0 && grp.first_error == 0) grp.first_error = res;
                if (--grp.pending == 0) finish(g, grp.first_error);
                return;
            }
            if (res > 0 && o.k == kind::read) stats.bytes_read += static_cast<std::uint64_t>(res);
            if (res > 0 && o.k == kind::write)
                stats.bytes_written += static_cast<std::uint64_t>(res);
            ready.push_back({o.user_data, res});
            --outstanding;
            free_ops.push_back(i);
        }

        void on_cqe(std::uint32_t i, std::int32_t res) noexcept {
            op& o = ops[i];
            if ((res == -EAGAIN || res == -EINTR) && o.retries < 10000) {
                ++o.retries;
                ++stats.eagain_resubmits;
                queue(i);
                return;
            }
            if (o.k != kind::read && o.k != kind::write) return finish(i, res);
            if (res < 0) return finish(i, res);
            if (res == 0) // end of file for a read; a write that makes no progress is an error
                return finish(i, o.k == kind::read ? static_cast<std::int64_t>(o.done) : -EIO);
            o.done += static_cast<std::uint64_t>(res);
            if (o.done < o.len) {
                ++stats.short_resubmits;
                queue(i);
                return;
            }
            finish(i, static_cast<std::int64_t>(o.done));
        }

        void harvest(ring_holder& h) noexcept {
            io_uring_cqe* cqes[64];
            for (;;) {
                const unsigned n = io_uring_peek_batch_cqe(&h.ring, cqes, 64);
                if (n == 0) return;
                std::pair<std::uint32_t, std::int32_t> got[64];
                for (unsigned k = 0; k < n; ++k)
                    got[k] = {static_cast<std::uint32_t>(io_uring_cqe_get_data64(cqes[k])),
                              cqes[k]->res};
                io_uring_cq_advance(&h.ring, n);
                h.in_kernel -= n;
                for (unsigned k = 0; k < n; ++k)
                    on_cqe(got[k].first, got[k].second);
            }
        }

        std::size_t reap(std::span<io_completion> out) noexcept {
            eventfd_t v;
            (void)::eventfd_read(efd.get(), &v); // before harvesting: a later CQE re-arms it
            if (outstanding != 0 && !take_over(true))
                log_warn("io_uring: this thread cannot submit; completions may stall");
            for (auto& r : retired)
                harvest(*r);
            std::erase_if(retired, [](const auto& r) { return r->in_kernel == 0; });
            harvest(*cur);
            while (!backlog.empty() && prep(backlog.front()))
                backlog.pop_front();
            if (unsubmitted) submit();
            const std::size_t n = std::min(out.size(), ready.size());
            std::copy_n(ready.begin(), n, out.begin());
            ready.erase(ready.begin(), ready.begin() + static_cast<std::ptrdiff_t>(n));
            if (!ready.empty() || unsubmitted || io_uring_cq_ready(&cur->ring) != 0 ||
                (!backlog.empty() && cur->in_kernel == 0))
                signal();
            return n;
        }

        /// Waits for every SQE the kernel holds (at most 10 s), without resubmitting anything.
        static void drain(std::unique_ptr<ring_holder>& h) noexcept {
            if (!h || h->in_kernel == 0) return;
            if (h->enabled) (void)io_uring_submit(&h->ring);
            const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
            while (h->in_kernel != 0 && std::chrono::steady_clock::now() < deadline) {
                io_uring_cqe* cqe = nullptr;
                __kernel_timespec ts{0, 100'000'000};
                const int r = io_uring_wait_cqe_timeout(&h->ring, &cqe, &ts);
                if (r == 0 && cqe != nullptr) {
                    io_uring_cqe_seen(&h->ring, cqe);
                    --h->in_kernel;
                } else if (r != -ETIME && r != -EINTR && r != -EAGAIN) {
                    break;
                }
            }
            if (h->in_kernel != 0)
                log_warn("io_uring: closing a ring with {} operations still in the kernel",
                         h->in_kernel);
        }
    };

    std::unique_ptr<state> s_;
};

} // namespace memkv::detail
