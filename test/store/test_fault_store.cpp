// SPDX-License-Identifier: Apache-2.0
// fault_store's slow flushes and discards over memory_store (and shared_memory_store, to see
// what a power cut keeps): delayed completions, a descriptor that wakes the waiter, rule 4.
#include "store/fault_store_delays.hpp"
#include "support/catch.hpp"
#include "support/fault_store.hpp"
#include "support/seed.hpp"
#include "support/shared_memory_store.hpp"

#include <memkv/store/memory_store.hpp>

#include <poll.h>

#include <chrono>
#include <memory>

using memkv::io_completion;
using memkv::memory_store;
using memkv::test::fault_plan;
using memkv::test::fault_store;
using namespace memkv::test::delays;

namespace {

using faulty_memory = fault_store<memory_store>;

/// A fault_store over 1 MiB of memory with `plan`.
faulty_memory open_store(std::shared_ptr<fault_plan> plan) {
    auto s = faulty_memory::create({.inner = {.capacity = 1u << 20}, .plan = std::move(plan)});
    REQUIRE(s);
    return std::move(*s);
}

/// A plan with no faults and the given delays.
std::shared_ptr<fault_plan> delays_plan(std::chrono::milliseconds flush,
                                        std::chrono::milliseconds discard) {
    auto plan = std::make_shared<fault_plan>(memkv::test::seed());
    plan->flush_delay = flush;
    plan->discard_delay = discard;
    return plan;
}

/// Whether `fd` is readable within `timeout` (0: now).
bool readable(int fd, std::chrono::milliseconds timeout) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
}

} // namespace

TEST_CASE("a delayed flush completes after its delay without holding the submitter or poll",
          "[store][fault_store][delay]") {
    auto s = open_store(delays_plan(delay, 0ms));
    check_delayed_completion(s, delayed_op::flush);
}

TEST_CASE("a delayed discard completes after its delay without holding the submitter or poll",
          "[store][fault_store][delay]") {
    auto s = open_store(delays_plan(0ms, delay));
    check_delayed_completion(s, delayed_op::discard);
}

TEST_CASE("writes, reads and discards submitted during a delayed flush complete at once",
          "[store][fault_store][delay]") {
    auto s = open_store(delays_plan(delay, 0ms));
    check_other_io_meanwhile(s);
}

TEST_CASE("fault_store's notify_fd is readable exactly while a completion can be polled",
          "[store][fault_store][delay]") {
    auto s = open_store(delays_plan(delay, 0ms));
    const int fd = s.notify_fd();
    REQUIRE(fd >= 0); // completions can come later than their submission: a real descriptor
    CHECK(!readable(fd, 0ms));
    auto data = filled(s.block_size(), 0x33);
    io_completion c[4];

    // A write completes at submission: readable until polled.
    REQUIRE(s.write(0, data.span(), 1));
    CHECK(readable(fd, 0ms));
    REQUIRE(s.poll(c) == 1);
    CHECK(c[0].tag == 1);
    CHECK(!readable(fd, 0ms));

    // A delayed flush: not readable until due, even before the first poll(), then readable
    // until polled.
    const auto t0 = clock::now();
    REQUIRE(s.flush(2));
    CHECK(!readable(fd, 0ms));
    CHECK(s.poll(c) == 0);
    CHECK(!readable(fd, 0ms));
    REQUIRE(readable(fd, give_up));
    CHECK(clock::now() - t0 >= delay);
    REQUIRE(s.poll(c) == 1);
    CHECK(c[0].tag == 2);
    CHECK(c[0].res == 0);
    CHECK(!readable(fd, 0ms));

    // The same when the caller waits on the descriptor without polling first.
    const auto t1 = clock::now();
    REQUIRE(s.flush(3));
    REQUIRE(readable(fd, give_up));
    CHECK(clock::now() - t1 >= delay);
    REQUIRE(s.poll(c) == 1);
    CHECK(c[0].tag == 3);
    CHECK(!readable(fd, 0ms));
}

TEST_CASE("delayed flushes and discards complete in the order they fall due",
          "[store][fault_store][delay]") {
    // The discard, submitted second with a quarter of the flush's delay, falls due first.
    auto s = open_store(delays_plan(delay, delay / 4));
    const auto t0 = clock::now();
    REQUIRE(s.flush(1));
    REQUIRE(s.discard(0, s.block_size(), 2));
    waited w;
    wait_for(s, {1, 2}, w);
    REQUIRE(w.got.size() == 2);
    CHECK(w.got[0].tag == 2);
    CHECK(w.got[1].tag == 1);
    CHECK(w.last - t0 >= delay);
}

TEST_CASE("a delayed flush keeps the writes completed before it through a power cut",
          "[store][fault_store][delay][power]") {
    // Rule 4: a flush covers every write completed before its submission, whatever is
    // written after it while its completion waits. Block 0 is written only before the flush,
    // block 1 before and after: after the cut block 0 is exactly the first write and block 1
    // one of its two writes (the second was never flushed), never older.
    using faulty_shared = fault_store<memkv::test::shared_memory_store>;
    for (std::uint64_t round = 0; round < 8; ++round) {
        CAPTURE(round);
        auto dev = std::make_shared<memkv::test::shared_memory_device>(1u << 20);
        auto plan = std::make_shared<fault_plan>(memkv::test::seed() + round);
        plan->flush_delay = delay / 4;
        plan->power_cut_at_close = true;
        const auto bs = 4096u;
        auto a0 = filled(bs, 0xa0), a1 = filled(bs, 0xa1), b1 = filled(bs, 0xb1);
        faulty_shared::config cfg;
        cfg.inner.device = dev;
        cfg.plan = plan;
        {
            auto s = faulty_shared::create(cfg);
            REQUIRE(s);
            REQUIRE(s->write(0, a0.span(), 1));
            REQUIRE(s->write(bs, a1.span(), 2));
            waited before;
            wait_for(*s, {1, 2}, before);
            REQUIRE(s->flush(3));
            REQUIRE(s->write(bs, b1.span(), 4));
            auto back = filled(bs, 0);
            REQUIRE(s->read(bs, back.span(), 5));
            waited after;
            wait_for(*s, {3, 4, 5}, after);
            REQUIRE(after.has(3));
            CHECK(after.res(3) == 0);
            CHECK(all_of(back.span(), 0xb1));       // reads see the unflushed write
        }                                           // power cut at close
        cfg.plan = std::make_shared<fault_plan>(1); // no faults, no power cut: just read
        auto s = faulty_shared::create(cfg);
        REQUIRE(s);
        auto got = filled(2 * bs, 0);
        REQUIRE(s->read(0, got.span(), 6));
        waited w;
        wait_for(*s, {6}, w);
        REQUIRE(w.res(6) == 2 * bs);
        CHECK(all_of(got.span().first(bs), 0xa0));
        const auto block1 = got.span().subspan(bs);
        CHECK((all_of(block1, 0xa1) || all_of(block1, 0xb1)));
    }
}
