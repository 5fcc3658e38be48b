// SPDX-License-Identifier: Apache-2.0
// file_store: a window of a preallocated file, with io_uring and O_DIRECT where the filesystem
// accepts it (co-located file mode: laptops, CI, edge nodes).
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/busy_wait.hpp>
#include <memkv/detail/claim_registry.hpp>
#include <memkv/detail/log.hpp>
#include <memkv/detail/socket.hpp>
#include <memkv/detail/uring.hpp>
#include <memkv/detail/uring_store_base.hpp>
#include <memkv/detail/window_slice.hpp>
#include <memkv/error.hpp>
#include <memkv/result.hpp>

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <utility>

namespace memkv {

namespace detail {

/// A file opened by the file_store instances of this process that share it: one open file
/// description carries their I/O and their OFD write locks (an OFD lock belongs to the open file
/// description, so locks taken through it never conflict with each other, while every other
/// open of the file conflicts with them). Held in claim_registry<claimed_file>::process() (weak:
/// a file is closed, and its locks released, with its last file_store).
struct claimed_file {
    dev_t dev = 0;
    ino_t ino = 0;
    unique_fd fd;
    bool direct = false; // O_DIRECT is a property of the open file description
};

} // namespace detail

/// @brief A store over the window [offset, offset + capacity) of a file.
///
/// - The file is created and preallocated (fallocate mode 0) up to offset + capacity when it is
///   smaller and `create` is set; writes then land in allocated extents (fdatasync is still needed
///   for durability: the extents are "unwritten" until written).
/// - O_DIRECT is used where the filesystem accepts it (ext4, xfs, btrfs, tmpfs since Linux 6.6).
///   With `direct_mode::auto_`, a refusal (EINVAL at open, or on a probe read of one block) falls
///   back to buffered I/O with a warning; `direct()` says which is in use.
/// - read/write go through io_uring (`detail::uring`); flush is fdatasync through io_uring;
///   discard punches a hole (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) on a worker thread
///   (detail::discard_worker), its completion coming back through poll(). A hole reads back as
///   zeros, which nothing may rely on (concept rule 5). Rewriting a punched range allocates again,
///   so a write can then fail with -ENOSPC if the filesystem filled up meanwhile.
/// - Offsets given to read/write/discard are relative to the window.
/// - **The window is owned exclusively**: create() takes an OFD write lock (F_OFD_SETLK) on the
///   window's byte range of the file and holds it for the lifetime of the store. Another
///   memkv-server on the same file, or a restart while a process killed a moment ago still has
///   io_uring writes in flight (its open file, and so its lock, lives until they completed), waits
///   up to `busy_wait_ms` for the lock, then fails with EBUSY ("in use by another memkv-server").
///   A filesystem without locks (ENOLCK) is used unlocked, with a warning.
/// - Instances in this process that open the same file share one open file description, which
///   carries their I/O and their locks (`share_in_process`, the default): every shard of a server
///   opens the whole file, and instances over other windows of it (shard_config) never block each
///   other. Its locks are released with the last instance. Sharing instances must agree on
///   O_DIRECT (one setting per open file description): `on` over a buffered one, or `off` over an
///   O_DIRECT one, is refused with errc::invalid_argument; `auto_` takes what is there. With
///   `share_in_process = false` an instance opens the file on its own and conflicts like another
///   process would.
/// - fork() shares open file descriptions: a child forked while a store is open holds the lock
///   with the parent until both closed it (the descriptor is close-on-exec: exec drops it).
class file_store : public detail::uring_store_base<std::shared_ptr<const detail::claimed_file>> {
public:
    /// Data survives the process: the engine keeps a superblock in it.
    static constexpr bool persistent = true;
    /// Reclaimed regions are not punched unless the server is told to (server_config::trim):
    /// refilling a hole allocates blocks, which ext4 does under the file's exclusive lock.
    static constexpr bool trim_by_default = false;

    /// Whether to use O_DIRECT.
    enum class direct_mode : std::uint8_t {
        auto_, ///< O_DIRECT if the filesystem accepts it, else buffered with a warning
        on,    ///< O_DIRECT or fail
        off,   ///< buffered I/O (page cache)
    };

    struct config {
        std::string path;                ///< the file
        std::uint64_t offset = 0;        ///< where this window starts in the file (block aligned)
        std::uint64_t capacity = 0;      ///< window length, rounded down to the block size;
                                         ///< 0 = up to the end of the existing file
        std::uint32_t block_size = 4096; ///< I/O alignment: power of two, >= 512
        unsigned queue_depth = 64;       ///< io_uring submission entries
        direct_mode direct = direct_mode::auto_;
        bool create = true; ///< create the file, and preallocate it up to offset + capacity
        bool share_in_process = true; ///< share this process's open of the file (and its locks)
        /// How long create() waits for a window locked by another open of the file (a killed
        /// server's writes in flight, or another server) before it fails with EBUSY.
        std::uint32_t busy_wait_ms = 10000;
    };

    /// A range of the window that lies on one device (window coordinates).
    struct segment {
        std::uint64_t offset = 0;
        std::uint64_t length = 0;
    };

    /// Opens (and creates, preallocates) the file and locks the window. Errors:
    /// errc::invalid_argument for a bad configuration, or an O_DIRECT setting that differs from
    /// this process's shared open of the file (logged); EBUSY when another open of the file holds
    /// a lock over the window after busy_wait_ms; errc::no_space when preallocation finds no
    /// space; a system error from open/fallocate/io_uring setup otherwise (EPERM/ENOSYS:
    /// io_uring disabled).
    static result<file_store> create(const config& cfg) noexcept {
        const std::uint32_t bs = cfg.block_size;
        if (bs < 512 || (bs & (bs - 1)) != 0 || cfg.path.empty() || cfg.offset % bs != 0 ||
            cfg.queue_depth == 0) {
            detail::log_error("file_store: bad configuration for '{}' (offset {}, block size {}, "
                              "queue depth {})",
                              cfg.path, cfg.offset, bs, cfg.queue_depth);
            return errc::invalid_argument;
        }
        bool direct = cfg.direct != direct_mode::off;
        auto own = open_file(cfg, direct);
        if (!own) return own.error();
        struct stat st {};
        if (::fstat(own->get(), &st) != 0) return errno_code(errno);
        if (!S_ISREG(st.st_mode)) {
            detail::log_error("file_store: {} is not a regular file (use block_store for devices)",
                              cfg.path);
            return errc::invalid_argument;
        }
        const auto size = static_cast<std::uint64_t>(st.st_size);
        auto cap = window_capacity(cfg, size);
        if (!cap) return cap.error();
        file_store s;
        s.block_size_ = bs;
        // The registry's lock is held until the instance is published (or refused), so that two
        // instances in this process never open the file on their own at the same time.
        auto same_file = [&](const detail::claimed_file& f) {
            return f.dev == st.st_dev && f.ino == st.st_ino;
        };
        auto new_file = [&]() -> result<std::shared_ptr<detail::claimed_file>> {
            auto file = std::make_shared<detail::claimed_file>();
            file->dev = st.st_dev;
            file->ino = st.st_ino;
            file->fd = std::move(*own);
            file->direct = direct;
            return file;
        };
        auto use_file = [&](detail::claimed_file& file, bool fresh) -> result<void> {
            if (!fresh) own->reset(); // this instance's I/O and lock go through the shared open
            MEMKV_TRY(take_window(cfg, file, fresh, size, *cap));
            return s.open_ring("file_store", cfg.queue_depth);
        };
        auto file = detail::claim_registry<detail::claimed_file>::process().find_or_claim(
            cfg.share_in_process, same_file, new_file, use_file);
        if (!file) return file.error();
        s.offset_ = cfg.offset;
        s.capacity_ = *cap;
        s.segment_ = {0, *cap};
        s.direct_ = (*file)->direct;
        s.owner_ = std::move(*file);
        return s;
    }

    /// Window `shard` of `shards` equal, block-aligned slices of [offset, offset + capacity)
    /// (capacity 0: up to the current end of the file). When the slice would be empty, or the
    /// file size cannot be read, the result has an unaligned offset that create() refuses.
    static config shard_config(const config& c, std::uint32_t shard,
                               std::uint32_t shards) noexcept {
        config s = c;
        if (shards <= 1) return s;
        std::uint64_t cap = c.capacity;
        struct stat st {};
        if (cap == 0 && ::stat(c.path.c_str(), &st) == 0 &&
            static_cast<std::uint64_t>(st.st_size) > c.offset)
            cap = static_cast<std::uint64_t>(st.st_size) - c.offset;
        const auto w = detail::slice_window({c.offset, cap}, c.block_size, shard, shards);
        s.offset = w.offset;
        s.capacity = w.capacity;
        return s;
    }

    file_store() noexcept = default;
    file_store(file_store&&) noexcept = default;
    file_store& operator=(file_store&&) noexcept = default;
    ~file_store() = default;

    // block_size(), capacity(), notify_fd(), bytes_written(), discards_unsupported() (hole
    // punching unsupported), io_stats(), register_buffers() and poll(): detail::uring_store_base.

    /// True when O_DIRECT is in use.
    bool direct() const noexcept { return direct_; }
    /// Ranges that never cross a device: for a file, the whole window.
    std::span<const segment> segments() const noexcept { return {&segment_, 1}; }

    /// Reads `buf.size()` bytes at window offset `offset`. Rules 1-3 of memkv::store.
    result<void> read(std::uint64_t offset, std::span<std::byte> buf, std::uint64_t tag) noexcept {
        MEMKV_TRY(check_range(offset, buf.size(), buf.data()));
        return ring_.read(fd(), offset_ + offset, buf, tag);
    }
    /// Writes `buf` at window offset `offset`.
    result<void> write(std::uint64_t offset, std::span<const std::byte> buf,
                       std::uint64_t tag) noexcept {
        MEMKV_TRY(check_range(offset, buf.size(), buf.data()));
        return ring_.write(fd(), offset_ + offset, buf, tag);
    }
    /// fdatasync through io_uring: completes after every write completed before it is durable.
    result<void> flush(std::uint64_t tag) noexcept { return ring_.fsync(fd(), true, tag); }
    /// Punches a hole over the range, on the discard worker (the caller never waits for it);
    /// the completion carries 0 or -errno. A filesystem without hole punching counts the
    /// discard and reports success.
    result<void> discard(std::uint64_t offset, std::uint64_t length, std::uint64_t tag) noexcept {
        MEMKV_TRY(check_range(offset, length, nullptr));
        const int f = fd();
        const auto at = static_cast<off_t>(offset_ + offset);
        const auto len = static_cast<off_t>(length);
        return submit_discard(tag, [f, at, len] {
            if (len == 0) return 0;
            return ::fallocate(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, len) == 0 ? 0
                                                                                            : errno;
        });
    }

private:
    /// The file's descriptor (-1 in a default-constructed or moved-from store).
    int fd() const noexcept { return owner_ ? owner_->fd.get() : -1; }

    /// Takes an OFD write lock on [offset, offset + length) of `fd`, retrying every 50 ms for up
    /// to `wait_ms` while another open file description holds a conflicting lock: a server killed
    /// a moment ago keeps its open file (and lock) until the kernel finished its in-flight
    /// io_uring writes, which must not land after this store started using the window.
    /// Opens the file, with O_DIRECT when `direct` (cleared when the filesystem refuses it and
    /// the mode is auto_).
    static result<detail::unique_fd> open_file(const config& cfg, bool& direct) noexcept {
        const int base_flags = O_RDWR | O_CLOEXEC | (cfg.create ? O_CREAT : 0);
        detail::unique_fd own(::open(cfg.path.c_str(), base_flags | (direct ? O_DIRECT : 0), 0600));
        if (!own && errno == EINVAL && cfg.direct == direct_mode::auto_) {
            warn_buffered(cfg.path, "does not accept O_DIRECT");
            direct = false;
            own.reset(::open(cfg.path.c_str(), base_flags, 0600));
        }
        if (!own) {
            const int err = errno;
            detail::log_error("file_store: cannot open {}: {}", cfg.path, std::strerror(err));
            return errno_code(err);
        }
        return own;
    }

    /// The window's length for a file of `size` bytes, checked against the file.
    static result<std::uint64_t> window_capacity(const config& cfg, std::uint64_t size) noexcept {
        const std::uint32_t bs = cfg.block_size;
        std::uint64_t cap = cfg.capacity / bs * bs;
        if (cfg.capacity == 0) cap = size > cfg.offset ? (size - cfg.offset) / bs * bs : 0;
        if (cap == 0 || cfg.offset > std::numeric_limits<std::uint64_t>::max() - cap) {
            detail::log_error("file_store: {}: empty window (offset {}, capacity {}, file size {})",
                              cfg.path, cfg.offset, cfg.capacity, size);
            return errc::invalid_argument;
        }
        if (size < cfg.offset + cap && !cfg.create) {
            detail::log_error("file_store: {} has {} bytes; the window needs {}", cfg.path, size,
                              cfg.offset + cap);
            return errc::invalid_argument;
        }
        return cap;
    }

    /// Takes this instance's window of `file` (a fresh open, or this process's shared one):
    /// checks the O_DIRECT setting agrees, locks the window, preallocates what the file lacks,
    /// and, on a fresh O_DIRECT open, probes that the filesystem takes this block size.
    static result<void> take_window(const config& cfg, detail::claimed_file& file, bool fresh,
                                    std::uint64_t size, std::uint64_t cap) noexcept {
        if (!fresh && ((cfg.direct == direct_mode::on && !file.direct) ||
                       (cfg.direct == direct_mode::off && file.direct))) {
            detail::log_error("file_store: {} is open in this process with O_DIRECT {}; instances "
                              "sharing it cannot turn it {}",
                              cfg.path, file.direct ? "on" : "off", file.direct ? "off" : "on");
            return errc::invalid_argument;
        }
        const int fd = file.fd.get();
        const std::uint64_t end = cfg.offset + cap;
        MEMKV_TRY(lock_window(fd, cfg.path, cfg.offset, cap, cfg.busy_wait_ms));
        if (size < end) MEMKV_TRY(preallocate(fd, cfg.path, size, end));
        if (!fresh || !file.direct) return {};
        auto probe = probe_direct(fd, cfg.offset, cfg.block_size);
        if (!probe && probe.error() == std::errc::invalid_argument &&
            cfg.direct == direct_mode::auto_) {
            warn_buffered(cfg.path, "refuses O_DIRECT I/O of this block size");
            if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_DIRECT) != 0)
                return errno_code(errno);
            file.direct = false;
        } else if (!probe) {
            detail::log_error("file_store: {}: O_DIRECT probe failed: {}", cfg.path,
                              probe.error().message());
            return probe.error();
        }
        return {};
    }

    static result<void> lock_window(int fd, const std::string& path, std::uint64_t offset,
                                    std::uint64_t length, std::uint32_t wait_ms) noexcept {
        struct flock fl {};
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = static_cast<off_t>(offset);
        fl.l_len = static_cast<off_t>(length);
        result<void> out;
        bool waited = false;
        auto attempt = [&] {
            if (::fcntl(fd, F_OFD_SETLK, &fl) == 0) {
                if (waited) detail::log_info("file_store: {}: got the lock", path);
                return true;
            }
            const int err = errno;
            if (err == EAGAIN || err == EACCES) return false; // held by another open: wait
            if (err == ENOLCK || err == EOPNOTSUPP) {
                detail::log_warn("file_store: {} cannot be locked ({}): nothing stops another "
                                 "memkv-server from using it at the same time",
                                 path, std::strerror(err));
            } else {
                detail::log_error("file_store: cannot lock {}: {}", path, std::strerror(err));
                out = errno_code(err);
            }
            return true;
        };
        const bool done =
            detail::retry_while_busy(std::chrono::milliseconds(wait_ms), attempt, [&] {
                waited = true;
                detail::log_info("file_store: {} is locked by another open of it (a server that is "
                                 "still running, or one killed with writes in flight); waiting up "
                                 "to {} ms",
                                 path, wait_ms);
            });
        if (done) return out;
        detail::log_error("file_store: file {} is in use by another memkv-server (bytes [{}, {}) "
                          "are locked by another open of it; waited {} ms)",
                          path, offset, offset + length, wait_ms);
        return errno_code(EBUSY);
    }

    static result<void> preallocate(int fd, const std::string& path, std::uint64_t from,
                                    std::uint64_t to) noexcept {
        if (::fallocate(fd, 0, static_cast<off_t>(from), static_cast<off_t>(to - from)) == 0)
            return {};
        const int err = errno;
        if (err == ENOSPC) {
            detail::log_error("file_store: no space to preallocate {} bytes of {}", to - from,
                              path);
            return errc::no_space;
        }
        if (err != EOPNOTSUPP) {
            detail::log_error("file_store: cannot preallocate {}: {}", path, std::strerror(err));
            return errno_code(err);
        }
        detail::log_warn("file_store: {} cannot be preallocated; the file stays sparse", path);
        if (::ftruncate(fd, static_cast<off_t>(to)) != 0) return errno_code(errno);
        return {};
    }

    /// Every shard opens the file: the fallback is logged once per process.
    static void warn_buffered(const std::string& path, const char* why) noexcept {
        static std::atomic<bool> logged{false};
        if (!logged.exchange(true))
            detail::log_warn("file_store: {} {}; using buffered I/O (page cache)", path, why);
    }

    /// One aligned O_DIRECT read of a block at `at`: EINVAL means the filesystem (or its block
    /// size) refuses this alignment.
    static result<void> probe_direct(int fd, std::uint64_t at, std::uint32_t bs) noexcept {
        void* p = nullptr;
        if (::posix_memalign(&p, bs, bs) != 0) return errc::no_space;
        const ssize_t r = ::pread(fd, p, bs, static_cast<off_t>(at));
        const int err = errno;
        std::free(p);
        if (r < 0) return errno_code(err);
        return {};
    }

    // owner_ (uring_store_base): the open file, shared in this process.
    std::uint64_t offset_ = 0; // file offset of window offset 0
    segment segment_{};
    bool direct_ = false;
};

static_assert(store<file_store>);

} // namespace memkv
