// SPDX-License-Identifier: Apache-2.0
// The region manager's state machines driven directly: every metadata write, flush and discard
// it submits is held by a scripted submitter until the test completes it (or fails it), so that
// each step of opening, sealing and reclaiming is checked as it happens.
#include "support/catch.hpp"

#include <memkv/storage/format.hpp>
#include <memkv/storage/region_manager.hpp>

#include <cerrno>
#include <chrono>
#include <deque>
#include <thread>
#include <vector>

using namespace memkv;
using namespace memkv::storage;

namespace {

constexpr std::uint64_t MiB = 1u << 20;
constexpr std::uint64_t region_size = 4 * MiB;

/// A meta_submitter that records every submission and completes it only when told to.
struct scripted_submitter final : meta_submitter {
    enum class kind { write, flush, discard };
    struct submission {
        kind k;
        std::uint64_t offset = 0, length = 0, token = 0;
        std::vector<std::byte> bytes;
    };

    result<void> write(std::uint64_t offset, std::span<const std::byte> buf,
                       std::uint64_t token) override {
        if (refuse) return errc::internal;
        pending.push_back({kind::write, offset, buf.size(), token, {buf.begin(), buf.end()}});
        return {};
    }
    result<void> flush(std::uint64_t token) override {
        if (refuse) return errc::internal;
        pending.push_back({kind::flush, 0, 0, token, {}});
        return {};
    }
    result<void> discard(std::uint64_t offset, std::uint64_t length, std::uint64_t token) override {
        if (refuse) return errc::internal;
        pending.push_back({kind::discard, offset, length, token, {}});
        return {};
    }

    /// Completes the oldest pending submission with `res` (its size by default) on `rm`.
    submission complete(region_manager& rm, std::int64_t res = 1) {
        REQUIRE(!pending.empty());
        auto s = pending.front();
        pending.pop_front();
        rm.on_io(s.token, res == 1 ? static_cast<std::int64_t>(s.length) : res);
        return s;
    }
    /// Completes everything pending, and what that submits, successfully.
    void complete_all(region_manager& rm) {
        while (!pending.empty())
            complete(rm);
    }

    std::deque<submission> pending;
    bool refuse = false;
};

/// The state of a region header written by a submission.
region_state header_state(const scripted_submitter::submission& s) {
    region_header h;
    REQUIRE(s.bytes.size() == meta_block);
    REQUIRE(decode_region_header(std::span<const std::byte, meta_block>(s.bytes.data(), meta_block),
                                 7, h));
    return h.state;
}

struct manager {
    explicit manager(std::uint32_t regions = 4, bool trim = true)
        : rm(
              {{0, region_size, regions, 4096}, 0, 7, trim}, io,
              [this](std::uint32_t r) {
                  evicted.push_back(r);
                  return std::uint64_t{3};
              },
              [](std::uint32_t) { return std::vector<summary_entry>{}; }) {}

    /// Allocates a record of `bytes`, which must succeed at once.
    allocation must_allocate(std::uint64_t bytes = MiB) {
        auto a = rm.allocate(bytes, 64);
        REQUIRE(a);
        REQUIRE(*a);
        return **a;
    }

    scripted_submitter io;
    std::vector<std::uint32_t> evicted;
    region_manager rm;
};

} // namespace

TEST_CASE("A region's records may be acknowledged only once its open header completed, and none "
          "if it failed",
          "[unit][storage][region_manager]") {
    manager m;
    const auto a = m.must_allocate();
    REQUIRE(m.io.pending.size() == 1); // the open header, not flushed
    CHECK(m.io.pending.front().k == scripted_submitter::kind::write);
    CHECK(m.io.pending.front().offset == 0);
    CHECK(header_state(m.io.pending.front()) == region_state::open);
    CHECK(m.rm.readiness(a.region) == region_readiness::pending);
    m.io.complete(m.rm);
    CHECK(m.rm.readiness(a.region) == region_readiness::ready);
    m.rm.release(a.region);

    SECTION("a failed open header fails the region's records and closes it") {
        manager f;
        const auto b = f.must_allocate();
        f.io.complete(f.rm, -EIO);
        CHECK(f.rm.readiness(b.region) == region_readiness::failed);
        CHECK(f.rm.stats().metadata_errors == 1);
        f.rm.release(b.region);
        const auto c = f.must_allocate(); // a fresh region, not the failed one
        CHECK(c.region != b.region);
    }
}

TEST_CASE("A full region is sealed only once its last writer is done: flush, then summary, then "
          "trailer",
          "[unit][storage][region_manager]") {
    manager m;
    const auto first = m.must_allocate(3 * MiB);
    m.io.complete_all(m.rm); // its open header
    // The next record does not fit: another region opens, the first is closed but written.
    const auto second = m.must_allocate(3 * MiB);
    CHECK(second.region != first.region);
    REQUIRE(m.io.pending.size() == 1); // the new region's open header only: no seal yet
    m.io.complete(m.rm);
    m.rm.release(first.region);
    REQUIRE(m.io.pending.size() == 1);
    CHECK(m.io.pending.front().k == scripted_submitter::kind::flush); // the records first
    m.io.complete(m.rm);
    REQUIRE(m.io.pending.size() == 1);
    CHECK(m.io.pending.front().k == scripted_submitter::kind::write); // the summary
    CHECK(m.io.pending.front().offset > first.header_offset);
    m.io.complete(m.rm);
    REQUIRE(m.io.pending.size() == 1);
    CHECK(m.io.pending.front().offset == region_size - meta_block); // the trailer
    m.io.complete(m.rm);
    CHECK(m.io.pending.empty());
    CHECK_FALSE(m.rm.busy());
    m.rm.release(second.region);
}

TEST_CASE("A reclaim evicts the oldest region, rewrites its header free, flushes and discards; "
          "the region is reused only after the discard, and a PUT meanwhile waits",
          "[unit][storage][region_manager]") {
    manager m(2);
    const auto a = m.must_allocate(3 * MiB);
    m.io.complete_all(m.rm);
    m.rm.release(a.region);
    const auto b = m.must_allocate(3 * MiB); // region 2 of 2; region 1 is being sealed
    for (int i = 0; i < 4; ++i)              // seal flush, open header, summary, trailer
        m.io.complete(m.rm);
    // Half full and no clean region left: the reclaim of the oldest started with the seal done.
    REQUIRE(m.evicted == std::vector<std::uint32_t>{a.region});
    REQUIRE(m.io.pending.size() == 1);
    CHECK(header_state(m.io.pending.front()) == region_state::free);
    // A record that does not fit the open region waits: a region is on its way.
    auto w = m.rm.allocate(3 * MiB, 64);
    REQUIRE(w);
    CHECK_FALSE(*w);
    m.io.complete(m.rm); // free header
    CHECK(m.io.pending.front().k == scripted_submitter::kind::flush);
    m.io.complete(m.rm);
    REQUIRE(m.io.pending.front().k == scripted_submitter::kind::discard);
    const auto region_start = a.header_offset - meta_block;
    CHECK(m.io.pending.front().offset == region_start + meta_block); // the header block stays
    CHECK(m.io.pending.front().length == region_size - meta_block);
    w = m.rm.allocate(3 * MiB, 64);
    REQUIRE(w);
    CHECK_FALSE(*w); // still not clean: its discard is in flight
    m.io.complete(m.rm);
    CHECK(m.rm.stats().evicted_regions == 1);
    CHECK(m.rm.stats().evicted_entries == 3);
    CHECK(m.rm.stats().discarded_bytes == region_size - meta_block);
    const auto c = m.must_allocate(3 * MiB);
    CHECK(c.region == a.region);
    m.rm.release(b.region);
    m.rm.release(c.region);
}

TEST_CASE("A reclaim whose free header fails keeps the region the oldest and answers retry "
          "during its back-off instead of spinning; a failed discard only loses the TRIM",
          "[unit][storage][region_manager]") {
    manager m(2);
    const auto a = m.must_allocate(3 * MiB);
    m.io.complete_all(m.rm);
    m.rm.release(a.region);
    const auto b = m.must_allocate(3 * MiB);
    for (int i = 0; i < 4; ++i) // seal flush, open header, summary, trailer: the reclaim starts
        m.io.complete(m.rm);
    REQUIRE(m.io.pending.size() == 1);
    m.io.complete(m.rm, -EIO); // its free header fails
    CHECK(m.rm.stats().metadata_errors == 1);
    auto r = m.rm.allocate(3 * MiB, 64);
    CHECK(r.error() == errc::retry); // no new submission: the back-off holds
    CHECK(m.io.pending.empty());
    std::this_thread::sleep_for(std::chrono::milliseconds(150)); // past the first back-off
    r = m.rm.allocate(3 * MiB, 64);
    REQUIRE(r);
    CHECK_FALSE(*r);           // the reclaim runs again: wait
    m.io.complete(m.rm);       // free header
    m.io.complete(m.rm);       // flush
    m.io.complete(m.rm, -EIO); // the discard fails: not fatal
    CHECK(m.rm.stats().metadata_errors == 2);
    CHECK(m.rm.stats().discarded_bytes == 0);
    const auto c = m.must_allocate(3 * MiB);
    CHECK(c.region == a.region);
    m.rm.release(b.region);
    m.rm.release(c.region);
}

TEST_CASE("A refused open header submission answers retry without touching the region",
          "[unit][storage][region_manager]") {
    manager m;
    m.io.refuse = true;
    auto r = m.rm.allocate(MiB, 64);
    CHECK(r.error() == errc::retry);
    m.io.refuse = false;
    const auto a = m.must_allocate();
    m.io.complete_all(m.rm);
    CHECK(m.rm.readiness(a.region) == region_readiness::ready);
    m.rm.release(a.region);
}

TEST_CASE("Shutdown seals the open region and flushes, busy until every step completed",
          "[unit][storage][region_manager]") {
    manager m;
    const auto a = m.must_allocate();
    m.io.complete_all(m.rm);
    m.rm.release(a.region);
    m.rm.seal_all();
    CHECK(m.rm.busy());
    std::vector<scripted_submitter::kind> steps;
    while (!m.io.pending.empty())
        steps.push_back(m.io.complete(m.rm).k);
    using k = scripted_submitter::kind;
    CHECK(steps == std::vector<k>{k::flush, k::write, k::write, k::flush});
    CHECK_FALSE(m.rm.busy());
}
