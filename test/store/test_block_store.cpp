// SPDX-License-Identifier: Apache-2.0
// block_store on loop devices (root; skipped with 77 otherwise): round trips, BLKDISCARD, flush,
// refusal of a device carrying ext4, a JBOF of two devices, exclusive ownership (O_EXCL).
// Backing files live in $MEMKV_TEST_DIR, default /var/tmp.
#include "support/catch.hpp"
#include "support/loop_device.hpp"
#include "support/seed.hpp"

#include <memkv/detail/buffer_pool.hpp>
#include <memkv/store/block_store.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

using memkv::block_store;
using memkv::io_completion;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t KiB = 1024, MiB = 1024 * KiB;

using memkv::test::loop_device;
using memkv::test::run_command;
using memkv::test::test_dir_base;

loop_device make_loop(std::uint64_t size) {
    std::string why;
    auto d = loop_device::create(size, false, why);
    INFO(why);
    REQUIRE(d.has_value());
    return std::move(*d);
}

template <class S>
std::vector<io_completion> wait_for(S& s, std::size_t n) {
    std::vector<io_completion> got;
    io_completion buf[5];
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (got.size() < n && std::chrono::steady_clock::now() < deadline) {
        const std::size_t k = s.poll(buf);
        got.insert(got.end(), buf, buf + k);
        if (k == 0) {
            pollfd p{s.notify_fd(), POLLIN, 0};
            ::poll(&p, 1, 200);
        }
    }
    return got;
}

template <class S>
bool no_completion(S& s, int ms = 50) {
    io_completion c[4];
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (std::chrono::steady_clock::now() < deadline) {
        if (s.poll(c) != 0) return false;
        pollfd p{s.notify_fd(), POLLIN, 0};
        ::poll(&p, 1, 10);
    }
    return true;
}

template <class S, class Submit>
std::int64_t run_one(S& s, std::uint64_t tag, Submit submit) {
    auto r = submit(tag);
    REQUIRE(r);
    auto c = wait_for(s, 1);
    REQUIRE(c.size() == 1);
    REQUIRE(c[0].tag == tag);
    return c[0].res;
}

std::uint64_t mix(std::uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}
void fill(std::span<std::byte> b, std::uint64_t seed) {
    for (std::size_t i = 0; i + 8 <= b.size(); i += 8) {
        const std::uint64_t v = mix(seed ^ (i / 8));
        std::memcpy(b.data() + i, &v, 8);
    }
}
bool matches(std::span<const std::byte> b, std::uint64_t seed) {
    for (std::size_t i = 0; i + 8 <= b.size(); i += 8) {
        const std::uint64_t v = mix(seed ^ (i / 8));
        if (std::memcmp(b.data() + i, &v, 8) != 0) return false;
    }
    return true;
}

memkv::detail::buffer_pool make_pool(std::size_t size, std::size_t count) {
    auto p = memkv::detail::buffer_pool::create({size, count, false});
    REQUIRE(p);
    return std::move(*p);
}

/// Without libblkid every device is refused unless `format`; the tests then format.
constexpr bool have_blkid =
#if defined(MEMKV_HAS_BLKID)
    true;
#else
    false;
#endif

block_store open_store(block_store::config c) {
    if (!have_blkid) c.format = true;
    auto s = block_store::create(c);
    INFO("block_store::create: " << (s ? "ok" : s.error().message()));
    REQUIRE(s);
    return std::move(*s);
}

/// Reads `len` bytes at `offset` of a device with a plain (non-exclusive) O_DIRECT open.
bool device_holds(const std::string& dev, std::uint64_t offset, std::uint64_t len,
                  std::uint64_t seed) {
    auto pool = make_pool(len, 1);
    std::byte* b = pool.acquire();
    memkv::detail::unique_fd fd(::open(dev.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
    if (!fd) return false;
    if (::pread(fd.get(), b, len, static_cast<off_t>(offset)) != static_cast<ssize_t>(len))
        return false;
    return matches({b, len}, seed);
}

} // namespace

namespace memkv::test {
/// Loop devices need root, /dev/loop-control and losetup: skip (77) without them.
int probe_requirements() {
    std::string why;
    if (!loop_device::create(1 * MiB, false, why)) {
        std::fprintf(stderr, "skipped: %s\n", why.c_str());
        return 77;
    }
    return 0;
}
} // namespace memkv::test

TEST_CASE("block_store round-trips random aligned I/O on a loop device, discards and flushes",
          "[store][uring][block_store]") {
    auto loop = make_loop(256 * MiB);
    auto s = open_store({.devices = {loop.path()}});
    REQUIRE(s.block_size() == 4096);
    REQUIRE(s.capacity() == 256 * MiB);
    REQUIRE(s.direct());
    REQUIRE(s.segments().size() == 1);
    REQUIRE(s.segments()[0].offset == 0);
    REQUIRE(s.segments()[0].length == 256 * MiB);

    constexpr std::size_t slots = 16;
    constexpr std::uint64_t slot_size = 16 * MiB;
    auto pool = make_pool(8 * MiB, slots);
    const auto mem = pool.memory();
    const iovec iov{mem.data(), mem.size()};
    REQUIRE(s.register_buffers({&iov, 1}));
    std::vector<std::byte*> bufs;
    for (std::size_t i = 0; i < slots; ++i)
        bufs.push_back(pool.acquire());
    auto rng = memkv::test::rng(11);
    struct io {
        std::uint64_t offset, size, seed;
    };
    std::map<std::uint64_t, io> ios;
    for (std::size_t i = 0; i < slots; ++i) {
        const int shift = std::uniform_int_distribution<int>(12, 23)(rng);
        const std::uint64_t size = std::uint64_t(1) << shift;
        const std::uint64_t room = (slot_size - size) / 4096;
        const std::uint64_t at =
            i * slot_size + std::uniform_int_distribution<std::uint64_t>(0, room)(rng) * 4096;
        ios[i] = {at, size, rng()};
        fill({bufs[i], size}, ios[i].seed);
        REQUIRE(s.write(at, std::span<const std::byte>(bufs[i], size), i));
    }
    auto done = wait_for(s, slots);
    REQUIRE(done.size() == slots);
    for (const auto& c : done)
        REQUIRE(c.res == static_cast<std::int64_t>(ios.at(c.tag).size));
    REQUIRE(run_one(s, 100, [&](auto t) { return s.flush(t); }) == 0);
    for (auto* b : bufs)
        std::memset(b, 0, 8 * MiB);
    for (std::size_t i = 0; i < slots; ++i)
        REQUIRE(s.read(ios[i].offset, std::span<std::byte>(bufs[i], ios[i].size), 200 + i));
    done = wait_for(s, slots);
    REQUIRE(done.size() == slots);
    for (const auto& c : done) {
        const auto i = c.tag - 200;
        REQUIRE(c.res == static_cast<std::int64_t>(ios.at(i).size));
        REQUIRE(matches({bufs[i], ios[i].size}, ios[i].seed));
    }
    CHECK(s.io_stats().fixed_ops >= 2 * slots);
    CHECK(s.bytes_written() > 0);

    // BLKDISCARD of slot 0 (a loop device punches a hole in its backing file); slot 1 keeps its
    // data. Whether the range reads back as zeros is not promised, so it is not checked.
    struct stat before {
    }, after{};
    REQUIRE(::stat(loop.backing_file().c_str(), &before) == 0);
    REQUIRE(run_one(s, 300, [&](auto t) { return s.discard(0, slot_size, t); }) == 0);
    REQUIRE(::stat(loop.backing_file().c_str(), &after) == 0);
    if (s.discards_unsupported() == 0) CHECK(after.st_blocks < before.st_blocks);
    std::memset(bufs[1], 0, ios[1].size);
    REQUIRE(run_one(s, 301, [&](auto t) {
                return s.read(ios[1].offset, std::span<std::byte>(bufs[1], ios[1].size), t);
            }) == static_cast<std::int64_t>(ios[1].size));
    REQUIRE(matches({bufs[1], ios[1].size}, ios[1].seed));

    using memkv::errc;
    REQUIRE(s.read(512, std::span<std::byte>(bufs[0], 4096), 1).error() == errc::bad_alignment);
    REQUIRE(s.write(0, std::span<const std::byte>(bufs[0] + 512, 4096), 1).error() ==
            errc::bad_alignment);
    REQUIRE(s.discard(0, 512, 1).error() == errc::bad_alignment);
    REQUIRE(s.read(256 * MiB, std::span<std::byte>(bufs[0], 4096), 1).error() ==
            errc::invalid_argument);
    REQUIRE(no_completion(s));
}

TEST_CASE("block_store refuses a loop device carrying ext4, and takes it when told to format",
          "[store][uring][block_store]") {
    if (!have_blkid) {
        WARN("built without libblkid: signatures are not checked");
        return;
    }
    if (run_command("command -v mkfs.ext4 >/dev/null 2>&1").second != 0) {
        WARN("mkfs.ext4 not found: not checked");
        return;
    }
    auto loop = make_loop(64 * MiB);
    {
        // A blank device is accepted.
        auto s = block_store::create({.devices = {loop.path()}});
        REQUIRE(s);
    }
    REQUIRE(run_command("mkfs.ext4 -q -F " + loop.path() + " >/dev/null 2>&1").second == 0);
    auto refused = block_store::create({.devices = {loop.path()}});
    REQUIRE_FALSE(refused);
    REQUIRE(refused.error() == memkv::errc::rejected);
    {
        auto s = block_store::create({.devices = {loop.path()}, .format = true});
        REQUIRE(s);
        // The device is usable.
        auto pool = make_pool(1 * MiB, 1);
        std::byte* b = pool.acquire();
        fill({b, MiB}, 5);
        REQUIRE(run_one(*s, 1, [&](auto t) {
                    return s->write(0, std::span<const std::byte>(b, MiB), t);
                }) == static_cast<std::int64_t>(MiB));
    }
    // format erased the ext4 signature: the device is no longer taken for a filesystem.
    REQUIRE(run_command("blkid -p " + loop.path() + " >/dev/null 2>&1").second != 0);
    auto again = block_store::create({.devices = {loop.path()}});
    REQUIRE(again);
}

TEST_CASE("block_store over two loop devices: one segment per device, no I/O across them",
          "[store][uring][block_store]") {
    auto d0 = make_loop(64 * MiB);
    auto d1 = make_loop(32 * MiB);
    auto s = open_store({.devices = {d0.path(), d1.path()}});
    REQUIRE(s.capacity() == 96 * MiB);
    REQUIRE(s.segments().size() == 2);
    REQUIRE(s.segments()[0].offset == 0);
    REQUIRE(s.segments()[0].length == 64 * MiB);
    REQUIRE(s.segments()[1].offset == 64 * MiB);
    REQUIRE(s.segments()[1].length == 32 * MiB);

    auto pool = make_pool(1 * MiB, 4);
    std::byte* a = pool.acquire();
    std::byte* b = pool.acquire();
    fill({a, MiB}, 10);
    fill({b, MiB}, 11);
    // The end of device 0 and the start of device 1.
    REQUIRE(s.write(63 * MiB, std::span<const std::byte>(a, MiB), 1));
    REQUIRE(s.write(64 * MiB, std::span<const std::byte>(b, MiB), 2));
    REQUIRE(wait_for(s, 2).size() == 2);
    REQUIRE(run_one(s, 3, [&](auto t) { return s.flush(t); }) == 0);
    std::memset(a, 0, MiB);
    std::memset(b, 0, MiB);
    REQUIRE(s.read(63 * MiB, std::span<std::byte>(a, MiB), 4));
    REQUIRE(s.read(64 * MiB, std::span<std::byte>(b, MiB), 5));
    REQUIRE(wait_for(s, 2).size() == 2);
    REQUIRE(matches({a, MiB}, 10));
    REQUIRE(matches({b, MiB}, 11));
    // On the devices themselves: the last MiB of device 0, the first MiB of device 1.
    REQUIRE(device_holds(d0.path(), 63 * MiB, MiB, 10));
    REQUIRE(device_holds(d1.path(), 0, MiB, 11));

    // Crossing the boundary is refused, and nothing is submitted.
    using memkv::errc;
    REQUIRE(s.read(64 * MiB - 4096, std::span<std::byte>(a, 8192), 6).error() ==
            errc::invalid_argument);
    REQUIRE(s.write(63 * MiB, std::span<const std::byte>(a, 2 * MiB), 7).error() ==
            errc::invalid_argument);
    REQUIRE(s.discard(60 * MiB, 8 * MiB, 8).error() == errc::invalid_argument);
    REQUIRE(no_completion(s));
    // Discard inside each device.
    REQUIRE(run_one(s, 9, [&](auto t) { return s.discard(0, MiB, t); }) == 0);
    REQUIRE(run_one(s, 10, [&](auto t) { return s.discard(95 * MiB, MiB, t); }) == 0);

    // A window over the boundary: segments in window coordinates.
    auto w =
        open_store({.devices = {d0.path(), d1.path()}, .offset = 60 * MiB, .capacity = 8 * MiB});
    REQUIRE(w.capacity() == 8 * MiB);
    REQUIRE(w.segments().size() == 2);
    REQUIRE(w.segments()[0].offset == 0);
    REQUIRE(w.segments()[0].length == 4 * MiB);
    REQUIRE(w.segments()[1].offset == 4 * MiB);
    REQUIRE(w.segments()[1].length == 4 * MiB);
    std::memset(b, 0, MiB);
    REQUIRE(run_one(w, 11, [&](auto t) {
                return w.read(4 * MiB, std::span<std::byte>(b, MiB), t);
            }) == static_cast<std::int64_t>(MiB));
    REQUIRE(matches({b, MiB}, 11));
    // A window inside device 1 only.
    auto w1 = open_store({.devices = {d0.path(), d1.path()}, .offset = 64 * MiB});
    REQUIRE(w1.capacity() == 32 * MiB);
    REQUIRE(w1.segments().size() == 1);

    // Shard windows: equal, aligned, contiguous slices of the concatenation.
    const block_store::config whole{.devices = {d0.path(), d1.path()}};
    std::uint64_t expect = 0;
    for (std::uint32_t i = 0; i < 3; ++i) {
        const auto c = block_store::shard_config(whole, i, 3);
        REQUIRE(c.offset == expect);
        REQUIRE(c.capacity == 32 * MiB);
        expect += c.capacity;
    }
    REQUIRE_FALSE(block_store::create(block_store::shard_config(whole, 0, 1u << 20)));

    using memkv::errc;
    REQUIRE(block_store::create({.devices = {d0.path(), d0.path()}}).error() ==
            errc::invalid_argument);
    REQUIRE(block_store::create({.devices = {d0.path()}, .offset = 64 * MiB}).error() ==
            errc::invalid_argument);
    REQUIRE(block_store::create({.devices = {d0.path()}, .capacity = 65 * MiB}).error() ==
            errc::invalid_argument);
}

TEST_CASE("block_store owns its devices exclusively", "[store][uring][block_store]") {
    auto loop = make_loop(16 * MiB);
    const auto busy = std::error_code(EBUSY, std::system_category());
    {
        auto a = open_store({.devices = {loop.path()}, .share_in_process = false});
        // A second exclusive owner fails, in this process or any other.
        auto b = block_store::create({.devices = {loop.path()}, .share_in_process = false});
        REQUIRE_FALSE(b);
        REQUIRE(b.error() == busy);
        auto c = block_store::create({.devices = {loop.path()}});
        REQUIRE_FALSE(c);
        REQUIRE(c.error() == busy);
        const int fd = ::open(loop.path().c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
        REQUIRE(fd < 0);
        REQUIRE(errno == EBUSY);
    }
    {
        // Instances that share (every shard of a server opens the whole store) hold one
        // exclusive open between them; other programs still get EBUSY.
        auto a = open_store({.devices = {loop.path()}});
        auto b = open_store({.devices = {loop.path()}});
        const int fd = ::open(loop.path().c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
        REQUIRE(fd < 0);
        REQUIRE(errno == EBUSY);
        auto pool = make_pool(1 * MiB, 1);
        std::byte* buf = pool.acquire();
        fill({buf, MiB}, 9);
        REQUIRE(run_one(a, 1, [&](auto t) {
                    return a.write(0, std::span<const std::byte>(buf, MiB), t);
                }) == static_cast<std::int64_t>(MiB));
        std::memset(buf, 0, MiB);
        REQUIRE(run_one(b, 2, [&](auto t) {
                    return b.read(0, std::span<std::byte>(buf, MiB), t);
                }) == static_cast<std::int64_t>(MiB));
        REQUIRE(matches({buf, MiB}, 9));
    }
    // Released with the last instance.
    const int fd = ::open(loop.path().c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
    REQUIRE(fd >= 0);
    ::close(fd);
}

TEST_CASE("block_store refuses what is not a block device", "[store][uring][block_store]") {
    std::string file = test_dir_base() + "/memkv-not-a-device-XXXXXX";
    {
        const int fd = ::mkstemp(file.data());
        REQUIRE(fd >= 0);
        REQUIRE(::ftruncate(fd, 1 << 20) == 0);
        ::close(fd);
    }
    REQUIRE(block_store::create({.devices = {file}}).error() == memkv::errc::invalid_argument);
    ::unlink(file.c_str());
    REQUIRE(block_store::create({.devices = {file}}).error() ==
            std::errc::no_such_file_or_directory);
    REQUIRE(block_store::create({}).error() == memkv::errc::invalid_argument);
}
