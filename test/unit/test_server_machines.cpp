// SPDX-License-Identifier: Apache-2.0
// The server's record-write (PUT/DEL) and value-read (GET) machines driven directly, without
// sockets: over a memory store and a scripted one-sided data path whose transfers the test
// completes in any order, plus the inline (TCP) path for a refused PUT's value.
#include "support/catch.hpp"
#include "support/integration.hpp"
#include "support/server_fixture.hpp"

#include <memkv/detail/inline_data_path.hpp>
#include <memkv/detail/server/completion_router.hpp>
#include <memkv/detail/server/op_host.hpp>
#include <memkv/detail/server/record_write.hpp>
#include <memkv/detail/server/store_meta_submitter.hpp>
#include <memkv/detail/server/store_sync_io.hpp>
#include <memkv/detail/server/value_read.hpp>
#include <memkv/store/memory_store.hpp>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <vector>

using namespace memkv;
using namespace memkv::detail::server;
using protocol::opcode;

namespace {

constexpr std::uint64_t MiB = 1u << 20;

/// A one-sided data path the test drives, as shm or RDMA would move bytes: pulls copy from the
/// client's value into pool buffers, pushes from pool buffers into the client's memory, each
/// only when the test completes it, in whatever order it chooses.
struct scripted_path {
    static constexpr bool reply_rides_payload = false;
    static constexpr bool pulls_on_demand = false;
    struct transfer {
        protocol::payload_ref ref;
        std::span<std::byte> dst;       // pull
        std::span<const std::byte> src; // push
        std::uint64_t tag = 0;
        bool pull = false;
    };

    result<void> pull(const protocol::payload_ref& ref, std::span<std::byte> dst,
                      std::uint64_t tag) {
        if (fenced) return errc::closed;
        pending.push_back({ref, dst, {}, tag, true});
        return {};
    }
    result<void> push(std::span<const std::byte> src, const protocol::payload_ref& ref,
                      std::uint64_t tag) {
        if (fenced) return errc::closed;
        pending.push_back({ref, {}, src, tag, false});
        return {};
    }
    void skip(const protocol::payload_ref& ref) { skipped.push_back(ref); }
    std::size_t poll(std::span<io_completion> out) {
        const auto n = std::min(out.size(), done.size());
        std::copy_n(done.begin(), n, out.begin());
        done.erase(done.begin(), done.begin() + static_cast<std::ptrdiff_t>(n));
        return n;
    }
    void fence() noexcept {
        fenced = true;
        for (const auto& t : pending)
            done.push_back({t.tag, -ECANCELED});
        pending.clear();
    }
    std::size_t bytes_in_flight() const noexcept { return 0; }

    /// Moves the bytes of pending transfer `i` and completes it.
    void complete(std::size_t i) {
        auto t = pending.at(i);
        pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(i));
        if (t.pull) {
            std::memcpy(t.dst.data(), client_value.data() + t.ref.offset, t.ref.length);
        } else {
            if (client_memory.size() < t.ref.transfer_len) client_memory.resize(t.ref.transfer_len);
            std::memcpy(client_memory.data() + t.ref.offset, t.src.data(), t.src.size());
        }
        done.push_back({t.tag, static_cast<std::int64_t>(t.ref.length)});
    }
    /// Completes every pending transfer, newest first.
    void complete_all_reversed() {
        while (!pending.empty())
            complete(pending.size() - 1);
    }

    std::vector<transfer> pending;
    std::vector<io_completion> done;
    std::vector<protocol::payload_ref> skipped;
    std::vector<std::byte> client_value;  // what PUTs pull
    std::vector<std::byte> client_memory; // where GETs push
    bool fenced = false;
};
static_assert(data_path<scripted_path>);

/// The connection side of the machines: forwards payload calls to a path, records replies.
template <class Path>
struct test_host final : op_host {
    explicit test_host(Path& p) : path(p) {}
    struct answer {
        opcode op;
        std::uint64_t id;
        std::error_code status;
    };

    result<void> pull(const protocol::payload_ref& r, std::span<std::byte> d,
                      std::uint64_t t) override {
        return path.pull(r, d, t);
    }
    result<void> push(std::span<const std::byte> s, const protocol::payload_ref& r,
                      std::uint64_t t) override {
        return path.push(s, r, t);
    }
    void skip(const protocol::payload_ref& r) override { path.skip(r); }
    bool reply_rides_payload() const noexcept override { return Path::reply_rides_payload; }
    bool pulls_on_demand() const noexcept override { return Path::pulls_on_demand; }
    void reply(opcode op, std::uint64_t id, std::error_code st) override {
        answers.push_back({op, id, st});
    }
    void announce_get(const get_reply& r) override { heads.push_back(r); }
    void reply_get(const get_reply& r) override {
        heads.push_back(r);
        answers.push_back({opcode::get, r.id, {}});
    }
    void fail_get(std::uint64_t id, std::error_code st, std::uint64_t, bool) override {
        answers.push_back({opcode::get, id, st});
    }
    void answered(std::uint64_t) override {}
    bool may_hold_buffer() const noexcept override { return true; }
    void held_buffers(int delta) noexcept override { held += delta; }
    void op_done(std::uint64_t id) override { finished.insert(id); }

    Path& path;
    std::vector<answer> answers;
    std::vector<get_reply> heads;
    long held = 0;
    std::set<std::uint64_t> finished;
};

/// A memory store whose writes at one offset fail (-EIO, nothing written), and which logs the
/// offset and first byte of every write it takes.
class failing_store : public memory_store {
public:
    struct config : memory_store::config {};
    static result<failing_store> create(const config& c) {
        auto m = memory_store::create(c);
        if (!m) return m.error();
        return failing_store(std::move(*m));
    }
    result<void> write(std::uint64_t offset, std::span<const std::byte> buf,
                       std::uint64_t tag) noexcept {
        log.push_back({offset, buf.empty() ? std::byte{0} : buf[0]});
        if (offset != fail_at) return memory_store::write(offset, buf, tag);
        complete(tag, static_cast<std::uint64_t>(-EIO));
        return {};
    }
    std::uint64_t fail_at = ~0ull;
    std::vector<std::pair<std::uint64_t, std::byte>> log;

private:
    explicit failing_store(memory_store m) : memory_store(std::move(m)) {}
};
static_assert(store<failing_store>);

/// A memory store that holds back the completion of a write at one offset until released (the
/// write itself lands at once).
class holding_store : public memory_store {
public:
    struct config : memory_store::config {};
    static result<holding_store> create(const config& c) {
        auto m = memory_store::create(c);
        if (!m) return m.error();
        return holding_store(std::move(*m));
    }
    result<void> write(std::uint64_t offset, std::span<const std::byte> buf,
                       std::uint64_t tag) noexcept {
        if (offset != hold_at) return memory_store::write(offset, buf, tag);
        std::memcpy(base() + offset, buf.data(), buf.size());
        held.push_back({tag, static_cast<std::int64_t>(buf.size())});
        return {};
    }
    std::size_t poll(std::span<io_completion> out) noexcept {
        std::size_t n = 0;
        for (; n < out.size() && release && !held.empty(); ++n) {
            out[n] = held.front();
            held.erase(held.begin());
        }
        return n + memory_store::poll(out.subspan(n));
    }
    std::uint64_t hold_at = ~0ull;
    bool release = false;
    std::vector<io_completion> held;

private:
    explicit holding_store(memory_store m) : memory_store(std::move(m)) {}
};
static_assert(store<holding_store>);

/// Everything a shard lends its operations, over a fresh store of 64 MiB (regions of 8 MiB).
template <store Store>
struct shard_parts {
    explicit shard_parts(typename Store::config sc = {})
        : store(make_store(std::move(sc))), engine(make_engine(store, meta)),
          pool(std::move(*detail::buffer_pool::create({MiB, 16, false, storage::meta_block}))) {}

    static Store make_store(typename Store::config sc) {
        sc.capacity = 64 * MiB;
        return std::move(*Store::create(sc));
    }
    static storage::engine make_engine(Store& s, storage::meta_submitter& io) {
        storage::engine::config ec;
        ec.length = s.capacity();
        ec.region_size = 8 * MiB;
        ec.max_value = 4 * MiB;
        ec.io = &io;
        auto e = storage::engine::create(ec);
        REQUIRE(e);
        store_sync_io<Store> sync(s);
        REQUIRE(e->recover(sync));
        return std::move(*e);
    }

    /// Routes every completion the store and `path` have, retrying waiters, until none is left.
    template <class Path>
    void pump(Path& path) {
        for (;;) {
            io_completion c[64];
            bool progressed = false;
            const auto n = store.poll(c);
            for (std::size_t i = 0; i < n; ++i)
                progressed |= route_completion(tags, engine, c[i]);
            const auto m = path.poll(c);
            for (std::size_t i = 0; i < m; ++i)
                progressed |= route_completion(tags, engine, c[i]);
            const bool retry = (progressed || services.buffers_returned) && !waiters.empty();
            services.buffers_returned = false;
            if (retry) waiters.retry_all();
            if (n == 0 && m == 0 && !retry) return;
        }
    }

    /// No reservation, pin, buffer or I/O is left behind.
    void check_nothing_held() const {
        for (std::uint32_t r = 0; r < 8; ++r) {
            INFO("region " << r);
            CHECK(engine.writers(r) == 0);
            CHECK(engine.pins(r) == 0);
        }
        CHECK(pool.available() == pool.capacity());
        CHECK(tags.empty());
    }

    server_config cfg;
    Store store;
    io_tags<Store> tags;
    store_meta_submitter<Store> meta{store, tags};
    storage::engine engine;
    detail::buffer_pool pool;
    shard_counters counters;
    wait_list waiters;
    shard_services<Store> services{cfg, store, engine, pool, tags, counters, waiters};
};

storage::record_info put_info(const std::string& key, std::uint64_t len) {
    storage::record_info i;
    i.tenant = "default";
    i.key = key;
    i.value_len = len;
    return i;
}

std::string ikey(const std::string& key) {
    return storage::index_key("default", std::as_bytes(std::span(key.data(), key.size())));
}

template <store Store, class Path>
std::shared_ptr<record_write<Store>> start_put(shard_parts<Store>& s, test_host<Path>& h,
                                               std::uint64_t id, const std::string& key,
                                               std::uint64_t len, std::uint16_t flags = 0) {
    auto op = std::make_shared<record_write<Store>>(s.services, h, id, opcode::put,
                                                    put_info(key, len), flags);
    op->start();
    s.pump(h.path);
    return op;
}

template <store Store, class Path>
std::shared_ptr<value_read<Store>> start_get(shard_parts<Store>& s, test_host<Path>& h,
                                             std::uint64_t id, const std::string& key) {
    const auto* e = s.engine.find(ikey(key));
    REQUIRE(e);
    auto op =
        std::make_shared<value_read<Store>>(s.services, h, id, *e, ikey(key), 0, e->value_len);
    op->start();
    s.pump(h.path);
    return op;
}

} // namespace

TEST_CASE("A PUT whose pieces arrive out of order is stored whole and read back through pushes "
          "completed out of order",
          "[unit][server][record_write][value_read]") {
    shard_parts<memory_store> s;
    scripted_path path;
    test_host host(path);
    path.client_value = test::pattern(11, 3 * MiB + 1000); // four pieces
    start_put(s, host, 1, "k", path.client_value.size());
    // Two pieces are pulled at a time; complete the later of each pair first.
    REQUIRE(path.pending.size() == 2);
    while (!path.pending.empty()) {
        path.complete_all_reversed();
        s.pump(path);
    }
    REQUIRE(host.answers.size() == 1);
    CHECK(host.answers[0].op == opcode::put);
    CHECK_FALSE(host.answers[0].status);
    CHECK(host.finished.count(1));
    CHECK(host.held == 0);
    const auto* e = s.engine.find(ikey("k"));
    REQUIRE(e);
    CHECK(e->value_len == path.client_value.size());

    start_get(s, host, 2, "k");
    CHECK(s.engine.pins(e->region) == 1);
    // One-sided: the reply comes only after every push completed.
    CHECK(host.heads.empty());
    while (!path.pending.empty()) {
        path.complete_all_reversed();
        s.pump(path);
    }
    REQUIRE(host.heads.size() == 1);
    CHECK(host.heads[0].range_len == path.client_value.size());
    CHECK(test::mismatch(path.client_memory, path.client_value) == "");
    CHECK(host.finished.count(2));
    s.check_nothing_held();
}

TEST_CASE("A PUT is not acknowledged before its region's open header is on the store",
          "[unit][server][record_write]") {
    holding_store::config sc;
    shard_parts<holding_store> s(sc);
    s.store.hold_at = 0; // region 0's header block: the first region opened
    scripted_path path;
    test_host host(path);
    path.client_value = test::pattern(16, 64 * 1024);
    start_put(s, host, 1, "early", path.client_value.size());
    path.complete_all_reversed();
    s.pump(path);
    // The record is written (header and value in one write), the open header is not complete.
    CHECK(host.answers.empty());
    CHECK(s.engine.find(ikey("early")) == nullptr);
    REQUIRE(s.store.held.size() == 1);
    s.store.release = true;
    s.pump(path);
    REQUIRE(host.answers.size() == 1);
    CHECK_FALSE(host.answers[0].status);
    CHECK(s.engine.find(ikey("early")) != nullptr);
    s.check_nothing_held();
}

TEST_CASE("A connection closed in the middle of a PUT commits nothing and releases the region's "
          "writer and every buffer",
          "[unit][server][record_write]") {
    shard_parts<memory_store> s;
    scripted_path path;
    test_host host(path);
    path.client_value = test::pattern(12, 3 * MiB);
    auto op = start_put(s, host, 1, "gone", path.client_value.size());
    REQUIRE(path.pending.size() == 2);
    path.complete(0); // the first piece arrives and is written
    s.pump(path);
    CHECK(s.engine.writers(0) == 1);
    // The connection closes: it detaches its operations and fences its data path.
    op->detach();
    path.fence();
    s.pump(path);
    CHECK(host.answers.empty()); // nobody to answer
    CHECK(s.engine.find(ikey("gone")) == nullptr);
    CHECK(op->finished());
    s.check_nothing_held();
}

TEST_CASE("A connection closed in the middle of a GET unpins the value's region",
          "[unit][server][value_read]") {
    shard_parts<memory_store> s;
    scripted_path path;
    test_host host(path);
    path.client_value = test::pattern(13, 3 * MiB);
    start_put(s, host, 1, "v", path.client_value.size());
    path.complete_all_reversed();
    s.pump(path);
    path.complete_all_reversed();
    s.pump(path);
    const auto* e = s.engine.find(ikey("v"));
    REQUIRE(e);
    const auto region = e->region;
    auto op = start_get(s, host, 2, "v");
    REQUIRE(!path.pending.empty()); // pieces read, pushes waiting for the client
    CHECK(s.engine.pins(region) == 1);
    op->detach();
    path.fence();
    s.pump(path);
    CHECK(s.engine.pins(region) == 0);
    CHECK(host.heads.empty());
    s.check_nothing_held();
}

TEST_CASE("A store write that fails zeroes the header that went out beside it and answers the "
          "error",
          "[unit][server][record_write]") {
    shard_parts<failing_store> s;
    scripted_path path;
    test_host host(path);
    path.client_value = test::pattern(14, 2 * MiB); // two pieces
    // Region 0's first record: its header at 4 KiB, its value right after; the second piece of
    // the value fails.
    const std::uint64_t header_at = storage::meta_block, value_at = 2 * storage::meta_block;
    s.store.fail_at = value_at + MiB;
    start_put(s, host, 1, "bad", path.client_value.size());
    path.complete_all_reversed();
    s.pump(path);
    REQUIRE(host.answers.size() == 1);
    CHECK(host.answers[0].status == errno_code(EIO));
    CHECK(s.engine.find(ikey("bad")) == nullptr);
    // The header was written (record magic) and then zeroed.
    std::vector<std::byte> firsts;
    for (const auto& [at, b] : s.store.log)
        if (at == header_at) firsts.push_back(b);
    REQUIRE(firsts.size() == 2);
    CHECK(firsts[0] == std::byte{'M'}); // "MRRC", little-endian record magic
    CHECK(firsts[1] == std::byte{0});
    const auto* header = s.store.base() + header_at;
    CHECK(std::all_of(header, header + storage::meta_block,
                      [](std::byte b) { return b == std::byte{0}; }));
    s.check_nothing_held();
}

TEST_CASE("A refused PUT is simply answered over a one-sided path: nothing is pulled",
          "[unit][server][record_write]") {
    shard_parts<memory_store> s;
    scripted_path path;
    test_host host(path);
    path.client_value = test::pattern(15, 64 * 1024);
    start_put(s, host, 1, "dup", path.client_value.size());
    path.complete_all_reversed();
    s.pump(path);
    REQUIRE(host.answers.size() == 1);
    start_put(s, host, 2, "dup", path.client_value.size(), protocol::flags::if_absent);
    REQUIRE(host.answers.size() == 2);
    CHECK(host.answers[1].status == errc::exists);
    CHECK(path.pending.empty());
    REQUIRE(path.skipped.size() == 1); // a one-sided path does nothing for it
    CHECK(s.counters.put_if_absent_hits.load() == 1);
    s.check_nothing_held();
}

namespace {

/// A stream that carries nothing: the inline path only needs a channel to queue on.
struct idle_stream {
    int fd() const noexcept { return -1; }
    transport_kind kind() const noexcept { return transport_kind::tcp; }
    result<std::size_t> read_some(std::span<std::byte>) noexcept { return errc::retry; }
    result<std::size_t> readv_some(std::span<const iovec>) noexcept { return errc::retry; }
    result<std::size_t> writev_some(std::span<const iovec>) noexcept { return errc::retry; }
};

auth::frame_mac test_mac() {
    std::array<std::byte, auth::frame_mac_key_size> key{};
    return std::move(*auth::frame_mac::create(key));
}

/// The shard parts with a connection's stream side: a channel that carries nothing, the inline
/// data path over it, and the host of the operations.
struct stream_parts {
    shard_parts<memory_store> s;
    detail::frame_channel<idle_stream> ch{idle_stream{}, test_mac(), test_mac(), s.cfg.limits};
    detail::inline_data_path<idle_stream> path{ch, s.cfg.limits.max_chunk};
    test_host<detail::inline_data_path<idle_stream>> host{path};
};

} // namespace

TEST_CASE("A refused PUT's value is drained over a stream path: its data frames are read and "
          "dropped, and nothing else is taken for them",
          "[unit][server][record_write][inline_data_path]") {
    stream_parts p;
    auto& [s, ch, path, host] = p;
    // A value too large for the engine is refused before anything is pulled.
    const std::uint64_t len = 5 * MiB;
    start_put(s, host, 7, "huge", len);
    REQUIRE(host.answers.size() == 1);
    CHECK(host.answers[0].status == errc::too_large);
    protocol::frame_header h;
    h.op = static_cast<std::uint8_t>(opcode::data);
    h.request_id = 7;
    h.value_len = len;
    for (std::uint64_t off = 0; off < len; off += MiB) {
        h.offset = off;
        h.payload_len = static_cast<std::uint32_t>(MiB);
        INFO("offset " << off);
        CHECK(path.on_data(h) == detail::data_disposition::discard);
    }
    // The whole value went by: another byte for it is not expected.
    CHECK(path.on_data(h) == detail::data_disposition::unknown);
    h.request_id = 8;
    CHECK(path.on_data(h) == detail::data_disposition::unknown);
    s.check_nothing_held();
}

TEST_CASE("Over a stream path a PUT takes a buffer only for bytes the stream has reached, so "
          "that no buffer waits behind other requests' frames",
          "[unit][server][record_write][inline_data_path]") {
    stream_parts p;
    auto& [s, ch, path, host] = p;
    auto op = start_put(s, host, 3, "streamed", 3 * MiB);
    CHECK(path.open_pulls() == 0); // reserved, nothing armed ahead
    CHECK(s.pool.available() == s.pool.capacity());
    op->want(MiB / 2); // a frame of the first half MiB is at the head of the stream
    CHECK(path.open_pulls() == 1);
    CHECK(s.pool.available() == s.pool.capacity() - 1);
    op->want(MiB + 1); // a frame that straddles the first two pieces
    CHECK(path.open_pulls() == 2);
    CHECK(s.pool.available() == s.pool.capacity() - 2);
    op->detach();
    path.fence();
    s.pump(path);
    s.check_nothing_held();
}
