// SPDX-License-Identifier: Apache-2.0
// client::link_stats and stats_gather: what the client saw of a server, and a stats() or
// ping() gathering every server's counters.
#pragma once

#include <memkv/client_types.hpp>
#include <memkv/detail/client/batch_tracker.hpp>
#include <memkv/detail/latency_histogram.hpp>
#include <memkv/error.hpp>

#include <chrono>
#include <mutex>
#include <system_error>
#include <vector>

namespace memkv::detail::client {

/// What the client saw of one server: counts and reply latencies (read by server_stats() on
/// any thread).
struct link_stats {
    mutable std::mutex m; // guards both below
    client_server_stats counts;
    latency_histogram latency;

    /// A reply from the server to a request sent at `start`.
    void reply(clock::time_point start, std::error_code status) {
        const auto us =
            std::chrono::duration_cast<std::chrono::microseconds>(clock::now() - start).count();
        std::lock_guard lock(m);
        ++counts.requests;
        // A miss and an if_absent no-op are answers, not errors.
        if (status && status != make_error_code(errc::not_found) &&
            status != make_error_code(errc::exists))
            ++counts.errors;
        latency.record(static_cast<std::uint64_t>(us));
    }
    /// An operation that failed before or without a reply.
    void failure(bool timed_out) {
        std::lock_guard lock(m);
        ++counts.requests;
        ++counts.errors;
        if (timed_out) ++counts.timeouts;
    }
};

/// A stats() or ping() gathering the counters of every shard of every server.
struct stats_gather {
    std::vector<server_stats_entry> entries;
    std::error_code error;                      ///< the whole request failed (errc::closed)
    std::vector<std::error_code> server_errors; ///< why server I did not answer, if it did not
    std::size_t remaining = 0;
    bool done = false; ///< under the batch tracker's lock
};

} // namespace memkv::detail::client
