// SPDX-License-Identifier: Apache-2.0
// One client shared by many threads: every operation kind and every value size at once, values
// verified byte for byte; and a client inherited by a forked child, which must fail cleanly
// while the parent keeps working. Built with -DMEMKV_SANITIZE=thread too, where it must be
// TSan-clean.
#include "support/catch.hpp"
#include "support/seed.hpp"
#include "support/server_fixture.hpp"

#include <memkv/memkv.hpp>

#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using memkv::errc;
using memkv::op_kind;
using memkv::operation;
using memkv::test::pattern;

/// Failures seen by worker threads (Catch2 assertions are for the main thread only).
class failures {
public:
    template <class... A>
    void add(const char* fmt, A... a) {
        char line[512];
#pragma GCC diagnostic push // fmt is always a literal at the call sites
#pragma GCC diagnostic ignored "-Wformat-security"
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        std::snprintf(line, sizeof line, fmt, a...);
#pragma GCC diagnostic pop
        std::lock_guard lock(mutex_);
        if (lines_.size() < 50) lines_.emplace_back(line);
        ++count_;
    }
    std::size_t count() const {
        std::lock_guard lock(mutex_);
        return count_;
    }
    void print() const {
        std::lock_guard lock(mutex_);
        for (const auto& l : lines_)
            std::printf("  failure: %s\n", l.c_str());
    }

private:
    mutable std::mutex mutex_;
    std::vector<std::string> lines_;
    std::size_t count_ = 0;
};

/// A size from 1 KiB to 4 MiB, uniform in log scale (so small and large values both occur).
std::size_t random_size(std::mt19937_64& g) {
    const double lo = std::log(1024.0), hi = std::log(4.0 * 1024 * 1024);
    const double x = lo + (hi - lo) * std::uniform_real_distribution<double>(0, 1)(g);
    return std::clamp<std::size_t>(static_cast<std::size_t>(std::exp(x)), 1024, 4u << 20);
}

/// An asynchronous batch waited for through its callback.
class callback_wait {
public:
    memkv::default_client::callback callback() {
        return [this](std::span<operation>) {
            std::lock_guard lock(mutex_);
            done_ = true;
            cv_.notify_all();
        };
    }
    bool wait_for(std::chrono::milliseconds d) {
        std::unique_lock lock(mutex_);
        return cv_.wait_for(lock, d, [&] { return done_; });
    }

private:
    std::mutex mutex_;
    std::condition_variable cv_;
    bool done_ = false;
};

constexpr int thread_count = 16;

struct shared_value {
    std::string key;
    std::vector<std::byte> value;
};

/// One worker: its own keys (put, get whole / scattered / by range, exists, del) and the shared
/// read-only keys, through the synchronous calls and asynchronous batches.
void worker(memkv::default_client& c, int t, int iterations,
            const std::vector<shared_value>& shared, failures& f,
            std::atomic<std::uint64_t>& bytes) {
    auto g = memkv::test::rng(0x7417ull + static_cast<std::uint64_t>(t));
    for (int i = 0; i < iterations; ++i) {
        const auto size = random_size(g);
        const auto key = "thread-" + std::to_string(t) + "-" + std::to_string(i);
        const auto value = pattern((static_cast<std::uint64_t>(t) << 32) + i, size);
        if (auto r = c.put(key, value); !r) {
            f.add("t%d put %s (%zu B): %s", t, key.c_str(), size, r.error().message().c_str());
            continue;
        }
        bytes += size;
        // whole value
        if (auto r = c.get(key); !r || !*r || **r != value)
            f.add("t%d get %s (%zu B): %s", t, key.c_str(), size,
                  r ? (*r ? "wrong bytes" : "miss") : r.error().message().c_str());
        // scattered into two fragments with canaries after them
        {
            const auto split = 1 + static_cast<std::size_t>(g() % (size - 1)); // both non-empty
            std::vector<std::byte> a(split + 16, std::byte{0xEE}),
                b(size - split + 16, std::byte{0xEE});
            auto r = c.get_into(key, {std::span(a).first(split), std::span(b).first(size - split)});
            const bool ok =
                r && *r && **r == size && std::equal(a.begin(), a.begin() + split, value.begin()) &&
                std::equal(b.begin(), b.begin() + (size - split), value.begin() + split) &&
                std::all_of(a.end() - 16, a.end(), [](auto x) { return x == std::byte{0xEE}; }) &&
                std::all_of(b.end() - 16, b.end(), [](auto x) { return x == std::byte{0xEE}; });
            if (!ok)
                f.add("t%d get_into %s (%zu B, split %zu): %s", t, key.c_str(), size, split,
                      r ? (*r ? "wrong bytes or canary" : "miss") : r.error().message().c_str());
        }
        // a byte range
        {
            const auto off = g() % size;
            const auto len = 1 + g() % (size - off);
            auto r = c.get_range(key, off, len);
            if (!r || !*r || (*r)->size() != len ||
                !std::equal((*r)->begin(), (*r)->end(),
                            value.begin() + static_cast<std::ptrdiff_t>(off)))
                f.add("t%d get_range %s [%llu, +%llu): %s", t, key.c_str(),
                      static_cast<unsigned long long>(off), static_cast<unsigned long long>(len),
                      r ? (*r ? "wrong bytes" : "miss") : r.error().message().c_str());
        }
        // exists: this key, a missing one, a shared one
        {
            const std::vector<std::string> keys = {key, key + "-missing",
                                                   shared[i % shared.size()].key};
            auto r = c.exists(keys);
            if (!r || r->size() != 3 || !(*r)[0] || (*r)[1] || !(*r)[2])
                f.add("t%d exists %s: %s", t, key.c_str(),
                      r ? "wrong answer" : r.error().message().c_str());
        }
        // an asynchronous batch with a callback: a get of a shared key, an exists, a put
        {
            const auto& s = shared[(i + t) % shared.size()];
            const auto key2 = key + "-async";
            const auto value2 =
                pattern((static_cast<std::uint64_t>(t) << 32) + i + (1u << 20), 1 + size / 3);
            std::vector<operation> ops(3);
            ops[0].kind = op_kind::get;
            ops[0].key = s.key;
            ops[1].kind = op_kind::exists;
            ops[1].key = key;
            ops[2].kind = op_kind::put;
            ops[2].key = key2;
            ops[2].value = value2;
            callback_wait w;
            if (auto id = c.submit(ops, w.callback()); !id) {
                f.add("t%d submit: %s", t, id.error().message().c_str());
            } else if (!w.wait_for(30s)) {
                f.add("t%d async batch never completed", t);
                return; // its operations are still borrowed: do not free them
            } else {
                if (ops[0].status || ops[0].data != s.value)
                    f.add("t%d async get %s: %s", t, s.key.c_str(),
                          ops[0].status ? ops[0].status.message().c_str() : "wrong bytes");
                if (ops[1].status || !ops[1].exists || ops[1].size != size)
                    f.add("t%d async exists %s: %s", t, key.c_str(),
                          ops[1].status ? ops[1].status.message().c_str() : "wrong answer");
                if (ops[2].status)
                    f.add("t%d async put %s: %s", t, key2.c_str(), ops[2].status.message().c_str());
                else if (auto r = c.get(key2); !r || !*r || **r != value2)
                    f.add("t%d get after async put %s: %s", t, key2.c_str(),
                          r ? (*r ? "wrong bytes" : "miss") : r.error().message().c_str());
            }
            (void)c.del(key2);
        }
        // delete: then a miss, and a second delete finds nothing to delete
        if (auto r = c.del(key); !r || !*r)
            f.add("t%d del %s: %s", t, key.c_str(),
                  r ? "nothing to delete" : r.error().message().c_str());
        if (auto r = c.get(key); !r || *r)
            f.add("t%d get after del %s: %s", t, key.c_str(),
                  r ? "still there" : r.error().message().c_str());
        if (auto r = c.del(key); !r || *r)
            f.add("t%d second del %s: %s", t, key.c_str(),
                  r ? "deleted something" : r.error().message().c_str());
    }
}

/// A loopback port with nothing listening (bound, then closed).
int closed_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

} // namespace

TEST_CASE("Sixteen threads sharing one client put, get, scatter, check and delete 1 KiB to 4 MiB "
          "values exactly",
          "[failover][threads]") {
    memkv::test::server_fixture server;
    auto client = server.client();
    // Keys every thread reads while others write.
    std::vector<shared_value> shared;
    for (std::size_t i = 0; i < 8; ++i) {
        shared.push_back({"shared-" + std::to_string(i), pattern(0x5A5Aull + i, 1024u << (i + 1))});
        REQUIRE(client->put(shared.back().key, shared.back().value));
    }
    const int iterations = 12;
    failures f;
    std::atomic<std::uint64_t> bytes{0};
    std::atomic<bool> done{false};
    // Stats readers run beside the workers.
    std::thread observer([&] {
        while (!done) {
            (void)client->server_stats();
            (void)client->locate("observer");
            if (auto s = client->stats(); !s) f.add("stats: %s", s.error().message().c_str());
            std::this_thread::sleep_for(20ms);
        }
    });
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int t = 0; t < thread_count; ++t)
        threads.emplace_back([&, t] { worker(*client, t, iterations, shared, f, bytes); });
    for (auto& t : threads)
        t.join();
    done = true;
    observer.join();
    const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
    const auto st = client->server_stats();
    std::printf("%d threads x %d iterations: %.1f MiB of values in %.1f s; client saw %llu "
                "requests, %llu errors, p99 %llu us, max %llu us; %zu failures\n",
                thread_count, iterations, static_cast<double>(bytes.load()) / (1 << 20), dt.count(),
                static_cast<unsigned long long>(st[0].requests),
                static_cast<unsigned long long>(st[0].errors),
                static_cast<unsigned long long>(st[0].p99_us),
                static_cast<unsigned long long>(st[0].max_us), f.count());
    f.print();
    CHECK(f.count() == 0);
    // The shared keys were never disturbed.
    for (const auto& s : shared) {
        auto r = client->get(s.key);
        REQUIRE(r);
        REQUIRE(*r);
        CHECK(**r == s.value);
    }
}

TEST_CASE("A forked child's calls on the parent's client fail with errc::forked while the "
          "parent keeps working",
          "[failover][threads][fork]") {
    memkv::test::server_fixture server;
    auto client = server.client();
    const auto value = pattern(0xF0F0, 64u << 10);
    REQUIRE(client->put("fork-key", value));

    // Parent threads keep the client busy across the fork.
    failures f;
    std::atomic<bool> done{false};
    std::atomic<std::uint64_t> reads{0};
    std::vector<std::thread> readers;
    for (int t = 0; t < 4; ++t)
        readers.emplace_back([&] {
            while (!done) {
                auto r = client->get("fork-key");
                if (!r || !*r || **r != value)
                    f.add("parent read: %s",
                          r ? (*r ? "wrong bytes" : "miss") : r.error().message().c_str());
                ++reads;
            }
        });
    while (reads < 100)
        std::this_thread::yield();

    std::fflush(stdout); // the child must not write the parent's buffered output again
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        // The child: every call must fail with errc::forked, promptly, and touch nothing of
        // the parent's (no thread of the client exists here). Bit i set = check i failed.
        int bad = 0;
        auto forked = [](std::error_code ec) { return ec == errc::forked; };
        if (auto r = client->get("fork-key"); r || !forked(r.error())) bad |= 1;
        if (auto r = client->put("child-key", value); r || !forked(r.error())) bad |= 2;
        operation op;
        op.kind = op_kind::get;
        op.key = "fork-key";
        if (auto r = client->submit({&op, 1}); r || !forked(r.error())) bad |= 4;
        if (auto r = client->stats(); r || !forked(r.error())) bad |= 8;
        std::vector<std::byte> mem(4096);
        if (auto r = client->register_buffer(mem); r || !forked(r.error())) bad |= 16;
        if (auto r = client->del("fork-key"); r || !forked(r.error())) bad |= 32;
        ::_exit(bad); // no destructors, no atexit handlers, no flush of inherited buffers
    }
    int status = 0;
    const auto t0 = std::chrono::steady_clock::now();
    bool exited = false;
    while (std::chrono::steady_clock::now() - t0 < 10s) {
        if (::waitpid(pid, &status, WNOHANG) == pid) {
            exited = true;
            break;
        }
        std::this_thread::sleep_for(5ms);
    }
    if (!exited) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
    }
    const auto reads_at_exit = reads.load();
    std::this_thread::sleep_for(200ms);
    done = true;
    for (auto& t : readers)
        t.join();
    std::printf("fork: child %s with status %d; parent reads %llu at its exit, %llu in all\n",
                exited ? "exited" : "hung (killed)", WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                static_cast<unsigned long long>(reads_at_exit),
                static_cast<unsigned long long>(reads.load()));
    f.print();
    CHECK(exited);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(f.count() == 0);
    CHECK(reads.load() > reads_at_exit); // the parent kept working after the fork
    // The child changed nothing on the server.
    auto r = client->get("fork-key");
    REQUIRE(r);
    REQUIRE(*r);
    CHECK(**r == value);
    auto child = client->get("child-key");
    REQUIRE(child);
    CHECK_FALSE(*child);
    REQUIRE(client->put("after-fork", value));
}

// Regression (found by this suite, fixed in e8e8e2e): a server connection could stop sending
// replies for good (until the client's request timeout closed it). In
// include/memkv/detail/server_shard.hpp, update_interest() iterated `dirty_` with a range-for and
// cleared it afterwards, but the flush() it called completed GET payload frames whose
// on_sent() -> release_buffer() -> mark() set connection::dirty and push_back()ed into `dirty_`
// during the iteration; the clear() dropped that entry while `dirty` stayed true, so every later
// mark() of the connection was a no-op: replies queued by reply() were never flushed and EPOLLOUT
// never requested. gdb on a hung run of the 16-thread test above (about 1 run in 6; 2 in 3 under
// TSan) showed the connection with dirty=true, 17 replies queued, interest EPOLLIN only, dirty_
// empty and both sides in epoll_wait. It needs a GET's payload frames flushed from
// update_interest() (a socket that was full in send_ready()): large GETs from several threads.
// This test hung in about 2 runs of 3 before the fix.
TEST_CASE("Concurrent large GETs and small PUTs on one connection never leave replies unsent",
          "[failover][threads]") {
    memkv::test::server_fixture server(memkv::test::make_config(1));
    memkv::client_config cc;
    cc.request_timeout = 2000ms;
    auto client = server.client(cc);
    const auto big = pattern(0xB16, 8u << 20);
    const auto small = pattern(0x5, 1000);
    REQUIRE(client->put("big", big));
    failures f;
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> rounds{0};
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int t = 0; t < thread_count; ++t)
        threads.emplace_back([&, t] {
            const auto key = "small-" + std::to_string(t);
            while (!stop) {
                auto r = client->get("big");
                auto p = client->put(key, small);
                if (!r || !*r || **r != big || !p) {
                    f.add("after %.0f ms: get %s, put %s",
                          std::chrono::duration<double, std::milli>(
                              std::chrono::steady_clock::now() - t0)
                              .count(),
                          r ? (*r ? (**r == big ? "ok" : "wrong bytes") : "miss")
                            : r.error().message().c_str(),
                          p ? "ok" : p.error().message().c_str());
                    stop = true;
                }
                ++rounds;
            }
        });
    while (!stop && std::chrono::steady_clock::now() - t0 < 6s)
        std::this_thread::sleep_for(10ms);
    stop = true;
    for (auto& t : threads)
        t.join();
    std::printf("%d threads of 8 MiB GETs and 1000-byte PUTs: %llu rounds, %zu failures\n",
                thread_count, static_cast<unsigned long long>(rounds.load()), f.count());
    f.print();
    CHECK(f.count() == 0);
}

// Run under -DMEMKV_SANITIZE=thread (scripts/test.sh does): server_stats() and locate() on any
// thread read the server's link state and shard count while the progress thread changes them.
TEST_CASE("Threads reading a client's server stats and placement while one of its servers goes "
          "away, comes back and goes away again",
          "[failover][threads]") {
    memkv::test::server_fixture server;
    const int port = closed_port();
    memkv::client_config cc;
    cc.servers = {server.tcp_endpoint, "127.0.0.1:" + std::to_string(port)};
    cc.request_timeout = 1000ms;
    cc.connect_timeout = 500ms;
    auto created = memkv::default_client::create(cc);
    REQUIRE(created);
    auto& client = *created;
    // A key on each server.
    std::string live_key, other_key;
    for (int i = 0; live_key.empty() || other_key.empty(); ++i) {
        auto k = "reconnect-" + std::to_string(i);
        (client.locate(k).first == 0 ? live_key : other_key) = k;
    }
    const auto value = pattern(0xD00D, 8192);
    REQUIRE(client.put(live_key, value));

    failures f;
    std::atomic<bool> done{false};
    std::atomic<std::uint64_t> live_ok{0}, other_ok{0}, other_failed{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, t] {
            while (!done) {
                if (t % 2 == 0) {
                    auto r = client.get(live_key);
                    if (!r || !*r || **r != value)
                        f.add("live get: %s",
                              r ? (*r ? "wrong bytes" : "miss") : r.error().message().c_str());
                    else
                        ++live_ok;
                } else {
                    // A miss (the second server starts empty) or unavailable while it is away.
                    auto r = client.get(other_key);
                    if (r) // a hit or a miss
                        ++other_ok;
                    else if (r.error() == errc::unavailable || r.error() == errc::closed ||
                             r.error().category() == std::system_category())
                        ++other_failed;
                    else
                        f.add("other get: %s", r.error().message().c_str());
                    std::this_thread::sleep_for(5ms);
                }
            }
        });
    std::uint64_t observed = 0;
    std::thread observer([&] {
        while (!done) {
            const auto st = client.server_stats();
            if (st.size() != 2 || !st[0].up) f.add("server_stats: server 0 not up");
            (void)client.locate(other_key);
            ++observed;
            std::this_thread::sleep_for(1ms);
        }
    });
    std::this_thread::sleep_for(700ms); // unreachable
    {
        auto cfg = memkv::test::make_config();
        cfg.listen = {"127.0.0.1:" + std::to_string(port)};
        memkv::test::server_fixture second(cfg);
        std::this_thread::sleep_for(1500ms); // reachable (the client reconnects)
    }
    std::this_thread::sleep_for(700ms); // gone again
    done = true;
    for (auto& t : threads)
        t.join();
    observer.join();
    const auto st = client.server_stats();
    std::printf("a server away, back, away: %llu live gets, %llu replies and %llu failures from "
                "the other, %llu stats reads, %llu reconnection attempts\n",
                static_cast<unsigned long long>(live_ok.load()),
                static_cast<unsigned long long>(other_ok.load()),
                static_cast<unsigned long long>(other_failed.load()),
                static_cast<unsigned long long>(observed),
                static_cast<unsigned long long>(st[1].reconnects));
    f.print();
    CHECK(f.count() == 0);
    CHECK(live_ok > 0);
    CHECK(other_ok > 0);
    CHECK(other_failed > 0);
    CHECK(st[1].reconnects > 0);
}
