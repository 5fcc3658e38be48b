// SPDX-License-Identifier: Apache-2.0
// claim_registry: the files and devices this process holds, shared by the stores that use them.
#pragma once

#include <memkv/result.hpp>

#include <algorithm>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace memkv::detail {

/// @brief The objects of one kind (`Claimed`: an open file, an exclusively opened device) that
/// this process holds, so that every store over the same object shares one claim of it.
///
/// Ownership is weak: the registry never keeps a claim alive; it is released (its descriptor
/// closed, its locks dropped) with the last store that holds it. Thread-safe: every operation
/// runs under the registry's mutex.
template <class Claimed>
class claim_registry {
public:
    /// This process's registry of `Claimed` objects.
    static claim_registry& process() noexcept {
        static claim_registry registry;
        return registry;
    }

    /// Finds or makes the claim a new store uses. Runs entirely under the registry's lock, so
    /// that two stores in this process never claim one object on their own at the same time:
    /// 1. when `share`, the live claim `c` for which `match(c)` is true is taken;
    /// 2. else `make()` (returning result<std::shared_ptr<Claimed>>) makes a fresh one;
    /// 3. `finish(c, fresh)` (returning result<void>) completes the claim for this store;
    /// 4. a fresh claim is published (when `share`) only once `make` and `finish` succeeded.
    /// Returns the claim, or the first error (a fresh claim is then released before the lock).
    template <class Match, class Make, class Finish>
    result<std::shared_ptr<Claimed>> find_or_claim(bool share, Match&& match, Make&& make,
                                                   Finish&& finish) {
        std::lock_guard<std::mutex> lock(mutex_);
        std::erase_if(claims_, [](const auto& w) { return w.expired(); });
        std::shared_ptr<Claimed> claim;
        if (share)
            for (const auto& w : claims_)
                if (auto c = w.lock(); c && match(std::as_const(*c))) {
                    claim = std::move(c);
                    break;
                }
        const bool fresh = !claim;
        if (fresh) {
            auto made = make();
            if (!made) return made.error();
            claim = std::move(*made);
        }
        MEMKV_TRY(finish(*claim, fresh));
        if (fresh && share) claims_.push_back(claim);
        return claim;
    }

    /// find_or_claim with nothing to finish: a found claim is used as it is.
    template <class Match, class Make>
    result<std::shared_ptr<Claimed>> find_or_claim(bool share, Match&& match, Make&& make) {
        return find_or_claim(share, std::forward<Match>(match), std::forward<Make>(make),
                             [](Claimed&, bool) -> result<void> { return {}; });
    }

private:
    std::mutex mutex_;
    std::vector<std::weak_ptr<Claimed>> claims_; // expired ones are erased on the next claim
};

} // namespace memkv::detail
