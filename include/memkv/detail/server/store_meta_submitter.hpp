// SPDX-License-Identifier: Apache-2.0
// store_meta_submitter<Store>: the engine's metadata I/O submitted to a shard's store under the
// shard's completion tags.
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/server/shard_services.hpp>
#include <memkv/storage/meta_io.hpp>

#include <cstdint>
#include <span>

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

} // namespace memkv::detail::server
