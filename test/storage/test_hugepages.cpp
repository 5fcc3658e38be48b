// SPDX-License-Identifier: Apache-2.0
// Hugepage-backed bounce buffers: with hugepages reserved through /proc/sys/vm/nr_hugepages
// (root) a server's buffers are on hugepages (server::hugepages(), and the kernel's free count
// drops by what the pools took); with none reserved (nr_hugepages and nr_overcommit_hugepages
// 0) they are on normal pages. Either way values round-trip. Both settings are restored on
// every exit from a test, failures included. Skipped (77) where they cannot be changed or the
// kernel reserves too few pages.
#include "support/skip.hpp"
#include "storage/store_kinds.hpp"
#include "support/catch.hpp"
#include "support/integration.hpp"
#include "support/server_fixture.hpp"

#include <memkv/memkv.hpp>
#include <memkv/storage/format.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>

using memkv::test::file_kind;
using memkv::test::mismatch;
using memkv::test::pattern;

namespace {

constexpr std::uint64_t MiB = 1024 * 1024;
constexpr const char* nr_hugepages = "/proc/sys/vm/nr_hugepages";
constexpr const char* nr_overcommit = "/proc/sys/vm/nr_overcommit_hugepages";

std::optional<long> read_number(const std::string& path) {
    std::ifstream in(path);
    long v = 0;
    if (!(in >> v)) return std::nullopt;
    return v;
}

bool write_number(const std::string& path, long v) {
    std::ofstream out(path);
    out << v << '\n';
    out.flush();
    return static_cast<bool>(out);
}

/// A field of /proc/meminfo ("HugePages_Free", "Hugepagesize" in kB), if present.
std::optional<long> meminfo(const std::string& field) {
    std::ifstream in("/proc/meminfo");
    std::string name;
    long v = 0;
    while (in >> name >> v) {
        if (name == field + ":") return v;
        in.ignore(256, '\n');
    }
    return std::nullopt;
}

/// A /proc/sys setting changed for the duration of a test and restored on destruction, however
/// the test ends (a failed REQUIRE throws through it).
class sysctl_guard {
public:
    explicit sysctl_guard(std::string path) : path_(std::move(path)), old_(read_number(path_)) {}
    sysctl_guard(const sysctl_guard&) = delete;
    sysctl_guard& operator=(const sysctl_guard&) = delete;
    ~sysctl_guard() {
        if (old_ && changed_ && !write_number(path_, *old_))
            std::fprintf(stderr, "could not restore %s to %ld\n", path_.c_str(), *old_);
    }
    std::optional<long> old() const { return old_; }
    /// Writes `v`; returns what the kernel then reports (it may reserve fewer hugepages).
    std::optional<long> set(long v) {
        changed_ = true;
        if (!write_number(path_, v)) return std::nullopt;
        return read_number(path_);
    }

private:
    std::string path_;
    std::optional<long> old_;
    bool changed_ = false;
};

/// Why hugepages cannot be changed here, or "".
std::string cannot_change_hugepages() {
    if (::geteuid() != 0) return "changing /proc/sys/vm/nr_hugepages needs root";
    if (::access(nr_hugepages, W_OK) != 0 || ::access(nr_overcommit, W_OK) != 0)
        return "/proc/sys/vm/nr_hugepages is not writable here";
    if (!meminfo("Hugepagesize") || !meminfo("HugePages_Free"))
        return "the kernel reports no hugepages (no hugetlbfs support)";
    return {};
}

/// 2 shards of 8 one-MiB buffers (16 MiB of pools), 1 MiB values, 2 MiB regions.
constexpr std::uint32_t shards = 2;
constexpr std::size_t buffers = 8;
memkv::server_config config() {
    auto c = memkv::test::make_config(shards);
    c.buffers_per_shard = buffers;
    c.limits.max_value = 1 * MiB;
    c.region_size = 2 * MiB;
    return c;
}
constexpr std::uint64_t capacity = memkv::storage::data_offset + shards * 2 * 2 * MiB;

/// A file server over a fresh file, started, and a client of it.
struct started {
    std::string why;
    std::optional<file_kind> kind = file_kind::make(capacity, why);
    std::optional<memkv::file_server> server;
    std::optional<memkv::default_client> client;

    started() {
        INFO(why);
        REQUIRE(kind);
        auto s = memkv::file_server::create(config(), kind->store_config());
        INFO("file_server::create: " << (s ? "ok" : s.error().message()));
        REQUIRE(s);
        server = std::move(*s);
        REQUIRE(server->start());
        memkv::client_config cc;
        cc.servers = {server->endpoints()[0]};
        auto c = memkv::default_client::create(std::move(cc));
        REQUIRE(c);
        client = std::move(*c);
    }
    ~started() {
        client.reset();
        server.reset();
    }
    /// Values through the bounce buffers, both ways, byte for byte.
    void round_trip() {
        for (const std::size_t size :
             {std::size_t(4096), std::size_t(1 * MiB), std::size_t(777'777)}) {
            const auto key = "huge-" + std::to_string(size);
            const auto value = pattern(size, size);
            REQUIRE(client->put(key, value));
            auto got = client->get(key);
            REQUIRE(got);
            REQUIRE(*got);
            CHECK(mismatch(**got, value) == "");
        }
    }
};

} // namespace

TEST_CASE("with hugepages reserved, a server's bounce buffers are hugepage-backed",
          "[storage][hugepages]") {
    if (auto why = cannot_change_hugepages(); !why.empty()) MEMKV_SKIP(why);
    const long page_kb = *meminfo("Hugepagesize");
    const long pool_pages =
        static_cast<long>((buffers * (MiB + memkv::storage::meta_block) + page_kb * 1024 - 1) /
                          (page_kb * 1024)); // per shard (each buffer has a header's headroom)
    const long need = shards * pool_pages;
    sysctl_guard reserved(nr_hugepages);
    REQUIRE(reserved.old());
    const auto got = reserved.set(*reserved.old() + need + 2);
    const long free_before = meminfo("HugePages_Free").value_or(0);
    if (!got || free_before < need)
        MEMKV_SKIP("the kernel reserved " + std::to_string(got.value_or(0)) + " hugepages (" +
                   std::to_string(free_before) + " free); " + std::to_string(need) + " are needed");
    {
        started s;
        CHECK(s.server->hugepages());
        // The pools really took hugepages from the reserve.
        const long free_during = meminfo("HugePages_Free").value_or(0);
        std::fprintf(stderr, "%ld hugepages of %ld kB reserved, %ld free; %ld with the server up\n",
                     *got, page_kb, free_before, free_during);
        CHECK(free_during <= free_before - need);
        s.round_trip();
    }
    // They go back when the server is gone: the pools are unmapped at once, but pages pinned as
    // io_uring fixed buffers are released by the kernel's asynchronous ring teardown.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (meminfo("HugePages_Free").value_or(0) != free_before &&
           std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    CHECK(meminfo("HugePages_Free").value_or(0) == free_before);
}

TEST_CASE("without hugepages, a server's bounce buffers are on normal pages",
          "[storage][hugepages]") {
    if (auto why = cannot_change_hugepages(); !why.empty()) MEMKV_SKIP(why);
    sysctl_guard reserved(nr_hugepages);
    sysctl_guard overcommit(nr_overcommit); // surplus hugepages would be allocated on demand
    REQUIRE(reserved.old());
    REQUIRE(overcommit.old());
    REQUIRE(overcommit.set(0) == 0);
    REQUIRE(reserved.set(0) == 0);
    if (meminfo("HugePages_Free").value_or(0) != 0)
        MEMKV_SKIP("hugepages stay free with nr_hugepages 0 (in use elsewhere?)");
    started s;
    CHECK_FALSE(s.server->hugepages());
    s.round_trip();
}
