// SPDX-License-Identifier: Apache-2.0
// file_store: a preallocated file on any filesystem, driven by io_uring, O_DIRECT where the
// filesystem accepts it (co-located file mode).
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/log.hpp>
#include <memkv/detail/socket.hpp>

#include <fcntl.h>
#include <liburing.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

namespace memkv {

/// A store in one file. Every instance opens the file with its own descriptor and io_uring (a
/// server opens one per shard), so instances never share state. Reads and writes are
/// io_uring operations; short transfers and -EAGAIN are resubmitted until the whole operation
/// is done, so each completes exactly once with its full length or an error. Flush is
/// fdatasync through the ring (the file's preallocated extents need it even with O_DIRECT);
/// discard punches a hole (fallocate PUNCH_HOLE | KEEP_SIZE).
class file_store {
public:
    static constexpr bool persistent = true;

    enum class direct_mode { auto_, on, off };

    struct config {
        std::string path;                    ///< created if absent (when `create`)
        std::uint64_t offset = 0;            ///< where this store starts in the file
        std::uint64_t capacity = 1ull << 30; ///< bytes from `offset`
        std::uint32_t block_size = 4096;
        unsigned queue_depth = 128;
        direct_mode direct = direct_mode::auto_; ///< auto: O_DIRECT if the filesystem takes it
        bool create = true;                  ///< create and preallocate the file if needed
    };

    static result<file_store> create(const config& c) {
        if (c.path.empty() || c.capacity == 0 || c.block_size < 512 ||
            (c.block_size & (c.block_size - 1)) || c.offset % c.block_size ||
            c.capacity % c.block_size)
            return errc::invalid_argument;
        file_store s;
        s.offset_ = c.offset;
        s.capacity_ = c.capacity;
        s.block_size_ = c.block_size;
        const int flags = O_RDWR | O_CLOEXEC | (c.create ? O_CREAT : 0);
        if (c.direct != direct_mode::off) {
            s.fd_.reset(::open(c.path.c_str(), flags | O_DIRECT, 0600));
            s.direct_ = s.fd_ && probe_direct(s.fd_.get(), c.block_size);
            if (!s.direct_) {
                if (c.direct == direct_mode::on) {
                    detail::log_error("{}: the filesystem refuses O_DIRECT", c.path);
                    return errc::invalid_argument;
                }
                s.fd_.reset();
            }
        }
        if (!s.fd_) {
            s.fd_.reset(::open(c.path.c_str(), flags, 0600));
            if (!s.fd_) {
                const int err = errno;
                detail::log_error("cannot open {}: {}", c.path, std::strerror(err));
                return errno_code(err);
            }
            if (c.direct == direct_mode::auto_ && !logged_fallback().exchange(true))
                detail::log_warn("{}: O_DIRECT is not available on this filesystem; using "
                                 "buffered I/O (page cache)",
                                 c.path);
        }
        struct stat st {};
        if (::fstat(s.fd_.get(), &st) != 0) return errno_code(errno);
        if (!S_ISREG(st.st_mode)) return errc::invalid_argument;
        const auto need = static_cast<off_t>(c.offset + c.capacity);
        if (st.st_size < need) {
            if (!c.create) return errc::no_space;
            if (::fallocate(s.fd_.get(), 0, 0, need) != 0 && ::ftruncate(s.fd_.get(), need) != 0)
                return errno_code(errno);
        }
        s.ring_ = std::make_unique<io_uring>();
        if (int r = ::io_uring_queue_init(c.queue_depth, s.ring_.get(), 0); r < 0) {
            s.ring_.reset();
            return errno_code(r);
        }
        s.event_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!s.event_ || ::io_uring_register_eventfd(s.ring_.get(), s.event_.get()) < 0)
            return errno_code(errno);
        return s;
    }

    /// Each shard opens the whole store (the engine gives it a window): no split here.
    file_store() = default;
    file_store(file_store&& o) noexcept { swap(o); }
    file_store& operator=(file_store&& o) noexcept {
        file_store tmp(std::move(o));
        swap(tmp);
        return *this;
    }
    ~file_store() {
        if (ring_) ::io_uring_queue_exit(ring_.get());
    }

    std::uint32_t block_size() const noexcept { return block_size_; }
    std::uint64_t capacity() const noexcept { return capacity_; }
    int notify_fd() const noexcept { return event_.get(); }
    /// Whether O_DIRECT is in use.
    bool direct() const noexcept { return direct_; }
    std::uint64_t bytes_written() const noexcept { return bytes_written_; }

    result<void> read(std::uint64_t offset, std::span<std::byte> buf, std::uint64_t tag) noexcept {
        MEMKV_TRY(check(offset, buf.size(), buf.data()));
        return submit(op_kind::read, offset, buf.data(), buf.size(), tag);
    }
    result<void> write(std::uint64_t offset, std::span<const std::byte> buf,
                       std::uint64_t tag) noexcept {
        MEMKV_TRY(check(offset, buf.size(), buf.data()));
        return submit(op_kind::write, offset, const_cast<std::byte*>(buf.data()), buf.size(), tag);
    }
    result<void> flush(std::uint64_t tag) noexcept {
        return submit(op_kind::fsync, 0, nullptr, 0, tag);
    }
    result<void> discard(std::uint64_t offset, std::uint64_t length, std::uint64_t tag) noexcept {
        MEMKV_TRY(check(offset, length, nullptr));
        const int r = ::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                  static_cast<off_t>(offset_ + offset), static_cast<off_t>(length));
        ready_.push_back({tag, r == 0 ? 0 : -errno});
        return {};
    }

    std::size_t poll(std::span<io_completion> out) noexcept {
        std::uint64_t v;
        [[maybe_unused]] auto r = ::read(event_.get(), &v, sizeof(v)); // re-arm the eventfd
        std::size_t n = 0;
        while (n < out.size() && !ready_.empty()) {
            out[n++] = ready_.back();
            ready_.pop_back();
        }
        io_uring_cqe* cqe = nullptr;
        while (n < out.size() && ::io_uring_peek_cqe(ring_.get(), &cqe) == 0) {
            auto* o = static_cast<op*>(::io_uring_cqe_get_data(cqe));
            const int res = cqe->res;
            ::io_uring_cqe_seen(ring_.get(), cqe);
            if (res == -EAGAIN || res == -EINTR || (res > 0 && o->kind != op_kind::fsync &&
                                                    o->done + std::size_t(res) < o->len)) {
                if (res > 0) o->done += static_cast<std::size_t>(res);
                if (!queue(o)) out[n++] = finish(o, -EIO);
                continue;
            }
            if (res == 0 && o->kind != op_kind::fsync && o->len != o->done)
                out[n++] = finish(o, -EIO); // end of file: cannot happen inside the window
            else
                out[n++] = finish(o, res < 0 ? res : static_cast<std::int64_t>(o->done + res));
        }
        flush_backlog();
        ::io_uring_submit(ring_.get());
        return n;
    }

private:
    enum class op_kind { read, write, fsync };
    struct op {
        op_kind kind;
        std::uint64_t offset; // file offset
        std::byte* buf;
        std::size_t len, done;
        std::uint64_t tag;
    };

    static std::atomic<bool>& logged_fallback() {
        static std::atomic<bool> once{false};
        return once;
    }

    /// O_DIRECT opens can succeed on filesystems whose I/O then fails with EINVAL: try one.
    static bool probe_direct(int fd, std::uint32_t bs) {
        void* p = nullptr;
        if (::posix_memalign(&p, bs, bs) != 0) return false;
        const auto r = ::pread(fd, p, bs, 0);
        std::free(p);
        return r >= 0 || errno != EINVAL;
    }

    result<void> check(std::uint64_t offset, std::uint64_t length, const void* buf) const noexcept {
        if (offset % block_size_ || length % block_size_ ||
            reinterpret_cast<std::uintptr_t>(buf) % block_size_)
            return errc::bad_alignment;
        if (offset > capacity_ || length > capacity_ - offset) return errc::invalid_argument;
        return {};
    }

    result<void> submit(op_kind k, std::uint64_t offset, std::byte* buf, std::size_t len,
                        std::uint64_t tag) noexcept {
        op* o = alloc();
        *o = op{k, offset_ + offset, buf, len, 0, tag};
        if (k == op_kind::write) bytes_written_ += len;
        if (!queue(o)) backlog_.push_back(o); // the ring is full: submitted from poll()
        ::io_uring_submit(ring_.get());
        return {};
    }

    /// Puts an operation (or its remainder) on the ring; false if the ring has no room.
    bool queue(op* o) noexcept {
        io_uring_sqe* sqe = ::io_uring_get_sqe(ring_.get());
        if (!sqe) {
            ::io_uring_submit(ring_.get());
            sqe = ::io_uring_get_sqe(ring_.get());
            if (!sqe) return false;
        }
        switch (o->kind) {
        case op_kind::read:
            ::io_uring_prep_read(sqe, fd_.get(), o->buf + o->done,
                                 static_cast<unsigned>(o->len - o->done), o->offset + o->done);
            break;
        case op_kind::write:
            ::io_uring_prep_write(sqe, fd_.get(), o->buf + o->done,
                                  static_cast<unsigned>(o->len - o->done), o->offset + o->done);
            break;
        case op_kind::fsync: ::io_uring_prep_fsync(sqe, fd_.get(), IORING_FSYNC_DATASYNC); break;
        }
        ::io_uring_sqe_set_data(sqe, o);
        return true;
    }

    void flush_backlog() noexcept {
        while (!backlog_.empty() && queue(backlog_.front())) backlog_.erase(backlog_.begin());
    }

    io_completion finish(op* o, std::int64_t res) noexcept {
        const io_completion c{o->tag, res};
        free_.push_back(o);
        return c;
    }

    op* alloc() {
        if (free_.empty()) {
            ops_.push_back(std::make_unique<op>());
            return ops_.back().get();
        }
        op* o = free_.back();
        free_.pop_back();
        return o;
    }

    void swap(file_store& o) noexcept {
        std::swap(fd_, o.fd_);
        std::swap(event_, o.event_);
        std::swap(ring_, o.ring_);
        std::swap(offset_, o.offset_);
        std::swap(capacity_, o.capacity_);
        std::swap(block_size_, o.block_size_);
        std::swap(direct_, o.direct_);
        std::swap(bytes_written_, o.bytes_written_);
        std::swap(ops_, o.ops_);
        std::swap(free_, o.free_);
        std::swap(backlog_, o.backlog_);
        std::swap(ready_, o.ready_);
    }

    detail::unique_fd fd_, event_;
    std::unique_ptr<io_uring> ring_;
    std::uint64_t offset_ = 0, capacity_ = 0;
    std::uint32_t block_size_ = 4096;
    bool direct_ = false;
    std::uint64_t bytes_written_ = 0;
    std::vector<std::unique_ptr<op>> ops_; // every op record ever made (reused via free_)
    std::vector<op*> free_;
    std::vector<op*> backlog_;             // waiting for room on the ring
    std::vector<io_completion> ready_;     // completed without the ring (discard)
};

static_assert(store<file_store>);

} // namespace memkv
