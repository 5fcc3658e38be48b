// SPDX-License-Identifier: Apache-2.0
// The value types of memkv::client's API: operations, their options and their results.
#pragma once

#include <memkv/client_config.hpp>
#include <memkv/result.hpp>

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace memkv {

/// Options of a put.
struct put_options {
    std::span<const std::byte> meta{}; ///< up to 256 bytes stored with the value
    bool if_absent = false;            ///< do nothing if the key exists (reported as success)
    bool durable = false;              ///< acknowledge only after a flush
    bool pin = false;                  ///< ask the server not to evict it (best effort)
    std::uint32_t ttl_seconds = 0;     ///< 0 = no expiry
};

/// Kinds of operations in a batch.
enum class op_kind : std::uint8_t { put, get, del, exists };

/// One operation of an asynchronous batch. The caller owns every buffer it points at and keeps
/// it valid and untouched until the batch completes.
struct operation {
    op_kind kind = op_kind::get;
    std::string key;
    // put
    std::span<const std::byte> value{};
    put_options options{};
    // get: the value lands in `fragments` in order (scatter); if none are given it is stored in
    // `data`. `offset`/`length` select a byte range (length 0 = to the end).
    std::vector<std::span<std::byte>> fragments{};
    std::uint64_t offset = 0, length = 0;

    // results
    std::error_code status{};          ///< success, errc::not_found (miss), or the error
    std::uint64_t size = 0;            ///< get: bytes returned; exists: value size
    std::uint64_t value_size = 0;      ///< get: the stored value's total size
    std::vector<std::byte> data{};     ///< get without fragments: the bytes
    std::vector<std::byte> meta_out{}; ///< get/exists: the value's metadata
    bool exists = false;               ///< exists: present
};

/// What the client saw of one server (client-side counters, since it was created).
struct client_server_stats {
    std::string endpoint;
    bool up = false;              ///< connected now
    std::uint64_t requests = 0;   ///< operations completed (any status)
    std::uint64_t errors = 0;     ///< completed with an error (a miss is not an error)
    std::uint64_t timeouts = 0;   ///< failed by the request timeout
    std::uint64_t reconnects = 0; ///< connection attempts after the first
    std::uint64_t p50_us = 0, p99_us = 0, p999_us = 0, max_us = 0; ///< latency of replies
};

/// A server counter, as gathered by client::stats().
struct server_stats_entry {
    std::string name;
    std::uint64_t value = 0;
};

} // namespace memkv
