// SPDX-License-Identifier: Apache-2.0
// file_store and detail::uring: round trips with many operations in flight, alignment and range
// checks, flush, hole punching, O_DIRECT, shard windows, window locks, thread hand-off. Files
// live in $MEMKV_TEST_DIR, default /var/tmp (a real filesystem, not tmpfs).
#include "support/catch.hpp"
#include "support/temp_dir.hpp"
#include "support/seed.hpp"

#include <memkv/detail/buffer_pool.hpp>
#include <memkv/detail/uring.hpp>
#include <memkv/store/file_store.hpp>

#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

using memkv::file_store;
using memkv::io_completion;
using memkv::test::temp_dir;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t KiB = 1024, MiB = 1024 * KiB;

/// Polls until `n` completions arrived (or 30 s passed), waiting on notify_fd in between.
template <class S>
std::vector<io_completion> wait_for(S& s, std::size_t n) {
    std::vector<io_completion> got;
    io_completion buf[7]; // deliberately small: completions are left behind and re-armed
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

/// True if no completion shows up within `ms`.
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
bool all_zero(std::span<const std::byte> b) {
    for (auto x : b)
        if (x != std::byte{0}) return false;
    return true;
}

/// Submits one operation and waits for its completion; returns its result.
template <class S, class Submit>
std::int64_t run_one(S& s, std::uint64_t tag, Submit submit) {
    auto r = submit(tag);
    REQUIRE(r);
    auto c = wait_for(s, 1);
    REQUIRE(c.size() == 1);
    REQUIRE(c[0].tag == tag);
    return c[0].res;
}

memkv::detail::buffer_pool make_pool(std::size_t size, std::size_t count) {
    auto p = memkv::detail::buffer_pool::create({size, count, false});
    REQUIRE(p);
    return std::move(*p);
}

file_store open_store(const file_store::config& c) {
    auto s = file_store::create(c);
    INFO("file_store::create: " << (s ? "ok" : s.error().message()));
    REQUIRE(s);
    return std::move(*s);
}

} // namespace

TEST_CASE("file_store round-trips random aligned writes and reads with many in flight",
          "[store][uring][file_store]") {
    temp_dir dir;
    const bool fixed = GENERATE(false, true);
    const unsigned depth = GENERATE(4u, 64u); // 4: more operations than the ring holds
    CAPTURE(fixed, depth);
    constexpr std::size_t slots = 16;
    constexpr std::uint64_t slot_size = 16 * MiB;
    auto s =
        open_store({.path = dir.file("data"), .capacity = slots * slot_size, .queue_depth = depth});
    REQUIRE(s.block_size() == 4096);
    REQUIRE(s.capacity() == slots * slot_size);
    REQUIRE(s.segments().size() == 1);
    REQUIRE(s.segments()[0].offset == 0);
    REQUIRE(s.segments()[0].length == s.capacity());
    auto pool = make_pool(8 * MiB, slots);
    if (fixed) {
        const auto mem = pool.memory();
        const iovec iov{mem.data(), mem.size()};
        REQUIRE(s.register_buffers({&iov, 1}));
    }
    std::vector<std::byte*> bufs;
    for (std::size_t i = 0; i < slots; ++i)
        bufs.push_back(pool.acquire());

    auto rng = memkv::test::rng(fixed * 2 + (depth == 4));
    std::uint64_t written = 0;
    for (int round = 0; round < 3; ++round) {
        struct io {
            std::uint64_t offset, size, seed;
            std::byte* buf;
        };
        std::map<std::uint64_t, io> ios; // by tag
        for (std::size_t i = 0; i < slots; ++i) {
            // 4 KiB .. 8 MiB, log-uniform, somewhere inside the slot.
            const int shift = std::uniform_int_distribution<int>(12, 23)(rng);
            std::uint64_t size = std::uniform_int_distribution<std::uint64_t>(1, 2)(rng) << shift;
            size = std::min<std::uint64_t>(size, 8 * MiB);
            const std::uint64_t room = (slot_size - size) / 4096;
            const std::uint64_t at =
                i * slot_size + std::uniform_int_distribution<std::uint64_t>(0, room)(rng) * 4096;
            const std::uint64_t tag = mix(round * 100 + i) | 1; // arbitrary 64-bit tags
            ios[tag] = {at, size, rng(), bufs[i]};
            fill({bufs[i], size}, ios[tag].seed);
        }
        for (const auto& [tag, op] : ios)
            REQUIRE(s.write(op.offset, std::span<const std::byte>(op.buf, op.size), tag));
        auto done = wait_for(s, slots);
        REQUIRE(done.size() == slots);
        std::map<std::uint64_t, int> seen;
        for (const auto& c : done) {
            REQUIRE(ios.count(c.tag) == 1);
            REQUIRE(c.res == static_cast<std::int64_t>(ios[c.tag].size));
            REQUIRE(++seen[c.tag] == 1);
            written += ios[c.tag].size;
        }
        for (auto* b : bufs)
            std::memset(b, 0, 8 * MiB);
        for (const auto& [tag, op] : ios)
            REQUIRE(s.read(op.offset, std::span<std::byte>(op.buf, op.size), tag + 1));
        done = wait_for(s, slots);
        REQUIRE(done.size() == slots);
        for (const auto& c : done) {
            const auto& op = ios.at(c.tag - 1);
            REQUIRE(c.res == static_cast<std::int64_t>(op.size));
            REQUIRE(matches({op.buf, op.size}, op.seed));
        }
        REQUIRE(no_completion(s));
    }
    CHECK(s.bytes_written() == written);
    if (fixed) CHECK(s.io_stats().fixed_ops >= 2 * 3 * slots);
    if (!fixed) CHECK(s.io_stats().fixed_ops == 0);
    if (depth == 4) CHECK(s.io_stats().backlogged > 0);
}

TEST_CASE("file_store refuses misaligned or out-of-range I/O and queues no completion",
          "[store][uring][file_store]") {
    temp_dir dir;
    auto s = open_store({.path = dir.file("data"), .capacity = 4 * MiB});
    auto pool = make_pool(1 * MiB, 1);
    std::byte* b = pool.acquire();
    using memkv::errc;
    const std::span<std::byte> one(b, 4096);
    REQUIRE(s.read(512, one, 1).error() == errc::bad_alignment);
    REQUIRE(s.write(4096 + 1, one, 2).error() == errc::bad_alignment);
    REQUIRE(s.read(0, std::span<std::byte>(b, 4096 + 512), 3).error() == errc::bad_alignment);
    REQUIRE(s.write(0, std::span<const std::byte>(b + 512, 4096), 4).error() ==
            errc::bad_alignment);
    REQUIRE(s.discard(4096, 100, 5).error() == errc::bad_alignment);
    REQUIRE(s.read(4 * MiB, one, 6).error() == errc::invalid_argument);
    REQUIRE(s.write(4 * MiB - 4096, std::span<const std::byte>(b, 8192), 7).error() ==
            errc::invalid_argument);
    REQUIRE(s.read(~0ull << 12, one, 8).error() == errc::invalid_argument);
    REQUIRE(s.discard(0, 8 * MiB, 9).error() == errc::invalid_argument);
    REQUIRE(no_completion(s, 100));
    // The last block is still fine.
    REQUIRE(run_one(s, 10, [&](auto t) { return s.write(4 * MiB - 4096, one, t); }) == 4096);
}

TEST_CASE("file_store flush completes after the writes before it", "[store][uring][file_store]") {
    temp_dir dir;
    auto s = open_store({.path = dir.file("data"), .capacity = 8 * MiB});
    auto pool = make_pool(1 * MiB, 2);
    std::byte* b = pool.acquire();
    fill({b, MiB}, 42);
    REQUIRE(run_one(s, 1, [&](auto t) {
                return s.write(MiB, std::span<const std::byte>(b, MiB), t);
            }) == static_cast<std::int64_t>(MiB));
    REQUIRE(run_one(s, 2, [&](auto t) { return s.flush(t); }) == 0);
    // A flush with writes in flight completes too (their durability is not promised by it).
    REQUIRE(s.write(0, std::span<const std::byte>(b, MiB), 3));
    REQUIRE(s.flush(4));
    auto c = wait_for(s, 2);
    REQUIRE(c.size() == 2);
    for (const auto& x : c)
        REQUIRE(x.res == (x.tag == 3 ? static_cast<std::int64_t>(MiB) : 0));
}

TEST_CASE("file_store discard punches a hole that reads back zeros; the neighbour keeps its data",
          "[store][uring][file_store]") {
    temp_dir dir;
    const auto path = dir.file("data");
    auto s = open_store({.path = path, .capacity = 16 * MiB});
    auto pool = make_pool(4 * MiB, 2);
    std::byte* a = pool.acquire();
    std::byte* b = pool.acquire();
    fill({a, 4 * MiB}, 1);
    fill({b, 4 * MiB}, 2);
    REQUIRE(s.write(0, std::span<const std::byte>(a, 4 * MiB), 1));
    REQUIRE(s.write(4 * MiB, std::span<const std::byte>(b, 4 * MiB), 2));
    REQUIRE(wait_for(s, 2).size() == 2);
    REQUIRE(run_one(s, 3, [&](auto t) { return s.flush(t); }) == 0);
    struct stat before {
    }, after{};
    REQUIRE(::stat(path.c_str(), &before) == 0);
    REQUIRE(run_one(s, 4, [&](auto t) { return s.discard(0, 4 * MiB, t); }) == 0);
    REQUIRE(::stat(path.c_str(), &after) == 0);
    if (s.discards_unsupported() != 0) {
        WARN("hole punching is not supported on " << dir.path() << ": not checked");
        return;
    }
    CAPTURE(before.st_blocks, after.st_blocks);
    REQUIRE(before.st_size == after.st_size); // KEEP_SIZE
    REQUIRE(before.st_blocks - after.st_blocks >= static_cast<blkcnt_t>(4 * MiB / 512));
    std::memset(a, 0xff, 4 * MiB);
    std::memset(b, 0xff, 4 * MiB);
    REQUIRE(s.read(0, std::span<std::byte>(a, 4 * MiB), 5));
    REQUIRE(s.read(4 * MiB, std::span<std::byte>(b, 4 * MiB), 6));
    REQUIRE(wait_for(s, 2).size() == 2);
    REQUIRE(all_zero({a, 4 * MiB}));
    REQUIRE(matches({b, 4 * MiB}, 2));
}

TEST_CASE("file_store uses O_DIRECT on ext4 and xfs, and buffered I/O when told",
          "[store][uring][file_store]") {
    temp_dir dir;
    struct statfs fs {};
    REQUIRE(::statfs(dir.path().c_str(), &fs) == 0);
    const bool known = fs.f_type == EXT4_SUPER_MAGIC || fs.f_type == XFS_SUPER_MAGIC ||
                       fs.f_type == BTRFS_SUPER_MAGIC;
    {
        auto s = open_store({.path = dir.file("auto"), .capacity = 4 * MiB});
        if (known) REQUIRE(s.direct());
        auto on = file_store::create(
            {.path = dir.file("auto"), .capacity = 4 * MiB, .direct = file_store::direct_mode::on});
        REQUIRE(on.has_value() == s.direct());
    }
    auto s = open_store({.path = dir.file("buffered"),
                         .capacity = 4 * MiB,
                         .direct = file_store::direct_mode::off});
    REQUIRE_FALSE(s.direct());
    auto pool = make_pool(1 * MiB, 2);
    std::byte* b = pool.acquire();
    fill({b, MiB}, 7);
    REQUIRE(run_one(s, 1, [&](auto t) {
                return s.write(2 * MiB, std::span<const std::byte>(b, MiB), t);
            }) == static_cast<std::int64_t>(MiB));
    std::memset(b, 0, MiB);
    REQUIRE(run_one(s, 2, [&](auto t) {
                return s.read(2 * MiB, std::span<std::byte>(b, MiB), t);
            }) == static_cast<std::int64_t>(MiB));
    REQUIRE(matches({b, MiB}, 7));
    REQUIRE(run_one(s, 3, [&](auto t) { return s.flush(t); }) == 0);
}

TEST_CASE("file_store creates, preallocates and checks its configuration",
          "[store][uring][file_store]") {
    temp_dir dir;
    const auto path = dir.file("data");
    {
        auto s = open_store({.path = path, .offset = 1 * MiB, .capacity = 8 * MiB + 100});
        REQUIRE(s.capacity() == 8 * MiB); // rounded down to the block size
        struct stat st {};
        REQUIRE(::stat(path.c_str(), &st) == 0);
        REQUIRE(static_cast<std::uint64_t>(st.st_size) == 9 * MiB);
        REQUIRE(static_cast<std::uint64_t>(st.st_blocks) * 512 >= 8 * MiB); // preallocated
    }
    // capacity 0: the rest of an existing file.
    auto rest = open_store({.path = path, .offset = 2 * MiB, .create = false});
    REQUIRE(rest.capacity() == 7 * MiB);
    using memkv::errc;
    REQUIRE(file_store::create({.path = dir.file("missing"), .capacity = MiB, .create = false})
                .error() == std::errc::no_such_file_or_directory);
    REQUIRE(file_store::create({.path = dir.file("new")}).error() == errc::invalid_argument);
    REQUIRE(file_store::create({.path = path, .offset = 100, .capacity = MiB}).error() ==
            errc::invalid_argument);
    REQUIRE(file_store::create({.path = path, .capacity = MiB, .block_size = 1000}).error() ==
            errc::invalid_argument);
    REQUIRE(file_store::create({.path = path, .capacity = 64 * MiB, .create = false}).error() ==
            errc::invalid_argument);
    REQUIRE_FALSE(file_store::create({.path = dir.path(), .capacity = MiB}));
    REQUIRE(file_store::create({.path = path, .capacity = MiB, .queue_depth = 0}).error() ==
            errc::invalid_argument);
}

TEST_CASE("file_store shard windows are disjoint and instances in them do not clobber each other",
          "[store][uring][file_store]") {
    temp_dir dir;
    const file_store::config base{
        .path = dir.file("data"), .offset = 1 * MiB, .capacity = 64 * MiB + 12 * 4096};
    constexpr std::uint32_t shards = 4;
    std::vector<file_store> stores;
    std::uint64_t expect = base.offset;
    for (std::uint32_t i = 0; i < shards; ++i) {
        const auto c = file_store::shard_config(base, i, shards);
        REQUIRE(c.offset == expect); // contiguous, so disjoint
        REQUIRE(c.offset % 4096 == 0);
        REQUIRE(c.capacity % 4096 == 0);
        REQUIRE(c.capacity == 16 * MiB + 3 * 4096);
        expect += c.capacity;
        stores.push_back(open_store(c));
    }
    REQUIRE(expect <= base.offset + base.capacity);
    auto pool = make_pool(1 * MiB, 2 * shards);
    std::vector<std::byte*> bufs;
    for (std::uint32_t i = 0; i < 2 * shards; ++i)
        bufs.push_back(pool.acquire());
    // Each instance writes its first and last MiB.
    for (std::uint32_t i = 0; i < shards; ++i) {
        auto& s = stores[i];
        fill({bufs[2 * i], MiB}, 100 + 2 * i);
        fill({bufs[2 * i + 1], MiB}, 101 + 2 * i);
        REQUIRE(s.write(0, std::span<const std::byte>(bufs[2 * i], MiB), 1));
        REQUIRE(s.write(s.capacity() - MiB, std::span<const std::byte>(bufs[2 * i + 1], MiB), 2));
    }
    for (auto& s : stores)
        REQUIRE(wait_for(s, 2).size() == 2);
    for (auto* b : bufs)
        std::memset(b, 0, MiB);
    for (std::uint32_t i = 0; i < shards; ++i) {
        auto& s = stores[i];
        REQUIRE(s.read(0, std::span<std::byte>(bufs[2 * i], MiB), 3));
        REQUIRE(s.read(s.capacity() - MiB, std::span<std::byte>(bufs[2 * i + 1], MiB), 4));
    }
    for (auto& s : stores)
        REQUIRE(wait_for(s, 2).size() == 2);
    for (std::uint32_t i = 0; i < shards; ++i) {
        REQUIRE(matches({bufs[2 * i], MiB}, 100 + 2 * i));
        REQUIRE(matches({bufs[2 * i + 1], MiB}, 101 + 2 * i));
    }
    // The whole file seen as one store: window i starts where the previous one ended.
    auto whole = open_store(base);
    std::memset(bufs[0], 0, MiB);
    REQUIRE(run_one(whole, 9, [&](auto t) {
                return whole.read(2 * (16 * MiB + 3 * 4096), std::span<std::byte>(bufs[0], MiB), t);
            }) == static_cast<std::int64_t>(MiB));
    REQUIRE(matches({bufs[0], MiB}, 104));
    // Too many shards for the window: create() refuses the slice.
    const auto tiny = file_store::shard_config({.path = base.path, .capacity = 8192}, 1, 4);
    REQUIRE_FALSE(file_store::create(tiny));
    // capacity 0: slices of the existing file after offset.
    const auto c0 = file_store::shard_config({.path = base.path, .offset = 1 * MiB}, 3, 4);
    REQUIRE(c0.capacity == 16 * MiB + 3 * 4096);
}

TEST_CASE("file_store locks its window, so that another open of it waits and fails; others work",
          "[store][uring][file_store][lock]") {
    temp_dir dir;
    const auto path = dir.file("data");
    const file_store::config whole{.path = path, .capacity = 32 * MiB};
    const auto w0 = file_store::shard_config(whole, 0, 2);
    const auto w1 = file_store::shard_config(whole, 1, 2);
    const auto busy = std::error_code(EBUSY, std::system_category());
    auto alone = [](file_store::config c, std::uint32_t wait_ms) {
        c.share_in_process = false;
        c.busy_wait_ms = wait_ms;
        return c;
    };
    auto elapsed_ms = [](auto t0) {
        return std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::steady_clock::now() - t0)
            .count();
    };
    {
        auto a = open_store(alone(w0, 0));
        // The same window, a window overlapping it, or the whole file, from another open of the
        // file (another process would be the same): refused after waiting for the lock.
        auto t0 = std::chrono::steady_clock::now();
        auto b = file_store::create(alone(w0, 300));
        REQUIRE_FALSE(b);
        REQUIRE(b.error() == busy);
        CHECK(elapsed_ms(t0) >= 300);
        REQUIRE(file_store::create(alone(whole, 0)).error() == busy);
        REQUIRE(
            file_store::create(alone({.path = path, .offset = 8 * MiB, .capacity = 16 * MiB}, 0))
                .error() == busy);
        auto shared = w0;
        shared.busy_wait_ms = 0;
        REQUIRE(file_store::create(shared).error() == busy);
        // The other window is free.
        auto c = open_store(alone(w1, 0));
    }
    {
        // Instances that share this process's open of the file never conflict, whatever their
        // windows (every shard of a server opens the whole file); other opens do.
        auto s0 = open_store(w0);
        auto s1 = open_store(w1);
        auto all = open_store(whole);
        REQUIRE(file_store::create(alone(w1, 0)).error() == busy);
        auto pool = make_pool(1 * MiB, 1);
        std::byte* buf = pool.acquire();
        fill({buf, MiB}, 21);
        REQUIRE(run_one(s1, 1, [&](auto t) {
                    return s1.write(0, std::span<const std::byte>(buf, MiB), t);
                }) == static_cast<std::int64_t>(MiB));
        std::memset(buf, 0, MiB);
        REQUIRE(run_one(all, 2, [&](auto t) {
                    return all.read(w1.offset, std::span<std::byte>(buf, MiB), t);
                }) == static_cast<std::int64_t>(MiB));
        REQUIRE(matches({buf, MiB}, 21));
        // Sharing instances must agree on O_DIRECT (one setting per open file description).
        if (s0.direct()) {
            auto off = file_store::create(
                {.path = path, .capacity = 32 * MiB, .direct = file_store::direct_mode::off});
            REQUIRE(off.error() == memkv::errc::invalid_argument);
        }
    }
    // Every holder is gone: the lock went with them.
    { auto a = open_store(alone(whole, 0)); }
    // A waiting open gets the window as soon as its holder lets go.
    auto holder = std::make_unique<file_store>(open_store(alone(w0, 0)));
    std::thread release([&] {
        std::this_thread::sleep_for(300ms);
        holder.reset();
    });
    const auto t0 = std::chrono::steady_clock::now();
    auto waited = file_store::create(alone(w0, 5000));
    release.join();
    REQUIRE(waited);
    CHECK(elapsed_ms(t0) >= 250);
}

TEST_CASE("file_store window held by a process killed with writes in flight goes to the next open",
          "[store][uring][file_store][lock]") {
    temp_dir dir;
    const auto path = dir.file("data");
    const file_store::config whole{.path = path, .capacity = 32 * MiB};
    const auto w0 = file_store::shard_config(whole, 0, 2);
    const auto w1 = file_store::shard_config(whole, 1, 2);
    { auto create_file = open_store(whole); } // so that the child does not race the parent
    // Nothing of the file is open here when forking: the child's open is its own (fork shares
    // open file descriptions, and with them OFD locks).
    int ready[2];
    REQUIRE(::pipe(ready) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        ::close(ready[0]);
        auto s = file_store::create(w0);
        char ok = s ? 1 : 0;
        // Writes in flight when the kill comes.
        auto pool = memkv::detail::buffer_pool::create({1 * MiB, 8, false});
        if (s && pool)
            for (std::uint64_t i = 0; i < 8; ++i)
                (void)s->write(i * MiB, std::span<const std::byte>(pool->acquire(), MiB), i);
        (void)!::write(ready[1], &ok, 1);
        for (;;)
            ::pause();
    }
    ::close(ready[1]);
    char ok = 0;
    REQUIRE(::read(ready[0], &ok, 1) == 1);
    ::close(ready[0]);
    REQUIRE(ok == 1);
    struct reaper {
        pid_t pid;
        ~reaper() {
            if (pid > 0) {
                ::kill(pid, SIGKILL);
                ::waitpid(pid, nullptr, 0);
            }
        }
    } guard{child};
    // The child's window is locked; the other one is free.
    const auto busy = std::error_code(EBUSY, std::system_category());
    auto quick = w0;
    quick.busy_wait_ms = 200;
    REQUIRE(file_store::create(quick).error() == busy);
    { auto other = open_store(w1); }
    // kill -9: the lock goes once the kernel has torn down the child's ring (its writes done).
    REQUIRE(::kill(child, SIGKILL) == 0);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    guard.pid = -1;
    REQUIRE(WIFSIGNALED(status));
    const auto t0 = std::chrono::steady_clock::now();
    auto after = file_store::create(w0); // waits up to 10 s
    REQUIRE(after);
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);
}

TEST_CASE("file_store notify_fd is readable while completions are pending, even after a short poll",
          "[store][uring][file_store]") {
    temp_dir dir;
    auto s = open_store({.path = dir.file("data"), .capacity = 4 * MiB});
    auto readable = [&] {
        pollfd p{s.notify_fd(), POLLIN, 0};
        return ::poll(&p, 1, 0) == 1;
    };
    REQUIRE(s.notify_fd() >= 0);
    REQUIRE_FALSE(readable());
    for (std::uint64_t t = 0; t < 4; ++t)
        REQUIRE(s.discard(t * 4096, 4096, t));
    // Discards run on the store's worker and complete in their own time: before each one the
    // descriptor becomes readable, and it stays so while one is left after a one-entry poll.
    io_completion one[1];
    for (int i = 0; i < 4; ++i) {
        pollfd w{s.notify_fd(), POLLIN, 0};
        REQUIRE(::poll(&w, 1, 10000) == 1);
        REQUIRE(s.poll(one) == 1);
        REQUIRE(one[0].res == 0);
    }
    REQUIRE_FALSE(readable());
    REQUIRE(s.poll(one) == 0);
    // Kernel completions wake it too.
    REQUIRE(s.flush(9));
    pollfd p{s.notify_fd(), POLLIN, 0};
    REQUIRE(::poll(&p, 1, 10000) == 1);
    REQUIRE(wait_for(s, 1).size() == 1);
}

TEST_CASE("file_store created on one thread works on another, even with operations in flight",
          "[store][uring][file_store]") {
    temp_dir dir;
    auto s = open_store({.path = dir.file("data"), .capacity = 32 * MiB, .queue_depth = 8});
    auto pool = make_pool(1 * MiB, 16);
    std::vector<std::byte*> bufs;
    for (int i = 0; i < 16; ++i)
        bufs.push_back(pool.acquire());
    for (int i = 0; i < 16; ++i)
        fill({bufs[i], MiB}, 500 + i);
    // Submitted here, reaped on another thread, which also submits its own.
    for (int i = 0; i < 8; ++i)
        REQUIRE(s.write(i * MiB, std::span<const std::byte>(bufs[i], MiB), i));
    std::size_t got = 0;
    bool ok = true;
    std::thread t([&] {
        for (int i = 8; i < 16; ++i)
            ok = ok && s.write(i * MiB, std::span<const std::byte>(bufs[i], MiB), i).has_value();
        for (const auto& c : wait_for(s, 16)) {
            ok = ok && c.res == static_cast<std::int64_t>(MiB);
            ++got;
        }
    });
    t.join();
    REQUIRE(ok);
    REQUIRE(got == 16);
    // Back on this thread: read everything.
    for (auto* b : bufs)
        std::memset(b, 0, MiB);
    for (int i = 0; i < 16; ++i)
        REQUIRE(s.read(i * MiB, std::span<std::byte>(bufs[i], MiB), 100 + i));
    REQUIRE(wait_for(s, 16).size() == 16);
    for (int i = 0; i < 16; ++i)
        REQUIRE(matches({bufs[i], MiB}, 500 + i));
    REQUIRE(no_completion(s));
    // Where the kernel takes IORING_SETUP_SINGLE_ISSUER, each change of thread made a new ring.
    auto probe = memkv::detail::uring::create(4);
    REQUIRE(probe);
    if (probe->setup_flags() & IORING_SETUP_SINGLE_ISSUER)
        CHECK(s.io_stats().rings_rebuilt >= 2);
    else
        CHECK(s.io_stats().rings_rebuilt == 0);
}

TEST_CASE("a moved file_store keeps the completions of its operations in flight",
          "[store][uring][file_store]") {
    temp_dir dir;
    auto s = open_store({.path = dir.file("data"), .capacity = 8 * MiB});
    auto pool = make_pool(1 * MiB, 4);
    for (std::uint64_t i = 0; i < 4; ++i) {
        auto* b = pool.acquire();
        fill({b, MiB}, i);
        REQUIRE(s.write(i * MiB, std::span<const std::byte>(b, MiB), i));
    }
    file_store moved = std::move(s);
    file_store target;
    target = std::move(moved);
    auto c = wait_for(target, 4);
    REQUIRE(c.size() == 4);
    for (const auto& x : c)
        REQUIRE(x.res == static_cast<std::int64_t>(MiB));
}

TEST_CASE("uring completes short reads by resubmitting the rest; end of file ends the read",
          "[store][uring]") {
    temp_dir dir;
    const auto path = dir.file("short");
    memkv::detail::unique_fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    REQUIRE(fd);
    std::vector<std::byte> data(6 * KiB + 100);
    fill(data, 3);
    REQUIRE(::pwrite(fd.get(), data.data(), data.size(), 0) == static_cast<ssize_t>(data.size()));
    auto ring = memkv::detail::uring::create(8);
    REQUIRE(ring);
    std::vector<std::byte> buf(16 * KiB, std::byte{0xee});
    REQUIRE(ring->read(fd.get(), 0, buf, 77));
    REQUIRE(ring->wait(10s));
    io_completion c[2];
    std::size_t n = 0;
    for (int i = 0; i < 100 && n == 0; ++i) {
        n = ring->reap(c);
        if (n == 0) (void)ring->wait(100ms);
    }
    REQUIRE(n == 1);
    REQUIRE(c[0].tag == 77);
    REQUIRE(c[0].res == static_cast<std::int64_t>(data.size()));
    REQUIRE(std::memcmp(buf.data(), data.data(), data.size()) == 0);
    // A read that starts at end of file completes with 0 bytes.
    REQUIRE(ring->read(fd.get(), 1 * MiB, std::span<std::byte>(buf.data(), 4096), 78));
    n = 0;
    for (int i = 0; i < 100 && n == 0; ++i) {
        (void)ring->wait(100ms);
        n = ring->reap(c);
    }
    REQUIRE(n == 1);
    REQUIRE(c[0].res == 0);
    REQUIRE(ring->in_flight() == 0);
    // A failing operation reports -errno: writing to a read-only descriptor.
    memkv::detail::unique_fd ro(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(ring->write(ro.get(), 0, std::span<const std::byte>(buf.data(), 4096), 79));
    n = 0;
    for (int i = 0; i < 100 && n == 0; ++i) {
        (void)ring->wait(100ms);
        n = ring->reap(c);
    }
    REQUIRE(n == 1);
    REQUIRE(c[0].res == -EBADF);
}

TEST_CASE("file_store sequential 1 MiB throughput at queue depth 16", "[.][bench]") {
    // Run with: test_file_store "[bench]"; MEMKV_BENCH_BYTES sets the file size (default 1 GiB).
    // Prints write and read MiB/s, with plain and with registered (fixed) buffers.
    temp_dir dir;
    const char* env = std::getenv("MEMKV_BENCH_BYTES");
    const std::uint64_t total = env ? std::strtoull(env, nullptr, 0) / MiB * MiB : 1024 * MiB;
    constexpr std::size_t depth = 16;
    auto pool = make_pool(1 * MiB, depth);
    std::vector<std::byte*> bufs;
    for (std::size_t i = 0; i < depth; ++i) {
        bufs.push_back(pool.acquire());
        fill({bufs.back(), MiB}, i);
    }
    for (const bool fixed : {false, true}) {
        auto s = open_store(
            {.path = dir.file(fixed ? "fixed" : "plain"), .capacity = total, .queue_depth = depth});
        if (fixed) {
            const auto mem = pool.memory();
            const iovec iov{mem.data(), mem.size()};
            REQUIRE(s.register_buffers({&iov, 1}));
        }
        auto pass = [&](bool write) {
            const auto t0 = std::chrono::steady_clock::now();
            std::uint64_t next = 0, done = 0;
            std::vector<std::uint64_t> free_slots;
            for (std::size_t i = 0; i < depth; ++i)
                free_slots.push_back(i);
            io_completion c[depth];
            while (done < total / MiB) {
                while (!free_slots.empty() && next < total / MiB) {
                    const auto slot = free_slots.back();
                    free_slots.pop_back();
                    auto r =
                        write
                            ? s.write(next * MiB, std::span<const std::byte>(bufs[slot], MiB), slot)
                            : s.read(next * MiB, std::span<std::byte>(bufs[slot], MiB), slot);
                    REQUIRE(r);
                    ++next;
                }
                const std::size_t n = s.poll(c);
                for (std::size_t i = 0; i < n; ++i) {
                    REQUIRE(c[i].res == static_cast<std::int64_t>(MiB));
                    free_slots.push_back(c[i].tag);
                    ++done;
                }
                if (n == 0) {
                    pollfd p{s.notify_fd(), POLLIN, 0};
                    ::poll(&p, 1, 100);
                }
            }
            const double secs =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            return double(total) / double(MiB) / secs; // MiB/s
        };
        const double w = pass(true);
        const double r = pass(false);
        std::printf("file_store on %s: O_DIRECT %s, %s buffers, %llu MiB, 1 MiB ops, queue depth "
                    "%zu: write %.0f MiB/s, read %.0f MiB/s\n",
                    dir.path().c_str(), s.direct() ? "on" : "off", fixed ? "fixed" : "plain",
                    static_cast<unsigned long long>(total / MiB), depth, w, r);
    }
}
