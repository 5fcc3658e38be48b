// SPDX-License-Identifier: Apache-2.0
// Routing completions to their owners: what a shard does with every {tag, res}, whoever
// produced it (a store, a data path, the engine's metadata I/O).
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/server/record_write.hpp>
#include <memkv/detail/server/shard_services.hpp>
#include <memkv/detail/server/value_read.hpp>
#include <memkv/storage/engine.hpp>

#include <cerrno>
#include <type_traits>
#include <variant>

namespace memkv::detail::server {

/// Hands completion `c` to its owner: an operation's on_io(), or the engine's on_meta_io()
/// (a short metadata transfer is an error). Returns true when it was the engine's: operations
/// waiting for space or readiness may go on. A tag nobody owns is ignored.
template <store Store>
bool route_completion(io_tags<Store>& tags, storage::engine& engine, const io_completion& c) {
    auto owner = tags.take(c.tag);
    if (!owner) return false;
    return std::visit(
        [&](auto& o) {
            using O = std::decay_t<decltype(o)>;
            if constexpr (std::is_same_v<O, meta_io_owner>) {
                auto res = c.res;
                if (res >= 0 && static_cast<std::uint64_t>(res) != o.expect) res = -EIO;
                engine.on_meta_io(o.token, res);
                return true;
            } else {
                o.op->on_io(o, c.res);
                return false;
            }
        },
        *owner);
}

} // namespace memkv::detail::server
