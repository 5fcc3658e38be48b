// SPDX-License-Identifier: Apache-2.0
// Routing completions to their owners, and the engine's metadata I/O submitted through the same
// tags: what a shard does with every {tag, res}, whoever produced it.
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/server/record_write.hpp>
#include <memkv/detail/server/shard_services.hpp>
#include <memkv/detail/server/value_read.hpp>
#include <memkv/storage/engine.hpp>
#include <memkv/storage/meta_io.hpp>

#include <cerrno>
#include <type_traits>
#include <variant>

namespace memkv::detail::server {

/// The engine's metadata I/O (storage::meta_submitter) submitted to a store under tags of the
/// shard's tag space, so that its completions come back through route_completion().
template <store Store>
class store_meta_submitter final : public storage::meta_submitter {
public:
    store_meta_submitter(Store& s, io_tags<Store>& tags) noexcept : store_(s), tags_(tags) {}

    result<void> write(std::uint64_t offset, std::span<const std::byte> buf,
                       std::uint64_t token) override {
        return submit(token, buf.size(),
                      [&](std::uint64_t t) { return store_.write(offset, buf, t); });
    }
    result<void> flush(std::uint64_t token) override {
        return submit(token, 0, [&](std::uint64_t t) { return store_.flush(t); });
    }
    result<void> discard(std::uint64_t offset, std::uint64_t length, std::uint64_t token) override {
        return submit(token, 0, [&](std::uint64_t t) { return store_.discard(offset, length, t); });
    }

private:
    template <class Submit>
    result<void> submit(std::uint64_t token, std::uint64_t expect, Submit s) {
        const auto tag = tags_.add(meta_io_owner{token, expect});
        if (auto r = s(tag); !r) {
            tags_.cancel(tag);
            return r.error();
        }
        return {};
    }

    Store& store_;
    io_tags<Store>& tags_;
};

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
