// SPDX-License-Identifier: Apache-2.0
// The storage engine through a real server and client, over a persistent in-memory device:
// restarts, crashes, power cuts, eviction, superblock checks, injected faults and corruption.
#include "support/catch.hpp"
#include "support/fault_store.hpp"
#include "support/seed.hpp"
#include "support/server_fixture.hpp"
#include "support/shared_memory_store.hpp"

#include <memkv/memkv.hpp>

#include <map>
#include <optional>

using namespace memkv;
using test::fault_plan;
using test::fault_store;
using test::shared_memory_device;
using test::shared_memory_store;

namespace {

using faulty = fault_store<shared_memory_store>;
using faulty_server = server<tcp_transport, faulty>;

constexpr std::uint64_t device_size = 256ull << 20;

server_config small_config(std::uint32_t shards = 2) {
    server_config c;
    c.listen = {"127.0.0.1:0"};
    c.shards = shards;
    c.limits.max_value = 4u << 20; // regions of 8 MiB: eviction after a few values
    c.buffers_per_shard = 16;
    return c;
}

/// A value that describes itself: key, version, then a pattern; any mix-up shows.
std::vector<std::byte> self_describing(const std::string& key, std::uint64_t version,
                                       std::size_t size) {
    auto v = test::pattern(std::hash<std::string>{}(key) ^ version, size);
    const std::string tag = key + "#" + std::to_string(version) + "#";
    std::memcpy(v.data(), tag.data(), std::min(tag.size(), size));
    return v;
}

/// The version a value describes, or nullopt if it is not exactly what self_describing() makes.
std::optional<std::uint64_t> version_of(const std::string& key, const std::vector<std::byte>& v) {
    const std::string s(reinterpret_cast<const char*>(v.data()),
                        std::min<std::size_t>(v.size(), 64));
    if (s.rfind(key + "#", 0) != 0) return std::nullopt;
    const auto rest = s.substr(key.size() + 1);
    const auto version = std::stoull(rest.substr(0, rest.find('#')));
    if (self_describing(key, version, v.size()) != v) return std::nullopt;
    return version;
}

struct running {
    std::optional<faulty_server> srv;
    std::optional<client<tcp_transport>> cl;
};

running start(std::shared_ptr<shared_memory_device> dev, std::shared_ptr<fault_plan> plan,
              server_config cfg = small_config()) {
    faulty::config fc;
    fc.inner.device = std::move(dev);
    fc.plan = std::move(plan);
    auto s = faulty_server::create(cfg, fc);
    REQUIRE(s);
    REQUIRE(s->start());
    client_config cc;
    cc.servers = {s->endpoints()[0]};
    auto c = client<tcp_transport>::create(cc);
    REQUIRE(c);
    return {std::move(*s), std::move(*c)};
}

std::uint64_t sum(const faulty_server& s, std::atomic<std::uint64_t> shard_counters::*f) {
    std::uint64_t n = 0;
    for (std::uint32_t i = 0; i < s.shard_count(); ++i)
        n += (s.counters(i).*f).load();
    return n;
}

/// Device offsets of every block that starts with the record magic.
std::vector<std::uint64_t> record_headers(const shared_memory_device& dev) {
    std::vector<std::uint64_t> out;
    for (std::uint64_t off = storage::data_offset; off < device_size; off += storage::meta_block) {
        std::uint32_t magic;
        std::memcpy(&magic, dev.data + off, 4);
        if (magic == storage::record_magic) out.push_back(off);
    }
    return out;
}

/// Zeroes every region trailer (small_config's 8 MiB regions): recovery must scan, as after a
/// crash.
void wipe_trailers(shared_memory_device& dev) {
    for (std::uint64_t r = storage::data_offset; r + (8u << 20) <= device_size; r += 8u << 20)
        std::memset(dev.data + r + (8u << 20) - storage::meta_block, 0, storage::meta_block);
}

/// Key -> the version last acknowledged for it; nullopt: deleted.
using version_model = std::map<std::string, std::optional<std::uint64_t>>;

/// Every key of `model` reads back at its version, or misses if it was deleted.
void check_model(running& r, const version_model& model) {
    for (const auto& [key, version] : model) {
        auto g = r.cl->get(key);
        REQUIRE(g);
        if (!version) {
            CHECK_FALSE(*g);
            continue;
        }
        REQUIRE(*g);
        CHECK(version_of(key, **g) == version);
    }
}

} // namespace

TEST_CASE("values survive a clean restart exactly, deletes stay deleted", "[storage][restart]") {
    auto dev = std::make_shared<shared_memory_device>(device_size);
    auto plan = std::make_shared<fault_plan>(test::seed());
    version_model model;
    {
        auto r = start(dev, plan);
        auto rng = test::rng(1);
        for (std::uint64_t v = 1; v <= 120; ++v) {
            const auto key = "key-" + std::to_string(rng() % 40);
            const std::size_t size =
                std::vector<std::size_t>{64, 100, 4096, 300000, 1u << 20}[rng() % 5];
            if (rng() % 6 == 0 && model.count(key) && model[key]) {
                auto d = r.cl->del(key);
                REQUIRE(d);
                REQUIRE(*d);
                model[key] = std::nullopt;
            } else {
                REQUIRE(r.cl->put(key, self_describing(key, v, size)));
                model[key] = v;
            }
        }
        r.cl.reset();
        r.srv->stop();
    }
    auto r = start(dev, plan);
    CHECK(r.srv->recovered().regions_summarised > 0); // clean shutdown sealed the open regions
    CHECK(r.srv->recovered().corrupt_records == 0);
    check_model(r, model);
}

TEST_CASE("after a crash every acknowledged put is found at its version and deletes stay gone",
          "[storage][crash]") {
    auto dev = std::make_shared<shared_memory_device>(device_size);
    auto plan = std::make_shared<fault_plan>(test::seed());
    plan->keep_unflushed = true; // a process crash: what the kernel accepted survives
    version_model model;
    {
        auto r = start(dev, plan);
        auto rng = test::rng(2);
        for (std::uint64_t v = 1; v <= 150; ++v) {
            const auto key = "k" + std::to_string(rng() % 50);
            if (rng() % 5 == 0 && model.count(key) && model[key]) {
                auto d = r.cl->del(key);
                REQUIRE(d);
                REQUIRE(*d);
                model[key] = std::nullopt;
            } else {
                REQUIRE(r.cl->put(key, self_describing(key, v, 4096 + rng() % 200000)));
                model[key] = v;
            }
        }
        plan->power_lost = true; // nothing from here on reaches the device: no clean shutdown
        r.cl.reset();
        r.srv->stop();
    }
    plan->power_lost = false;
    {
        auto r = start(dev, plan);
        CHECK(r.srv->recovered().regions_scanned > 0);
        check_model(r, model);
        r.cl.reset();
        r.srv->stop(); // a clean shutdown summarises the regions the crash left unsummarised
    }
    auto r = start(dev, plan);
    CHECK(r.srv->recovered().regions_scanned == 0);
    CHECK(r.srv->recovered().regions_summarised > 0);
    check_model(r, model);
}

TEST_CASE("after a power cut flushed state survives exactly and the rest is old, new or absent",
          "[storage][power]") {
    for (std::uint64_t round = 0; round < 5; ++round) {
        auto dev = std::make_shared<shared_memory_device>(device_size);
        auto plan = std::make_shared<fault_plan>(test::seed() + round);
        // Per key: every acknowledged version in order, whether it was durable, and deletes.
        struct op {
            std::optional<std::uint64_t> version; // nullopt = delete (always flushed)
            bool durable;
        };
        std::map<std::string, std::vector<op>> history;
        {
            auto r = start(dev, plan);
            auto rng = test::rng(3 + round);
            for (std::uint64_t v = 1; v <= 100; ++v) {
                const auto key = "p" + std::to_string(rng() % 30);
                auto& h = history[key];
                if (rng() % 6 == 0 && !h.empty() && h.back().version) {
                    auto d = r.cl->del(key);
                    REQUIRE(d);
                    REQUIRE(*d);
                    h.push_back({std::nullopt, true});
                } else {
                    const bool durable = rng() % 3 == 0;
                    REQUIRE(r.cl->put(key, self_describing(key, v, 4096 + rng() % 100000),
                                      {.durable = durable}));
                    h.push_back({v, durable});
                }
            }
            plan->power_lost = true;
            r.cl.reset();
            r.srv->stop();
        }
        plan->power_lost = false;
        auto r = start(dev, plan);
        INFO("round " << round << " dropped " << plan->writes_dropped << " torn "
                      << plan->writes_torn << " kept " << plan->writes_kept);
        for (const auto& [key, h] : history) {
            INFO("key " << key);
            // The last durable operation (flushed) and everything after it are the candidates.
            std::size_t last_durable = h.size();
            for (std::size_t i = h.size(); i-- > 0;)
                if (h[i].durable) {
                    last_durable = i;
                    break;
                }
            auto g = r.cl->get(key);
            REQUIRE(g);
            if (!*g) {
                // A miss is allowed only if the flushed state is a delete or nothing was
                // flushed: an unflushed later put that was lost or torn (even with its header
                // on the drive) leaves the flushed version in place.
                const bool ok = last_durable == h.size() || !h[last_durable].version;
                CHECK(ok);
                continue;
            }
            const auto v = version_of(key, **g);
            REQUIRE(v); // never garbage, never another key's bytes
            bool allowed = false;
            const std::size_t from = last_durable == h.size() ? 0 : last_durable;
            for (std::size_t i = from; i < h.size(); ++i)
                if (h[i].version == v) allowed = true;
            CHECK(allowed);
        }
    }
}

TEST_CASE("filling past capacity evicts whole regions without errors for the writer",
          "[storage][eviction]") {
    auto dev = std::make_shared<shared_memory_device>(64ull << 20);
    auto plan = std::make_shared<fault_plan>(test::seed());
    plan->trim_noop = true; // real NVMe need not zero trimmed blocks: nothing may rely on it
    auto r = start(dev, plan);
    const int n = 120; // 120 MiB of values into 2 x 31 MiB of regions
    for (int i = 0; i < n; ++i) {
        const auto key = "fill-" + std::to_string(i);
        REQUIRE(r.cl->put(key, self_describing(key, 1, 1u << 20)));
    }
    CHECK(sum(*r.srv, &shard_counters::evicted_regions) > 0);
    int hits = 0;
    for (int i = 0; i < n; ++i) {
        const auto key = "fill-" + std::to_string(i);
        auto g = r.cl->get(key);
        REQUIRE(g); // a hit or a miss, never an error
        if (*g) {
            ++hits;
            CHECK(version_of(key, **g) == 1u);
        }
    }
    CHECK(hits > 0);
    CHECK(hits < n);
    // The newest values are the ones kept (FIFO).
    auto newest = r.cl->get("fill-" + std::to_string(n - 1));
    REQUIRE(newest);
    CHECK(*newest);
    // And after a restart the evicted ones stay evicted although TRIM zeroed nothing.
    r.cl.reset();
    r.srv->stop();
    auto again = start(dev, plan);
    int hits_after = 0;
    for (int i = 0; i < n; ++i) {
        const auto key = "fill-" + std::to_string(i);
        if (auto g = again.cl->get(key); g && *g) {
            ++hits_after;
            CHECK(version_of(key, **g) == 1u);
        }
    }
    CHECK(hits_after == hits);
}

TEST_CASE("a store formatted for another shard count is refused unless resharded",
          "[storage][superblock]") {
    auto dev = std::make_shared<shared_memory_device>(device_size);
    auto plan = std::make_shared<fault_plan>(test::seed());
    {
        auto r = start(dev, plan);
        REQUIRE(r.cl->put("x", self_describing("x", 1, 100)));
        r.cl.reset();
        r.srv->stop();
    }
    faulty::config fc{{dev}, plan};
    auto three = small_config(3);
    CHECK(faulty_server::create(three, fc).error() == make_error_code(errc::rejected));
    three.reshard = true;
    auto s = faulty_server::create(three, fc);
    REQUIRE(s);
    CHECK(s->recovered().entries == 0);
}

TEST_CASE("a damaged superblock is refused unless wiping is allowed", "[storage][superblock]") {
    auto dev = std::make_shared<shared_memory_device>(device_size);
    auto plan = std::make_shared<fault_plan>(test::seed());
    {
        auto r = start(dev, plan);
        r.cl.reset();
        r.srv->stop();
    }
    dev->data[100] ^= std::byte{1};                       // copy A
    dev->data[storage::meta_block + 100] ^= std::byte{1}; // copy B
    faulty::config fc{{dev}, plan};
    auto cfg = small_config();
    CHECK(faulty_server::create(cfg, fc).error() == make_error_code(errc::rejected));
    cfg.wipe_on_incompatible = true;
    CHECK(faulty_server::create(cfg, fc));
}

TEST_CASE("one damaged superblock copy is survived with the other", "[storage][superblock]") {
    auto dev = std::make_shared<shared_memory_device>(device_size);
    auto plan = std::make_shared<fault_plan>(test::seed());
    {
        auto r = start(dev, plan);
        REQUIRE(r.cl->put("kept", self_describing("kept", 7, 5000)));
        r.cl.reset();
        r.srv->stop();
    }
    std::memset(dev->data, 0xff, 512); // copy A ruined
    auto r = start(dev, plan);
    auto g = r.cl->get("kept");
    REQUIRE(g);
    REQUIRE(*g);
    CHECK(version_of("kept", **g) == 7u);
}

TEST_CASE("under injected I/O faults a get returns the right bytes, a miss or an error",
          "[storage][faults]") {
    auto dev = std::make_shared<shared_memory_device>(device_size);
    auto plan = std::make_shared<fault_plan>(test::seed());
    auto r = start(dev, plan); // faults start after the store is formatted
    plan->read_eio = 0.05;
    plan->write_eio = 0.05;
    plan->short_io = 0.05;
    plan->write_enospc = 0.03;
    plan->misdirect = 0.03;
    plan->corrupt_write = 0.05;
    plan->corrupt_read = 0.05;
    std::map<std::string, std::uint64_t> acked;
    auto rng = test::rng(4);
    int put_errors = 0;
    for (std::uint64_t v = 1; v <= 300; ++v) {
        const auto key = "f" + std::to_string(rng() % 60);
        if (r.cl->put(key, self_describing(key, v, 4096 + rng() % 600000)))
            acked[key] = v;
        else
            ++put_errors;
    }
    CHECK(put_errors > 0); // the faults did happen
    int right = 0, misses = 0, errors = 0;
    for (const auto& [key, v] : acked) {
        auto g = r.cl->get(key);
        if (g && *g) {
            const auto got = version_of(key, **g);
            REQUIRE(got); // never garbage or another key's value
            CHECK(*got <= v);
            ++right;
        } else if (g) {
            ++misses;
        } else {
            ++errors;
        }
    }
    INFO("right " << right << " misses " << misses << " errors " << errors);
    CHECK(right > 0);
    CHECK(plan->injected > 0);
}

TEST_CASE("damaged records are counted misses and the server still starts",
          "[storage][corruption]") {
    // Twice: recovering from region summaries (clean shutdown), and by scanning the regions
    // (the trailers wiped, as after a crash).
    for (const bool scan : {false, true}) {
        INFO((scan ? "scanning recovery" : "summary recovery"));
        auto dev = std::make_shared<shared_memory_device>(device_size);
        auto plan = std::make_shared<fault_plan>(test::seed());
        std::vector<std::string> keys;
        {
            auto r = start(dev, plan, small_config(1));
            for (int i = 0; i < 40; ++i) {
                keys.push_back("c" + std::to_string(i));
                REQUIRE(r.cl->put(keys.back(), self_describing(keys.back(), 1, 64 << 10)));
            }
            // An overwrite: the old record stays on the drive, the new one is current.
            REQUIRE(r.cl->put("c0", self_describing("c0", 2, 64 << 10)));
            r.cl.reset();
            r.srv->stop();
        }
        // Find the record headers by their magic and damage some records in every way.
        const auto headers = record_headers(*dev);
        REQUIRE(headers.size() >= 41);
        const std::uint64_t value = storage::meta_block, len = 64 << 10;
        dev->data[headers[1] + value + 100] ^= std::byte{0x40};                   // flipped byte
        std::memset(dev->data + headers[2] + value, 0, 4096);                     // zeroed sector
        std::memset(dev->data + headers[3], 0, 512);                              // zeroed header
        std::memcpy(dev->data + headers[5], dev->data + headers[4], value + len); // a record
        // copied to another key's place
        std::memcpy(dev->data + headers[7], dev->data + headers[0], value + len); // an old
        // version (c0 v1) copied over a newer record
        if (scan) wipe_trailers(*dev); // recovery must scan
        auto r = start(dev, plan, small_config(1));
        int misses = 0, hits = 0;
        for (const auto& key : keys) {
            auto g = r.cl->get(key);
            if (!g || !*g) {
                // A miss, or the checksum error of a damaged value.
                CHECK((g.has_value() || g.error() == make_error_code(errc::checksum)));
                ++misses;
                continue;
            }
            ++hits;
            REQUIRE(version_of(key, **g)); // never another key's bytes, never garbage
        }
        // c1, c2 (value damage), c4's copy at c5's place, c0 v1's copy at c7's place; with a
        // scan also c3, whose header is gone (with summaries its intact value is still served).
        CHECK(misses >= (scan ? 4 : 3));
        CHECK(hits >= 30);
        const auto counted =
            sum(*r.srv, &shard_counters::corrupt_records) + r.srv->recovered().corrupt_records;
        CHECK(counted >= 2);
        auto c0 = r.cl->get("c0");
        REQUIRE(c0);
        REQUIRE(*c0);
        CHECK(version_of("c0", **c0) == 2u); // the newer version, not the copied old one
    }
}

TEST_CASE("a record whose header landed without its value is skipped and the older version wins",
          "[storage][recovery]") {
    // A put writes its header beside its value: a crash can leave the header without the
    // value. Recovery checks the value's chunk CRCs and must keep serving the older version.
    auto dev = std::make_shared<shared_memory_device>(device_size);
    auto plan = std::make_shared<fault_plan>(test::seed());
    const std::uint64_t len = 600 << 10; // three CRC chunks
    {
        auto r = start(dev, plan, small_config(1));
        REQUIRE(r.cl->put("k", self_describing("k", 1, len)));
        REQUIRE(r.cl->put("k", self_describing("k", 2, len)));
        r.cl.reset();
        r.srv->stop();
    }
    const auto headers = record_headers(*dev);
    REQUIRE(headers.size() == 2);
    // Version 2's last chunk never landed: what the region held before (zeros here).
    std::memset(dev->data + headers[1] + storage::meta_block + (512 << 10), 0, 64 << 10);
    wipe_trailers(*dev);
    auto r = start(dev, plan, small_config(1));
    CHECK(r.srv->recovered().corrupt_records == 1);
    auto g = r.cl->get("k");
    REQUIRE(g);
    REQUIRE(*g);
    CHECK(version_of("k", **g) == 1u);
}

TEST_CASE("a put answered with an error is not found after a crash, even if its writes landed",
          "[storage][crash]") {
    // A write that lands but reports an error: the put fails, and since its header went out
    // beside its value, the server must zero the header before answering.
    auto dev = std::make_shared<shared_memory_device>(device_size);
    auto plan = std::make_shared<fault_plan>(test::seed());
    plan->keep_unflushed = true; // a process crash
    std::map<std::string, std::uint64_t> expect;
    int failed = 0;
    {
        auto r = start(dev, plan);
        for (int i = 0; i < 30; ++i) {
            const auto key = "e" + std::to_string(i);
            REQUIRE(r.cl->put(key, self_describing(key, 1, 300 << 10)));
            expect[key] = 1;
        }
        plan->write_landed_eio = 0.3;
        for (int i = 0; i < 30; ++i) {
            const auto key = "e" + std::to_string(i);
            if (r.cl->put(key, self_describing(key, 2, 300 << 10)))
                expect[key] = 2;
            else
                ++failed;
        }
        plan->write_landed_eio = 0;
        plan->power_lost = true; // no clean shutdown: the next start scans
        r.cl.reset();
        r.srv->stop();
    }
    REQUIRE(failed > 0);
    plan->power_lost = false;
    auto r = start(dev, plan);
    CHECK(r.srv->recovered().regions_scanned > 0);
    for (const auto& [key, version] : expect) {
        INFO("key " << key);
        auto g = r.cl->get(key);
        REQUIRE(g);
        REQUIRE(*g);
        CHECK(version_of(key, **g) == version);
    }
}
