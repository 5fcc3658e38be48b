// SPDX-License-Identifier: Apache-2.0
// memkv-bench: end-to-end throughput and latency of memkv over TCP. For each block size it
// writes, then reads back, keys through the asynchronous submit() API with a fixed number of
// operations in flight per client thread, and prints the table of the user's benchmark page
// (block size x TCP write/read GiB/s) with latency percentiles, and optionally JSON.
#include <memkv/memkv.hpp>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <latch>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#ifndef MEMKV_VERSION
#define MEMKV_VERSION "unknown"
#endif

namespace {

/// Exit statuses (listed in --help).
enum exit_status : int {
    exit_ok = 0,     ///< every operation succeeded (and verified, with --verify)
    exit_errors = 1, ///< an operation failed, missed or read wrong bytes; or setup failed
    exit_usage = 2,  ///< bad flags or environment
};

constexpr const char* program = "memkv-bench";
using clock_type = std::chrono::steady_clock;
constexpr std::uint64_t gib = 1ull << 30;
constexpr std::uint64_t min_size = 16;                  // a header and a trailer of 8 bytes each
constexpr std::uint64_t no_time_limit_ms = 3600 * 1000; // --bytes without --duration-ms

/// What the command line asks for.
struct options {
    std::vector<std::string> servers;
    std::string servers_file;
    std::uint32_t shards = 2;
    std::uint64_t capacity = 4 * gib;
    std::vector<std::uint64_t> sizes{4u << 10, 64u << 10, 256u << 10,
                                     1u << 20, 4u << 20,  16u << 20};
    std::vector<std::string> ops{"write", "read"};
    unsigned threads = 4;
    unsigned inflight = 16;
    std::uint64_t duration_ms = 2000;
    std::uint64_t bytes = gib;
    std::uint64_t key_space = 0; // 0 = automatic per size
    std::uint64_t timeout_ms = 30000;
    std::string json;
    bool verify = false;
};

/// "4 KiB", "1 MiB", "1 GiB", or bytes.
std::string block_label(std::uint64_t n) {
    if (n >= gib && n % gib == 0) return fmt::format("{} GiB", n >> 30);
    if (n >= (1u << 20) && n % (1u << 20) == 0) return fmt::format("{} MiB", n >> 20);
    if (n >= 1024 && n % 1024 == 0) return fmt::format("{} KiB", n >> 10);
    return fmt::format("{} B", n);
}

/// The 8-byte tag at the start of the value of key `index` of size `size`; its complement ends it.
std::uint64_t value_tag(std::uint64_t index, std::uint64_t size) noexcept {
    return (index * 0x9E3779B97F4A7C15ull) ^ (size << 1) ^ 0x6D656D6B76ull;
}
std::byte fill_byte(std::uint64_t offset) noexcept {
    return static_cast<std::byte>((offset * 131 + 7) & 0xff);
}

void put_u64(std::byte* p, std::uint64_t v) noexcept {
    std::memcpy(p, &v, sizeof(v));
}
std::uint64_t get_u64(const std::byte* p) noexcept {
    std::uint64_t v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

/// Buffers of every slot of every thread, `stride` bytes each, filled with fill_byte(offset in
/// the slot). Anonymous memory, released at exit.
class slot_memory {
public:
    static std::optional<slot_memory> create(std::size_t slots, std::size_t stride) {
        slot_memory m;
        m.bytes_ = slots * stride;
        void* p = ::mmap(nullptr, m.bytes_, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return std::nullopt;
        m.data_ = static_cast<std::byte*>(p);
        std::vector<std::byte> pattern(stride);
        for (std::size_t j = 0; j < stride; ++j)
            pattern[j] = fill_byte(j);
        for (std::size_t s = 0; s < slots; ++s)
            std::memcpy(m.data_ + s * stride, pattern.data(), stride);
        m.stride_ = stride;
        return m;
    }
    slot_memory() = default;
    slot_memory(slot_memory&& o) noexcept
        : data_(std::exchange(o.data_, nullptr)), bytes_(o.bytes_), stride_(o.stride_) {}
    slot_memory& operator=(slot_memory&&) = delete;
    ~slot_memory() {
        if (data_) ::munmap(data_, bytes_);
    }
    std::byte* slot(std::size_t i) const noexcept { return data_ + i * stride_; }

private:
    std::byte* data_ = nullptr;
    std::size_t bytes_ = 0, stride_ = 0;
};

/// Counts of one phase (one cell, or a populate step).
struct tally {
    std::uint64_t ok_ops = 0, ok_bytes = 0;
    std::uint64_t errors = 0;          ///< failed operations (any error status, submit failures)
    std::uint64_t misses = 0;          ///< reads answered not_found
    std::uint64_t verify_failures = 0; ///< reads with wrong content or length
    std::map<std::string, std::uint64_t> error_kinds;
    std::vector<std::uint64_t> latency_ns; ///< per completed operation

    void merge(tally&& o) {
        ok_ops += o.ok_ops;
        ok_bytes += o.ok_bytes;
        errors += o.errors;
        misses += o.misses;
        verify_failures += o.verify_failures;
        for (auto& [k, v] : o.error_kinds)
            error_kinds[k] += v;
        latency_ns.insert(latency_ns.end(), o.latency_ns.begin(), o.latency_ns.end());
    }
    std::uint64_t bad() const noexcept { return errors + misses + verify_failures; }
};

/// What one phase does.
struct phase_spec {
    memkv::op_kind kind = memkv::op_kind::put;
    std::uint64_t size = 0;
    const std::vector<std::string>* keys = nullptr;   ///< key of each index
    const std::vector<std::uint32_t>* list = nullptr; ///< indices to use, in order; or null:
    std::uint64_t max_ops = 0;                        ///< ... ticket % keys, up to max_ops
    clock_type::time_point deadline = clock_type::time_point::max();
    bool verify = false;
    std::atomic<bool>* written = nullptr; ///< puts: set for each index stored successfully
};

/// Runs one phase: `threads` threads each keep `inflight` single-operation batches outstanding
/// through client::submit() with a completion callback. Returns the tally and the wall time from
/// the first submission to the last completion.
class load_generator {
public:
    load_generator(memkv::default_client& c, const slot_memory& mem, unsigned threads,
                   unsigned inflight)
        : client_(c), mem_(mem), threads_(threads), inflight_(inflight) {}

    std::pair<tally, double> run(const phase_spec& spec) {
        spec_ = &spec;
        next_.store(0, std::memory_order_relaxed);
        stop_.store(false, std::memory_order_relaxed);
        std::vector<std::unique_ptr<worker>> workers;
        for (unsigned t = 0; t < threads_; ++t) {
            auto w = std::make_unique<worker>();
            w->slots.resize(inflight_);
            for (unsigned i = 0; i < inflight_; ++i) {
                auto& s = w->slots[i];
                s.buf = mem_.slot(std::size_t(t) * inflight_ + i);
                s.op.kind = spec.kind;
                if (spec.kind == memkv::op_kind::put)
                    s.op.value = {s.buf, spec.size};
                else
                    s.op.fragments = {std::span<std::byte>(s.buf, spec.size)};
                w->free.push_back(inflight_ - 1 - i);
            }
            workers.push_back(std::move(w));
        }
        std::latch start(1);
        std::vector<std::thread> threads;
        for (auto& w : workers)
            threads.emplace_back([this, &start, wp = w.get()] {
                start.wait();
                drive(*wp);
            });
        const auto t0 = clock_type::now();
        start.count_down();
        for (auto& t : threads)
            t.join();
        const double seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
        tally total;
        for (auto& w : workers)
            total.merge(std::move(w->counts));
        return {std::move(total), seconds};
    }

private:
    struct slot {
        memkv::operation op;
        std::byte* buf = nullptr;
        clock_type::time_point start;
        std::uint32_t index = 0;
    };
    struct worker {
        std::vector<slot> slots;
        std::mutex mutex; // guards free and counts
        std::condition_variable cv;
        std::vector<std::size_t> free;
        tally counts;
    };

    /// Takes the next key index, or nothing when the phase is over.
    std::optional<std::uint32_t> next_index() {
        if (stop_.load(std::memory_order_relaxed)) return std::nullopt;
        const auto& s = *spec_;
        const auto ticket = next_.fetch_add(1, std::memory_order_relaxed);
        const auto limit = s.list ? s.list->size() : s.max_ops;
        if (ticket >= limit || clock_type::now() >= s.deadline) {
            stop_.store(true, std::memory_order_relaxed);
            return std::nullopt;
        }
        return s.list ? (*s.list)[ticket] : static_cast<std::uint32_t>(ticket % s.keys->size());
    }

    void drive(worker& w) {
        const auto& spec = *spec_;
        for (;;) {
            std::size_t idx;
            {
                std::unique_lock lock(w.mutex);
                w.cv.wait(lock, [&] { return !w.free.empty(); });
                idx = w.free.back();
                w.free.pop_back();
            }
            const auto index = next_index();
            if (!index) {
                std::lock_guard lock(w.mutex);
                w.free.push_back(idx);
                break;
            }
            auto& s = w.slots[idx];
            s.index = *index;
            s.op.key = (*spec.keys)[*index];
            const auto tag = value_tag(*index, spec.size);
            if (spec.kind == memkv::op_kind::put) {
                put_u64(s.buf, tag);
                put_u64(s.buf + spec.size - 8, ~tag);
            } else if (spec.verify) { // poison, so that stale bytes never pass
                put_u64(s.buf, ~tag);
                put_u64(s.buf + spec.size - 8, tag);
                s.buf[spec.size / 2] = ~fill_byte(spec.size / 2);
            }
            s.start = clock_type::now();
            auto r = client_.submit(
                {&s.op, 1}, [this, &w, idx](std::span<memkv::operation>) { complete(w, idx); });
            if (!r) {
                std::lock_guard lock(w.mutex);
                ++w.counts.errors;
                ++w.counts.error_kinds["submit: " + r.error().message()];
                w.free.push_back(idx);
            }
        }
        std::unique_lock lock(w.mutex);
        w.cv.wait(lock, [&] { return w.free.size() == w.slots.size(); });
    }

    /// Completion callback (the client's progress thread).
    void complete(worker& w, std::size_t idx) {
        const auto now = clock_type::now();
        const auto& spec = *spec_;
        auto& s = w.slots[idx];
        const auto ns = static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(now - s.start).count());
        const auto status = s.op.status;
        bool ok = !status, miss = false, wrong = false;
        if (status == memkv::make_error_code(memkv::errc::not_found)) miss = true;
        if (ok && spec.kind == memkv::op_kind::get) {
            if (s.op.size != spec.size) {
                wrong = true;
            } else if (spec.verify) {
                const auto tag = value_tag(s.index, spec.size);
                wrong = get_u64(s.buf) != tag || get_u64(s.buf + spec.size - 8) != ~tag ||
                        s.buf[spec.size / 2] != fill_byte(spec.size / 2);
            }
        }
        if (ok && spec.written) spec.written[s.index].store(true, std::memory_order_relaxed);
        {
            std::lock_guard lock(w.mutex);
            auto& c = w.counts;
            c.latency_ns.push_back(ns);
            if (ok && !wrong) {
                ++c.ok_ops;
                c.ok_bytes += spec.size;
            } else if (wrong) {
                ++c.verify_failures;
            } else if (miss) {
                ++c.misses;
            } else {
                ++c.errors;
                ++c.error_kinds[status.message()];
            }
            w.free.push_back(idx);
            // Under the lock: once the worker sees every slot free it returns and `w` may be
            // destroyed, so nothing of it may be touched after the unlock.
            w.cv.notify_one();
        }
    }

    memkv::default_client& client_;
    const slot_memory& mem_;
    unsigned threads_, inflight_;
    const phase_spec* spec_ = nullptr;
    std::atomic<std::uint64_t> next_{0};
    std::atomic<bool> stop_{false};
};

/// One measured cell of the table.
struct cell {
    std::string op; // "write" or "read"
    std::uint64_t size = 0;
    std::uint64_t key_space = 0;
    double seconds = 0;
    tally counts;
    double p50_us = 0, p99_us = 0, p999_us = 0, max_us = 0;

    double gib_per_s() const { return seconds > 0 ? double(counts.ok_bytes) / gib / seconds : 0; }
    double ops_per_s() const { return seconds > 0 ? double(counts.ok_ops) / seconds : 0; }
};

/// Nearest-rank percentiles of the latencies, in microseconds.
void summarise(cell& c) {
    auto& v = c.counts.latency_ns;
    if (v.empty()) return;
    std::sort(v.begin(), v.end());
    auto q = [&](double p) {
        auto rank = static_cast<std::size_t>(p * double(v.size()));
        return double(v[std::min(rank, v.size() - 1)]) / 1000.0;
    };
    c.p50_us = q(0.50);
    c.p99_us = q(0.99);
    c.p999_us = q(0.999);
    c.max_us = double(v.back()) / 1000.0;
}

std::string json_escape(const std::string& s) {
    std::string out;
    for (char ch : s) {
        if (ch == '"' || ch == '\\') {
            out += '\\';
            out += ch;
        } else if (static_cast<unsigned char>(ch) < 0x20) {
            out += fmt::format("\\u{:04x}", static_cast<unsigned>(ch));
        } else {
            out += ch;
        }
    }
    return out;
}

/// What one server reported about itself in its stats (the shards' store_kind,
/// store_direct_io and buffers_hugepages gauges). A field is empty when no shard reported it
/// (an older server), "mixed" when its shards disagree.
struct server_info {
    std::uint32_t shards = 0;
    std::set<std::uint64_t> kinds, direct, hugepages; ///< distinct values over the shards

    static std::string kind_name(std::uint64_t k) {
        switch (k) {
        case 1:
            return "memory";
        case 2:
            return "file";
        case 3:
            return "block";
        default:
            return "other";
        }
    }
    std::string store() const {
        if (kinds.empty()) return "unknown";
        return kinds.size() == 1 ? kind_name(*kinds.begin()) : "mixed";
    }
    /// true/false when every shard agrees, else empty.
    static std::optional<bool> flag(const std::set<std::uint64_t>& v) {
        if (v.size() != 1) return std::nullopt;
        return *v.begin() != 0;
    }
    static std::string yes_no(const std::set<std::uint64_t>& v) {
        if (v.empty()) return "unknown";
        return v.size() == 1 ? (*v.begin() ? "yes" : "no") : "mixed";
    }
    std::string describe() const {
        return fmt::format("{} store, O_DIRECT {}, bounce buffers on hugepages {}", store(),
                           yes_no(direct), yes_no(hugepages));
    }
};

/// What the run was measured against.
struct setup_info {
    std::vector<std::string> servers;
    bool embedded = false;
    std::uint32_t shards = 0;      ///< total over servers
    std::uint32_t connections = 0; ///< TCP connections of the client
    std::optional<bool> hugepages; ///< every server's bounce buffers on hugepages (else mixed/?)
    std::optional<bool> direct_io; ///< every server's store uses O_DIRECT (else mixed/unknown)
    std::vector<server_info> info; ///< per server, in the order of `servers`
};

std::string json_flag(const std::optional<bool>& b) {
    return b ? (*b ? "true" : "false") : "null";
}

bool write_json(const std::string& path, const options& o, const setup_info& si,
                const std::vector<cell>& cells, std::uint64_t evicted) {
    std::string j = "{\n";
    j += fmt::format("  \"program\": \"{} {}\",\n", program, MEMKV_VERSION);
    j += "  \"servers\": [";
    for (std::size_t i = 0; i < si.servers.size(); ++i)
        j += fmt::format("{}\"{}\"", i ? ", " : "", json_escape(si.servers[i]));
    j += "],\n";
    j += fmt::format("  \"embedded_server\": {},\n", si.embedded);
    j += fmt::format("  \"shards\": {},\n  \"connections\": {},\n", si.shards, si.connections);
    j += fmt::format("  \"hugepages\": {},\n  \"direct_io\": {},\n", json_flag(si.hugepages),
                     json_flag(si.direct_io));
    j += "  \"server_info\": [";
    for (std::size_t i = 0; i < si.info.size(); ++i) {
        const auto& s = si.info[i];
        j += fmt::format("{}\n    {{\"server\": \"{}\", \"shards\": {}, \"store\": \"{}\", "
                         "\"direct_io\": {}, \"hugepages\": {}}}",
                         i ? "," : "",
                         json_escape(i < si.servers.size() ? si.servers[i] : std::string()),
                         s.shards, s.store(), json_flag(server_info::flag(s.direct)),
                         json_flag(server_info::flag(s.hugepages)));
    }
    j += si.info.empty() ? "],\n" : "\n  ],\n";
    j += fmt::format("  \"threads\": {},\n  \"inflight_per_thread\": {},\n", o.threads, o.inflight);
    j += fmt::format("  \"verify\": {},\n  \"nproc\": {},\n", o.verify,
                     std::thread::hardware_concurrency());
    j += fmt::format("  \"server_evicted_entries\": {},\n", evicted);
    j += "  \"cells\": [\n";
    for (std::size_t i = 0; i < cells.size(); ++i) {
        const auto& c = cells[i];
        j += fmt::format(
            "    {{\"op\": \"{}\", \"size\": {}, \"key_space\": {}, \"ops\": {}, \"bytes\": {}, "
            "\"seconds\": {:.6f}, \"gib_per_s\": {:.4f}, \"ops_per_s\": {:.1f}, \"errors\": {}, "
            "\"misses\": {}, \"verify_failures\": {}, \"latency_us\": {{\"p50\": {:.1f}, "
            "\"p99\": {:.1f}, \"p999\": {:.1f}, \"max\": {:.1f}}}}}{}\n",
            c.op, c.size, c.key_space, c.counts.ok_ops, c.counts.ok_bytes, c.seconds, c.gib_per_s(),
            c.ops_per_s(), c.counts.errors, c.counts.misses, c.counts.verify_failures, c.p50_us,
            c.p99_us, c.p999_us, c.max_us, i + 1 < cells.size() ? "," : "");
    }
    j += "  ]\n}\n";
    std::FILE* f = std::fopen(path.c_str(), "w");
    if (!f) return false;
    const bool ok = std::fwrite(j.data(), 1, j.size(), f) == j.size();
    return std::fclose(f) == 0 && ok;
}

/// Shards per server (from the stats reply's "serverI.shardN." names) and evicted entries;
/// with `info`, also what each server says about its store and buffers (indexed like the
/// client's server list).
std::pair<std::map<std::size_t, std::set<std::uint32_t>>, std::uint64_t>
server_shape(memkv::default_client& c, std::vector<server_info>* info = nullptr) {
    std::map<std::size_t, std::set<std::uint32_t>> shards;
    std::uint64_t evicted = 0;
    auto st = c.stats();
    if (!st) return {shards, 0};
    for (const auto& e : *st) {
        unsigned long srv = 0, shard = 0;
        char rest[64] = {};
        if (std::sscanf(e.name.c_str(), "server%lu.shard%lu.%63s", &srv, &shard, rest) == 3) {
            shards[srv].insert(static_cast<std::uint32_t>(shard));
            const std::string_view name(rest);
            if (name == "evicted_entries") evicted += e.value;
            if (info && srv < 4096) {
                if (info->size() <= srv) info->resize(srv + 1);
                auto& si = (*info)[srv];
                if (name == "store_kind") si.kinds.insert(e.value);
                if (name == "store_direct_io") si.direct.insert(e.value);
                if (name == "buffers_hugepages") si.hugepages.insert(e.value);
            }
        }
    }
    if (info)
        for (const auto& [srv, set] : shards)
            if (srv < info->size()) (*info)[srv].shards = static_cast<std::uint32_t>(set.size());
    return {shards, evicted};
}

/// Waits (up to `limit`) until every server answers: an exists on a key of each server makes a
/// server that is down (say after a request timed out) reconnect, so that one cell's failure does
/// not spill into the next. Returns whether all servers answered.
bool ensure_connected(memkv::default_client& c, std::chrono::milliseconds limit) {
    std::vector<std::string> probes(c.server_count());
    for (std::uint64_t i = 0, found = 0; found < probes.size() && i < 100000; ++i) {
        auto key = fmt::format("probe/{}", i);
        auto& slot = probes[c.locate(key).first];
        if (slot.empty()) slot = std::move(key), ++found;
    }
    std::erase_if(probes, [](const std::string& k) { return k.empty(); });
    const auto start = clock_type::now();
    const auto deadline = start + limit;
    for (;;) {
        if (c.exists(probes)) {
            const auto waited = std::chrono::duration<double>(clock_type::now() - start).count();
            if (waited > 1.0)
                fmt::print(stderr, "{}: waited {:.1f} s for the servers to answer\n", program,
                           waited);
            return true;
        }
        if (clock_type::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
}

std::string fmt_us(double us) {
    return us < 100 ? fmt::format("{:.1f}", us) : fmt::format("{:.0f}", us);
}

/// Takes the servers of --servers-file into o.servers; an exit status on a bad file or both
/// options given.
std::optional<int> servers_from_file(options& o) {
    if (o.servers_file.empty()) return std::nullopt;
    if (!o.servers.empty()) {
        fmt::print(stderr,
                   "{}: error: give --servers (MEMKV_SERVERS) or --servers-file "
                   "(MEMKV_SERVERS_FILE), not both\n",
                   program);
        return exit_usage;
    }
    std::string why;
    auto file = memkv::client_config::from_file(o.servers_file, &why);
    if (!file) {
        fmt::print(stderr, "{}: error: --servers-file {}\n", program, why);
        return exit_usage;
    }
    o.servers = std::move(file->servers);
    return std::nullopt;
}

/// Starts the embedded server (no --servers), into `embedded`; o.servers becomes its endpoint.
/// An exit status when it cannot start.
std::optional<int> start_embedded(options& o, setup_info& si,
                                  std::optional<memkv::memory_server>& embedded) {
    memkv::server_config cfg;
    cfg.listen = {"127.0.0.1:0"};
    cfg.shards = o.shards;
    std::string why;
    auto ring = memkv::auth::key_ring::from_environment(&why);
    if (!ring) {
        fmt::print(stderr, "{}: error: auth key from the environment: {}\n", program,
                   why.empty() ? ring.error().message() : why);
        return exit_usage;
    }
    cfg.keys = std::make_shared<const memkv::auth::key_ring>(std::move(*ring));
    memkv::memory_store::config scfg;
    scfg.capacity = o.capacity; // MAP_NORESERVE: pages are touched only as values land
    auto srv = memkv::memory_server::create(cfg, scfg);
    if (!srv) {
        fmt::print(stderr, "{}: error: cannot create the embedded server ({} shards, {} GiB): {}\n",
                   program, o.shards, double(o.capacity) / gib, srv.error().message());
        return exit_errors;
    }
    if (auto r = srv->start(); !r) {
        fmt::print(stderr, "{}: error: cannot start the embedded server: {}\n", program,
                   r.error().message());
        return exit_errors;
    }
    embedded = std::move(*srv);
    o.servers = {embedded->endpoints().front()};
    si.embedded = true;
    si.hugepages = embedded->hugepages();
    fmt::print(stderr,
               "{}: no --servers or --servers-file: started an embedded memkv server on {} ({} "
               "shards, {:.0f} GiB DRAM store, MAP_NORESERVE; bounce buffers {}) in this "
               "process, sharing its CPUs with the client\n",
               program, o.servers.front(), o.shards, double(o.capacity) / gib,
               *si.hugepages ? "on hugepages" : "not on hugepages");
    return std::nullopt;
}

/// Asks every server what it is (store kind, O_DIRECT, hugepages, shards) into `si` and prints
/// it; returns the entries evicted so far (server_shape).
std::uint64_t describe_servers(memkv::default_client& client, const options& o, setup_info& si) {
    si.info.resize(o.servers.size());
    auto [shape, evicted_before] = server_shape(client, &si.info);
    // Every server (and every shard) agreeing, else unknown; the embedded server's own answer
    // about hugepages stands.
    std::set<std::uint64_t> direct, huge;
    bool complete = true;
    for (const auto& s : si.info) {
        direct.insert(s.direct.begin(), s.direct.end());
        huge.insert(s.hugepages.begin(), s.hugepages.end());
        complete = complete && !s.direct.empty() && !s.hugepages.empty();
    }
    if (complete) {
        si.direct_io = server_info::flag(direct);
        if (!si.embedded) si.hugepages = server_info::flag(huge);
    }
    for (std::size_t i = 0; i < si.info.size(); ++i)
        fmt::print(stderr, "{}: server {}: {}\n", program,
                   i < o.servers.size() ? o.servers[i] : fmt::format("#{}", i),
                   si.info[i].describe());
    for (const auto& [srv, set] : shape) {
        si.shards += static_cast<std::uint32_t>(set.size());
        (void)srv;
    }
    si.connections = si.shards; // one connection per (server, shard)
    if (shape.size() != o.servers.size())
        fmt::print(stderr, "{}: warning: {} of {} servers answered the stats request\n", program,
                   shape.size(), o.servers.size());
    return evicted_before;
}

/// The keys of one block size, and which of them are stored.
struct key_set {
    std::vector<std::string> keys;
    std::unique_ptr<std::atomic<bool>[]> written;
};

/// Runs one timed cell (writes or reads of `size`) and prints its progress line.
cell measure_cell(memkv::default_client& client, load_generator& gen, const options& o,
                  memkv::op_kind kind, const char* name, std::uint64_t size, key_set& ks) {
    if (!ensure_connected(client, std::chrono::milliseconds(2 * o.timeout_ms + 1000)))
        fmt::print(stderr, "{}: warning: a server is unreachable before the {} {} cell\n", program,
                   name, block_label(size));
    phase_spec spec;
    spec.kind = kind;
    spec.size = size;
    spec.keys = &ks.keys;
    spec.max_ops = std::max<std::uint64_t>(1, o.bytes / size);
    spec.deadline = clock_type::now() + std::chrono::milliseconds(o.duration_ms);
    spec.verify = o.verify;
    if (kind == memkv::op_kind::put) spec.written = ks.written.get();
    auto [counts, seconds] = gen.run(spec);
    cell c;
    c.op = name;
    c.size = size;
    c.key_space = ks.keys.size();
    c.seconds = seconds;
    c.counts = std::move(counts);
    summarise(c);
    fmt::print(stderr,
               "[{:5} {:>7}] {:7.3f} GiB/s {:9.0f} ops/s  {:8} ops in {:.2f} s  "
               "p50 {} us  p99 {} us  p99.9 {} us  max {} us  errors {}{}{}\n",
               name, block_label(size), c.gib_per_s(), c.ops_per_s(), c.counts.ok_ops, c.seconds,
               fmt_us(c.p50_us), fmt_us(c.p99_us), fmt_us(c.p999_us), fmt_us(c.max_us),
               c.counts.errors, c.counts.misses ? fmt::format("  misses {}", c.counts.misses) : "",
               c.counts.verify_failures ? fmt::format("  wrong bytes {}", c.counts.verify_failures)
                                        : "");
    for (const auto& [what, n] : c.counts.error_kinds)
        fmt::print(stderr, "    {} x {}\n", n, what);
    return c;
}

/// Stores, untimed, the keys of `ks` the write cell did not reach (every key read must have
/// been stored); returns the puts that failed.
std::uint64_t store_missing(memkv::default_client& client, load_generator& gen, const options& o,
                            std::uint64_t size, key_set& ks) {
    std::vector<std::uint32_t> missing;
    for (std::uint64_t i = 0; i < ks.keys.size(); ++i)
        if (!ks.written[i].load(std::memory_order_relaxed))
            missing.push_back(static_cast<std::uint32_t>(i));
    if (missing.empty()) return 0;
    fmt::print(stderr, "[{:5} {:>7}] storing {} keys first (not timed)\n", "read",
               block_label(size), missing.size());
    (void)ensure_connected(client, std::chrono::milliseconds(2 * o.timeout_ms + 1000));
    phase_spec spec;
    spec.kind = memkv::op_kind::put;
    spec.size = size;
    spec.keys = &ks.keys;
    spec.list = &missing;
    spec.written = ks.written.get();
    auto [counts, seconds] = gen.run(spec);
    (void)seconds;
    if (!counts.bad()) return 0;
    fmt::print(stderr, "    {} puts failed while storing keys to read\n", counts.bad());
    for (const auto& [what, n] : counts.error_kinds)
        fmt::print(stderr, "    {} x {}\n", n, what);
    return counts.bad();
}

/// The tables: setup, GiB/s per block size, latency and rate per cell. Returns the operations
/// that failed, missed or read wrong bytes (with `populate_errors`).
std::uint64_t print_report(const options& o, const setup_info& si, const std::vector<cell>& cells,
                           std::uint64_t populate_errors, std::uint64_t evicted) {
    auto find = [&](const std::string& op, std::uint64_t size) -> const cell* {
        for (const auto& c : cells)
            if (c.op == op && c.size == size) return &c;
        return nullptr;
    };
    auto yes_no = [](const std::optional<bool>& b) {
        return b ? (*b ? "yes" : "no") : "unknown or mixed";
    };
    fmt::print("\n{} {}: {} server(s) [{}]{}, {} shards, {} TCP connections; {} client threads x "
               "{} in flight; server store O_DIRECT: {}; server bounce buffers hugepage-backed: "
               "{}; {} CPUs{}\n",
               program, MEMKV_VERSION, o.servers.size(), fmt::join(o.servers, ","),
               si.embedded ? " (embedded in this process)" : "", si.shards, si.connections,
               o.threads, o.inflight, yes_no(si.direct_io), yes_no(si.hugepages),
               std::thread::hardware_concurrency(), o.verify ? "; reads verified" : "");
    for (std::size_t i = 0; i < si.info.size(); ++i)
        fmt::print("  server {}: {} shards, {}\n",
                   i < o.servers.size() ? o.servers[i] : fmt::format("#{}", i), si.info[i].shards,
                   si.info[i].describe());
    fmt::print("\n");
    fmt::print("| block | TCP write GiB/s | TCP read GiB/s |\n|---|---|---|\n");
    for (const auto size : o.sizes) {
        auto col = [&](const char* op) {
            const cell* c = find(op, size);
            return c ? fmt::format("{:.2f}", c->gib_per_s()) : std::string("-");
        };
        fmt::print("| {} | {} | {} |\n", block_label(size), col("write"), col("read"));
    }
    fmt::print(
        "\nLatency from submission to completion of each operation (us), operation rate:\n\n");
    fmt::print("| block | op | ops/s | p50 | p99 | p99.9 | max | ops | errors |\n"
               "|---|---|---|---|---|---|---|---|---|\n");
    std::uint64_t bad = populate_errors;
    for (const auto& c : cells) {
        bad += c.counts.bad();
        fmt::print("| {} | {} | {:.0f} | {} | {} | {} | {} | {} | {} |\n", block_label(c.size),
                   c.op, c.ops_per_s(), fmt_us(c.p50_us), fmt_us(c.p99_us), fmt_us(c.p999_us),
                   fmt_us(c.max_us), c.counts.ok_ops, c.counts.bad());
    }
    if (evicted)
        fmt::print(
            "\nThe servers evicted {} entries during the run (capacity too small for the key "
            "space: reads may miss).\n",
            evicted);
    return bad;
}

int run(options o) {
    if (auto rc = servers_from_file(o)) return *rc;
    setup_info si;
    std::optional<memkv::memory_server> embedded;
    if (o.servers.empty())
        if (auto rc = start_embedded(o, si, embedded)) return *rc;
    si.servers = o.servers;

    memkv::client_config ccfg;
    ccfg.servers = o.servers;
    ccfg.request_timeout = std::chrono::milliseconds(o.timeout_ms);
    {
        std::random_device rd;
        ccfg.key_prefix = fmt::format("memkv-bench/{}-{:08x}/", ::getpid(), rd());
    }
    ccfg.max_inflight = std::max<std::size_t>(ccfg.max_inflight, o.threads * o.inflight);
    auto created = memkv::default_client::create(ccfg);
    if (!created) {
        fmt::print(stderr, "{}: error: cannot connect to {}: {}\n", program,
                   fmt::join(o.servers, ","), created.error().message());
        return exit_errors;
    }
    auto& client = *created;
    const auto evicted_before = describe_servers(client, o, si);

    const bool do_write = std::find(o.ops.begin(), o.ops.end(), "write") != o.ops.end();
    const bool do_read = std::find(o.ops.begin(), o.ops.end(), "read") != o.ops.end();
    const std::uint64_t max_size = *std::max_element(o.sizes.begin(), o.sizes.end());
    const std::size_t slots = std::size_t(o.threads) * o.inflight;
    auto mem = slot_memory::create(slots, max_size);
    if (!mem) {
        fmt::print(stderr, "{}: error: cannot map {} client buffers of {}\n", program, slots,
                   block_label(max_size));
        return exit_errors;
    }
    load_generator gen(client, *mem, o.threads, o.inflight);
    fmt::print(
        stderr,
        "{}: {} server(s), {} shards, {} TCP connections; {} threads x {} in flight; "
        "per cell: {}\n",
        program, o.servers.size(), si.shards, si.connections, o.threads, o.inflight,
        o.bytes == std::numeric_limits<std::uint64_t>::max() ? fmt::format("{} ms", o.duration_ms)
        : o.duration_ms >= no_time_limit_ms ? fmt::format("{}", block_label(o.bytes))
                                            : fmt::format("{} or {} ms, whichever comes first",
                                                          block_label(o.bytes), o.duration_ms));

    std::vector<cell> cells;
    std::uint64_t populate_errors = 0;
    for (const auto size : o.sizes) {
        const std::uint64_t key_space =
            o.key_space ? o.key_space
                        : std::max<std::uint64_t>(
                              slots, std::min<std::uint64_t>(4096, (256ull << 20) / size));
        key_set ks{{}, std::make_unique<std::atomic<bool>[]>(key_space)};
        ks.keys.reserve(key_space);
        for (std::uint64_t i = 0; i < key_space; ++i)
            ks.keys.push_back(fmt::format("{}/{}", size, i));
        if (do_write)
            cells.push_back(measure_cell(client, gen, o, memkv::op_kind::put, "write", size, ks));
        if (do_read) {
            populate_errors += store_missing(client, gen, o, size, ks);
            cells.push_back(measure_cell(client, gen, o, memkv::op_kind::get, "read", size, ks));
        }
    }
    // A server that answered before and not now lowers the sum: count no negative evictions.
    const auto evicted_after = server_shape(client).second;
    const auto evicted = evicted_after > evicted_before ? evicted_after - evicted_before : 0;
    const auto bad = print_report(o, si, cells, populate_errors, evicted);
    if (!o.json.empty() && !write_json(o.json, o, si, cells, evicted)) {
        fmt::print(stderr, "{}: error: cannot write {}: {}\n", program, o.json,
                   std::strerror(errno));
        return exit_errors;
    }
    if (bad) {
        fmt::print(stderr, "{}: {} operations failed, missed or read wrong bytes\n", program, bad);
        return exit_errors;
    }
    return exit_ok;
}

} // namespace

/// The options that say what to benchmark: servers (or the embedded one) and block sizes.
void add_target_options(CLI::App& app, options& o) {
    const auto size = CLI::AsSizeValue(false);
    app.add_option("--servers", o.servers,
                   "Servers to benchmark, HOST:PORT or unix:/PATH, comma-separated (default: "
                   "MEMKV_SERVERS, else an embedded server)")
        ->envname("MEMKV_SERVERS")
        ->delimiter(',')
        ->type_name("LIST");
    app.add_option("--servers-file", o.servers_file,
                   "File listing the servers, one HOST:PORT per line, '#' comments (default: "
                   "MEMKV_SERVERS_FILE)")
        ->envname("MEMKV_SERVERS_FILE")
        ->type_name("FILE");
    app.add_option("--shards", o.shards, "Embedded server: shards (one thread each)")
        ->type_name("N")
        ->capture_default_str()
        ->check(CLI::Range(1u, 256u));
    app.add_option("--capacity", o.capacity,
                   "Embedded server: DRAM store size (MAP_NORESERVE: only what is written is used)")
        ->transform(size)
        ->type_name("SIZE")
        ->default_str("4G");
    app.add_option("--sizes", o.sizes, "Block (value) sizes, comma-separated, with K/M suffixes")
        ->delimiter(',')
        ->transform(size)
        ->check(
            CLI::Range(min_size, std::uint64_t{64} << 20).description("each from 16 B to 64 MiB"))
        ->type_name("LIST")
        ->default_str("4K,64K,256K,1M,4M,16M");
}

/// The options that shape the load: operations, threads, depth, keys, timeouts, output. Returns
/// the two cell limits (--duration-ms, --bytes), whose defaults depend on which was given.
std::pair<CLI::Option*, CLI::Option*> add_load_options(CLI::App& app, options& o) {
    const auto size = CLI::AsSizeValue(false);
    app.add_option("--ops", o.ops,
                   "Operations, comma-separated: write, read (read reads the keys written)")
        ->delimiter(',')
        ->check(CLI::IsMember({"write", "read"}))
        ->type_name("LIST")
        ->default_str("write,read");
    app.add_option("--threads", o.threads, "Client threads submitting operations")
        ->type_name("N")
        ->capture_default_str()
        ->check(CLI::Range(1u, 1024u));
    app.add_option("--inflight", o.inflight, "Operations each thread keeps outstanding")
        ->type_name("N")
        ->capture_default_str()
        ->check(CLI::Range(1u, 4096u));
    auto* duration = app.add_option("--duration-ms", o.duration_ms,
                                    "Time per cell (default: 2000, or none "
                                    "if only --bytes is given)")
                         ->type_name("MS")
                         ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{3600000}));
    auto* bytes = app.add_option("--bytes", o.bytes,
                                 "Bytes per cell (default: 1G, or none if only --duration-ms is "
                                 "given); a cell ends at whichever limit comes first")
                      ->transform(size)
                      ->type_name("SIZE");
    app.add_option("--key-space", o.key_space,
                   "Distinct keys per block size (default: max(threads x inflight, min(4096, "
                   "256 MiB / size)))")
        ->type_name("N")
        ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 24));
    app.add_option("--timeout-ms", o.timeout_ms, "Client request timeout")
        ->type_name("MS")
        ->capture_default_str()
        ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{3600000}));
    app.add_option("--json", o.json, "Also write the results as JSON to FILE")->type_name("FILE");
    app.add_flag("--verify", o.verify,
                 "Check what reads return: the first and last 8 bytes of each value encode its key "
                 "index, and its middle byte a fixed pattern");

    return {duration, bytes};
}

int main(int argc, char** argv) {
    CLI::App app{"memkv-bench: end-to-end throughput and latency of memkv over TCP. For each block "
                 "size, writes keys then reads them back, with --threads client threads each "
                 "keeping --inflight operations outstanding through the asynchronous API; prints "
                 "GiB/s per block size and operation, latency percentiles and ops/s.",
                 program};
    app.set_version_flag("--version", std::string(program) + " " + MEMKV_VERSION);
    app.footer("Without --servers (MEMKV_SERVERS) or --servers-file (MEMKV_SERVERS_FILE), an "
               "embedded server (memory store) is started "
               "in this process on 127.0.0.1 with a free port. Authentication: MEMKV_AUTH_KEY "
               "(or MEMKV_AUTH_KEY_FILE), used by the client and by the embedded server.\n"
               "Exit status: 0 all operations succeeded; 1 an operation failed, missed or read "
               "wrong bytes, or setup failed; 2 bad flags.");
    app.get_formatter()->column_width(30);

    options o;
    add_target_options(app, o);
    const auto [duration, bytes] = add_load_options(app, o);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);
        fmt::print(stderr, "{}: error: {}\nRun with --help for more information.\n", program,
                   e.what());
        return exit_usage;
    }
    if (duration->count() && !bytes->count()) o.bytes = std::numeric_limits<std::uint64_t>::max();
    if (bytes->count() && !duration->count())
        o.duration_ms = no_time_limit_ms; // effectively bytes only
    if (o.bytes == 0) {
        fmt::print(stderr, "{}: error: --bytes must not be 0\n", program);
        return exit_usage;
    }
    std::sort(o.ops.begin(), o.ops.end());
    o.ops.erase(std::unique(o.ops.begin(), o.ops.end()), o.ops.end());
    if (o.sizes.empty() || o.ops.empty()) {
        fmt::print(stderr, "{}: error: nothing to do (empty --sizes or --ops)\n", program);
        return exit_usage;
    }
    try {
        return run(std::move(o));
    } catch (const std::exception& e) {
        fmt::print(stderr, "{}: error: {}\n", program, e.what());
        return exit_errors;
    }
}
