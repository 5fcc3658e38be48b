// SPDX-License-Identifier: Apache-2.0
// block_store: raw block devices (NVMe, or a JBOF of several) owned exclusively, with io_uring
// and O_DIRECT (the distributed and co-located-with-drives shapes).
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

#if defined(MEMKV_HAS_BLKID)
#include <blkid.h> // pkg-config blkid: -I<includedir>/blkid
#endif

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace memkv {

namespace detail {

/// A block device held open with O_EXCL by this process, shared by the block_store instances
/// that use it (every shard of a server opens the whole store). Held in
/// claim_registry<claimed_device>::process() (weak: a device is closed with its last
/// block_store).
struct claimed_device {
    std::string path;
    dev_t rdev = 0;
    unique_fd fd;               // O_RDWR | O_DIRECT | O_EXCL
    std::uint64_t size = 0;     // BLKGETSIZE64
    std::uint32_t logical = 0;  // BLKSSZGET
    std::uint32_t physical = 0; // BLKPBSZGET
};

} // namespace detail

/// @brief A store over raw block devices, owned exclusively.
///
/// - The address space is the concatenation of the devices (each rounded down to the block
///   size), in the order given; the store is the window [offset, offset + capacity) of it.
/// - Each device is opened O_RDWR | O_DIRECT | O_EXCL: a mounted device, or one another program
///   holds exclusively, fails with EBUSY. Instances in this process share one exclusive open per
///   device (`share_in_process`, the default), because every shard of a server opens the whole
///   store; with `share_in_process = false` a second instance fails with EBUSY like any other
///   program would.
/// - A device that carries a filesystem, a partition table or another signature known to libblkid
///   is refused with errc::rejected, unless `format` is set: then those signatures are erased
///   (as `wipefs -a` does) so that the device is not mistaken for something else later. memkv's
///   own superblock is not known to libblkid: checking it is the storage engine's job. A build
///   without libblkid (MEMKV_HAS_BLKID) cannot check and refuses every device unless `format`.
/// - `segments()` lists the part of the window on each device. **A read, write or discard that
///   crosses from one segment to the next fails with errc::invalid_argument and submits nothing**:
///   the engine never places a region across two devices, so a crossing is a bug.
/// - read/write go through io_uring; flush is fdatasync of every device through io_uring (one
///   completion when all are done); discard is ioctl(BLKDISCARD) on a worker thread
///   (detail::discard_worker), its completion coming back through poll(); a device without
///   discard support counts it (`discards_unsupported()`) and reports success. TRIM may or may not
///   zero the range (concept rule 5).
class block_store
    : public detail::uring_store_base<std::vector<std::shared_ptr<const detail::claimed_device>>> {
public:
    /// Data survives the process: the engine keeps a superblock on the devices.
    static constexpr bool persistent = true;

    struct config {
        std::vector<std::string> devices; ///< block device paths, concatenated in this order
        std::uint64_t offset = 0;         ///< window start in the concatenation (block aligned)
        std::uint64_t capacity = 0;       ///< window length (rounded down to the block size);
                                          ///< 0 = everything after offset
        unsigned queue_depth = 64;        ///< io_uring submission entries
        bool format = false;          ///< accept (and erase) devices that carry another signature
        bool share_in_process = true; ///< instances in this process share the exclusive open
    };

    /// A range of the window that lies on one device (window coordinates).
    struct segment {
        std::uint64_t offset = 0;
        std::uint64_t length = 0;
    };

    /// Opens and claims every device. Errors (each logged with the device): a path that is not a
    /// block device or is listed twice, or an empty window: errc::invalid_argument; a foreign
    /// signature without `format`: errc::rejected; a busy device: EBUSY; io_uring setup: the
    /// system error (EPERM/ENOSYS: io_uring disabled).
    static result<block_store> create(const config& cfg) noexcept {
        if (cfg.devices.empty() || cfg.queue_depth == 0) {
            detail::log_error("block_store: no devices, or a queue depth of 0");
            return errc::invalid_argument;
        }
        block_store s;
        for (const auto& path : cfg.devices) {
            auto dev = claim(path, cfg);
            if (!dev) return dev.error();
            for (const auto& d : s.owner_)
                if (d->rdev == (*dev)->rdev) {
                    detail::log_error("block_store: {} is listed twice", path);
                    return errc::invalid_argument;
                }
            s.owner_.push_back(std::move(*dev));
        }
        std::uint32_t bs = 4096;
        for (const auto& d : s.owner_)
            bs = std::max(bs, d->logical);
        s.block_size_ = bs;

        std::uint64_t total = 0;
        for (const auto& d : s.owner_)
            total += d->size / bs * bs;
        if (cfg.offset % bs != 0 || cfg.offset >= total) {
            detail::log_error("block_store: offset {} is not a multiple of {} below the {} bytes "
                              "of the devices",
                              cfg.offset, bs, total);
            return errc::invalid_argument;
        }
        std::uint64_t cap = cfg.capacity == 0 ? total - cfg.offset : cfg.capacity / bs * bs;
        if (cap == 0 || cap > total - cfg.offset) {
            detail::log_error("block_store: window [{}, +{}) does not fit the {} bytes of the "
                              "devices",
                              cfg.offset, cfg.capacity, total);
            return errc::invalid_argument;
        }
        s.capacity_ = cap;

        // Window coordinates of each device's part, and the descriptors flush must sync.
        std::uint64_t dev_begin = 0;
        for (const auto& d : s.owner_) {
            const std::uint64_t dev_end = dev_begin + d->size / bs * bs;
            const std::uint64_t lo = std::max(dev_begin, cfg.offset);
            const std::uint64_t hi = std::min(dev_end, cfg.offset + cap);
            if (lo < hi) {
                s.segments_.push_back({lo - cfg.offset, hi - lo});
                s.maps_.push_back({lo - cfg.offset, hi - cfg.offset, lo - dev_begin, d->fd.get()});
                s.flush_fds_.push_back(d->fd.get());
            }
            dev_begin = dev_end;
        }

        MEMKV_TRY(s.open_ring("block_store", cfg.queue_depth));
        return s;
    }

    /// Slice `shard` of `shards` equal, block-aligned slices of the window. With capacity 0 the
    /// device sizes are read (a plain, non-exclusive open). When the slice would be empty or the
    /// sizes cannot be read, the result has an unaligned offset that create() refuses.
    static config shard_config(const config& c, std::uint32_t shard,
                               std::uint32_t shards) noexcept {
        config s = c;
        if (shards <= 1) return s;
        std::uint64_t total = 0;
        std::uint32_t bs = 4096;
        bool ok = !c.devices.empty();
        std::vector<std::pair<std::uint64_t, std::uint32_t>> geo;
        for (const auto& path : c.devices) {
            detail::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
            std::uint64_t size = 0;
            int lbs = 0;
            if (!fd || ::ioctl(fd.get(), BLKGETSIZE64, &size) != 0 ||
                ::ioctl(fd.get(), BLKSSZGET, &lbs) != 0) {
                ok = false;
                break;
            }
            bs = std::max(bs, static_cast<std::uint32_t>(lbs));
            geo.emplace_back(size, static_cast<std::uint32_t>(lbs));
        }
        for (const auto& g : geo)
            total += g.first / bs * bs;
        std::uint64_t cap = 0; // unreadable sizes: an empty slice
        if (ok && c.offset < total) cap = c.capacity == 0 ? total - c.offset : c.capacity;
        const auto w = detail::slice_window({c.offset, cap}, bs, shard, shards);
        s.offset = w.offset;
        s.capacity = w.capacity;
        return s;
    }

    block_store() noexcept = default;
    block_store(block_store&&) noexcept = default;
    block_store& operator=(block_store&&) noexcept = default;
    ~block_store() = default;

    // block_size() (the largest logical block size of the devices, at least 4096, so that 4
    // KiB-aligned pool buffers always qualify for O_DIRECT), capacity(), notify_fd(),
    // bytes_written(), discards_unsupported(), io_stats(), register_buffers() and poll():
    // detail::uring_store_base.

    /// Always true: block devices are only used with O_DIRECT.
    bool direct() const noexcept { return true; }
    /// The part of the window on each device, in device order (window coordinates): a region
    /// must lie inside one of them.
    std::span<const segment> segments() const noexcept { return segments_; }

    /// Reads `buf.size()` bytes at window offset `offset`. Rules 1-3 of memkv::store; crossing a
    /// segment boundary: errc::invalid_argument.
    result<void> read(std::uint64_t offset, std::span<std::byte> buf, std::uint64_t tag) noexcept {
        auto m = locate(offset, buf.size(), buf.data());
        if (!m) return m.error();
        return ring_.read(m->first, m->second, buf, tag);
    }
    /// Writes `buf` at window offset `offset`.
    result<void> write(std::uint64_t offset, std::span<const std::byte> buf,
                       std::uint64_t tag) noexcept {
        auto m = locate(offset, buf.size(), buf.data());
        if (!m) return m.error();
        return ring_.write(m->first, m->second, buf, tag);
    }
    /// fdatasync of every device through io_uring; one completion (0 or the first -errno).
    result<void> flush(std::uint64_t tag) noexcept { return ring_.fsync(flush_fds_, true, tag); }
    /// BLKDISCARD over the range, on the discard worker (the caller never waits for the
    /// device); the completion carries 0 or -errno.
    result<void> discard(std::uint64_t offset, std::uint64_t length, std::uint64_t tag) noexcept {
        auto m = locate(offset, length, nullptr);
        if (!m) return m.error();
        const int fd = m->first;
        const std::uint64_t at = m->second;
        return submit_discard(tag, [fd, at, length] {
            std::uint64_t range[2] = {at, length};
            return length == 0 || ::ioctl(fd, BLKDISCARD, range) == 0 ? 0 : errno;
        });
    }

private:
    /// A segment's mapping to its device.
    struct mapping {
        std::uint64_t begin = 0;      // window offset of the segment
        std::uint64_t end = 0;        // one past its last byte
        std::uint64_t dev_offset = 0; // device offset of `begin`
        int fd = -1;
    };

    /// The device descriptor and device offset of a window range inside one segment.
    result<std::pair<int, std::uint64_t>> locate(std::uint64_t offset, std::uint64_t length,
                                                 const void* buf) const noexcept {
        MEMKV_TRY(check_range(offset, length, buf));
        for (const auto& m : maps_) {
            if (offset < m.begin || offset >= m.end) continue;
            if (length > m.end - offset) return errc::invalid_argument; // crosses a device
            return std::pair<int, std::uint64_t>{m.fd, m.dev_offset + (offset - m.begin)};
        }
        // offset == capacity_ with length 0: a no-op on the last device.
        if (length == 0 && !maps_.empty()) return std::pair<int, std::uint64_t>{maps_.back().fd, 0};
        return errc::invalid_argument;
    }

    /// Opens `path` exclusively (or shares this process's exclusive open), reads its geometry
    /// and checks its signatures.
    static result<std::shared_ptr<const detail::claimed_device>> claim(const std::string& path,
                                                                       const config& cfg) noexcept {
        struct stat st {};
        if (::stat(path.c_str(), &st) != 0) {
            const int err = errno;
            detail::log_error("block_store: {}: {}", path, std::strerror(err));
            return errno_code(err);
        }
        if (!S_ISBLK(st.st_mode)) {
            detail::log_error("block_store: {} is not a block device (use file_store for files)",
                              path);
            return errc::invalid_argument;
        }
        auto device = detail::claim_registry<detail::claimed_device>::process().find_or_claim(
            cfg.share_in_process,
            [&](const detail::claimed_device& d) { return d.rdev == st.st_rdev; },
            [&] { return open_device(path, st.st_rdev, cfg.format); });
        if (!device) return device.error();
        return std::shared_ptr<const detail::claimed_device>(std::move(*device));
    }

    /// Opens `path` (device `rdev`) exclusively, reads its geometry and checks its signatures:
    /// a fresh claim of it.
    static result<std::shared_ptr<detail::claimed_device>>
    open_device(const std::string& path, dev_t rdev, bool format) noexcept {
        auto d = std::make_shared<detail::claimed_device>();
        d->path = path;
        d->rdev = rdev;
        // A server killed a moment ago holds the device until the kernel has finished its
        // in-flight I/O: wait for that (up to 10 s) rather than fail, and never read the
        // device while such writes may still land on it.
        int open_err = 0;
        detail::retry_while_busy(
            std::chrono::seconds(10),
            [&] {
                d->fd.reset(::open(path.c_str(), O_RDWR | O_DIRECT | O_EXCL | O_CLOEXEC));
                open_err = d->fd ? 0 : errno;
                return open_err != EBUSY;
            },
            [&] {
                detail::log_info("block_store: {} is busy; waiting up to 10 s for its holder to "
                                 "let go",
                                 path);
            });
        if (!d->fd) {
            if (open_err == EBUSY)
                detail::log_error("block_store: {} is busy: mounted, or held exclusively by "
                                  "another program",
                                  path);
            else
                detail::log_error("block_store: cannot open {}: {}", path, std::strerror(open_err));
            return errno_code(open_err);
        }
        int lbs = 0, pbs = 0;
        if (::ioctl(d->fd.get(), BLKGETSIZE64, &d->size) != 0 ||
            ::ioctl(d->fd.get(), BLKSSZGET, &lbs) != 0 ||
            ::ioctl(d->fd.get(), BLKPBSZGET, &pbs) != 0) {
            const int err = errno;
            detail::log_error("block_store: cannot read the geometry of {}: {}", path,
                              std::strerror(err));
            return errno_code(err);
        }
        d->logical = static_cast<std::uint32_t>(lbs);
        d->physical = static_cast<std::uint32_t>(pbs);
        MEMKV_TRY(check_signatures(path, format));
        return d;
    }

#if defined(MEMKV_HAS_BLKID)
    /// What libblkid finds on `path` ("ext4", "gpt partition table", ...), "" if nothing; an error
    /// if the probe itself fails.
    static result<std::string> probe_signature(const std::string& path) noexcept {
        blkid_probe pr = ::blkid_new_probe_from_filename(path.c_str());
        if (pr == nullptr) return errno_code(errno ? errno : EIO);
        ::blkid_probe_enable_superblocks(pr, 1);
        ::blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_USAGE);
        ::blkid_probe_enable_partitions(pr, 1);
        const int rc = ::blkid_do_safeprobe(pr);
        std::string found;
        const char* v = nullptr;
        if (rc == 0 && ::blkid_probe_lookup_value(pr, "TYPE", &v, nullptr) == 0 && v)
            found = v;
        else if (rc == 0 && ::blkid_probe_lookup_value(pr, "PTTYPE", &v, nullptr) == 0 && v)
            found = std::string(v) + " partition table";
        else if (rc == 0)
            found = "unnamed signature";
        else if (rc == -2)
            found = "several conflicting signatures";
        ::blkid_free_probe(pr);
        if (rc == -1) return errc::internal;
        return found;
    }

    /// Erases every signature libblkid finds (superblock and partition-table magics), as
    /// `wipefs -a` does.
    static result<void> wipe_signatures(const std::string& path) noexcept {
        detail::unique_fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
        if (!fd) return errno_code(errno);
        blkid_probe pr = ::blkid_new_probe();
        if (pr == nullptr) return errc::no_space;
        result<void> r;
        if (::blkid_probe_set_device(pr, fd.get(), 0, 0) != 0) {
            r = errc::internal;
        } else {
            ::blkid_probe_enable_superblocks(pr, 1);
            ::blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_MAGIC | BLKID_SUBLKS_TYPE |
                                                        BLKID_SUBLKS_BADCSUM);
            ::blkid_probe_enable_partitions(pr, 1);
            ::blkid_probe_set_partitions_flags(pr, BLKID_PARTS_MAGIC);
            for (int i = 0; i < 64 && ::blkid_do_probe(pr) == 0; ++i) {
                const char* v = nullptr;
                if (::blkid_probe_lookup_value(pr, "TYPE", &v, nullptr) != 0 &&
                    ::blkid_probe_lookup_value(pr, "PTTYPE", &v, nullptr) != 0)
                    v = "unnamed";
                detail::log_warn("block_store: format: erasing the {} signature of {}", v, path);
                if (::blkid_do_wipe(pr, 0) != 0) {
                    r = errno_code(errno ? errno : EIO);
                    break;
                }
            }
        }
        ::blkid_free_probe(pr);
        if (r && ::fsync(fd.get()) != 0) r = errno_code(errno);
        return r;
    }
#endif

    static result<void> check_signatures(const std::string& path, bool format) noexcept {
#if defined(MEMKV_HAS_BLKID)
        auto found = probe_signature(path);
        if (!found) {
            detail::log_error("block_store: libblkid cannot probe {}: {}", path,
                              found.error().message());
            return found.error();
        }
        if (found->empty()) return {};
        if (!format) {
            detail::log_error("block_store: {} carries {} (libblkid); refusing it (set format "
                              "to overwrite it)",
                              path, *found);
            return errc::rejected;
        }
        auto wiped = wipe_signatures(path);
        if (!wiped)
            detail::log_error("block_store: cannot erase the signatures of {}: {}", path,
                              wiped.error().message());
        return wiped;
#else
        if (format) return {};
        detail::log_error("block_store: built without libblkid: cannot check {} for a filesystem "
                          "or other signature; refusing it (set format to use it anyway)",
                          path);
        return errc::rejected;
#endif
    }

    // owner_ (uring_store_base): the claimed devices, in the order given.
    std::vector<segment> segments_;
    std::vector<mapping> maps_;  // one per segment, same order
    std::vector<int> flush_fds_; // devices with a part of the window
};

static_assert(store<block_store>);

} // namespace memkv
