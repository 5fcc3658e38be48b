// SPDX-License-Identifier: Apache-2.0
// completion_tags<Owners...>: the one tag space of a thread's asynchronous operations (store
// I/O, payload transfers, metadata I/O), each tag mapped to a typed owner.
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <utility>
#include <variant>

namespace memkv::detail {

/// Hands out tags for operations submitted to stores and data paths and remembers who owns
/// each, so that a completion {tag, res} finds its owner whatever produced it.
///
/// Contracts:
///  1. Tags are never 0 and never reused while this object lives.
///  2. take(tag) returns the owner once and forgets the tag; a tag unknown (never given, or
///     already taken) yields nullopt: a completion that is not ours is ignored.
///  3. An owner is stored by value (typically a shared_ptr keeping its operation alive until
///     the completion arrives, whatever happened to the connection meanwhile).
template <class... Owners>
class completion_tags {
public:
    using owner = std::variant<Owners...>;

    /// A new tag owned by `o`.
    std::uint64_t add(owner o) {
        const auto tag = ++next_;
        live_.emplace(tag, std::move(o));
        return tag;
    }

    /// Forgets a tag whose submission failed (nothing will complete it).
    void cancel(std::uint64_t tag) noexcept { live_.erase(tag); }

    /// The owner of `tag`, which is forgotten.
    std::optional<owner> take(std::uint64_t tag) {
        auto it = live_.find(tag);
        if (it == live_.end()) return std::nullopt;
        std::optional<owner> o(std::move(it->second));
        live_.erase(it);
        return o;
    }

    /// Operations submitted and not yet completed.
    std::size_t size() const noexcept { return live_.size(); }
    bool empty() const noexcept { return live_.empty(); }

private:
    std::uint64_t next_ = 0;
    std::unordered_map<std::uint64_t, owner> live_;
};

} // namespace memkv::detail
