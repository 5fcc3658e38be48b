// SPDX-License-Identifier: Apache-2.0
// fault_store's slow flushes and discards over file_store (io_uring, a file in $MEMKV_TEST_DIR,
// default /var/tmp): the checks of fault_store_delays.hpp, with the inner store's own
// notify_fd combined with the delay timer.
#include "store/fault_store_delays.hpp"
#include "support/catch.hpp"
#include "support/temp_dir.hpp"
#include "support/fault_store.hpp"
#include "support/loop_device.hpp"
#include "support/seed.hpp"

#include <memkv/store/file_store.hpp>

#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

using memkv::file_store;
using memkv::test::fault_plan;
using memkv::test::fault_store;
using memkv::test::temp_dir;
using namespace memkv::test::delays;

namespace {

using faulty_file = fault_store<file_store>;

/// A fault_store over a 4 MiB file in `dir`, with no faults and the given delays.
faulty_file open_store(const temp_dir& dir, std::chrono::milliseconds flush,
                       std::chrono::milliseconds discard) {
    auto plan = std::make_shared<fault_plan>(memkv::test::seed());
    plan->flush_delay = flush;
    plan->discard_delay = discard;
    auto s = faulty_file::create(
        {.inner = {.path = dir.file("data"), .capacity = 4u << 20}, .plan = std::move(plan)});
    INFO("create: " << (s ? "ok" : s.error().message()));
    REQUIRE(s);
    return std::move(*s);
}

} // namespace

TEST_CASE("over file_store a delayed flush completes after its delay without holding anyone",
          "[store][uring][fault_store][delay]") {
    temp_dir dir;
    auto s = open_store(dir, delay, 0ms);
    check_delayed_completion(s, delayed_op::flush);
}

TEST_CASE("over file_store a delayed discard completes after its delay without holding anyone",
          "[store][uring][fault_store][delay]") {
    temp_dir dir;
    auto s = open_store(dir, 0ms, delay);
    check_delayed_completion(s, delayed_op::discard);
}

TEST_CASE("over file_store other I/O submitted during a delayed flush completes at once",
          "[store][uring][fault_store][delay]") {
    temp_dir dir;
    auto s = open_store(dir, delay, 0ms);
    check_other_io_meanwhile(s);
}
