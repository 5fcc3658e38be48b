// SPDX-License-Identifier: Apache-2.0
// dispatch: the rules every request passes once, whatever its kind and however it arrived
// (alone or in a batch): decoding and checking, request ids, and admission.
#pragma once

#include <memkv/detail/shard_counters.hpp>
#include <memkv/error.hpp>
#include <memkv/protocol/frame.hpp>
#include <memkv/protocol/limits.hpp>
#include <memkv/protocol/messages.hpp>
#include <memkv/protocol/placement.hpp>
#include <memkv/result.hpp>

#include <cstdint>
#include <set>
#include <span>
#include <vector>

namespace memkv::detail::server {

/// A PUT, GET or DEL as a frame or a batch descriptor asks for it (views into the frame body).
struct data_request {
    protocol::opcode op = protocol::opcode::get;
    std::uint64_t id = 0;
    std::uint16_t flags = 0;
    std::span<const std::byte> key, meta;
    std::uint64_t value_len = 0; ///< PUT
    std::uint64_t offset = 0;    ///< GET: range start
    std::uint64_t length = 0;    ///< GET: range length (0: to the end); PUT: TTL seconds
};

/// Decodes a stand-alone PUT, GET or DEL frame: key and metadata checked against the caps (a
/// body breaking a rule is errc::protocol, a length over a cap errc::too_large); a PUT's
/// value starts at offset 0, a GET or DEL carries no payload.
inline result<data_request> decode_request(const protocol::frame_header& h,
                                           std::span<const std::byte> body,
                                           const protocol::limits& lim) {
    const bool put = h.code() == protocol::opcode::put;
    if (!put && h.payload_len != 0) return errc::protocol;
    auto km = protocol::split_key_meta(h, body, lim);
    if (!km) return km.error();
    if (put && h.offset != 0) return errc::protocol;
    data_request r;
    r.op = h.code();
    r.id = h.request_id;
    r.flags = h.flags;
    r.key = km->key;
    r.meta = km->meta;
    if (put) {
        r.value_len = h.value_len;
        r.length = h.length;
    } else {
        r.offset = h.offset;
        r.length = h.length;
    }
    return r;
}

/// A batch's sub-request as a data_request.
inline data_request from_sub_request(const protocol::sub_request& s) noexcept {
    return {s.op, s.id, s.flags, s.key, s.meta, s.value_len, s.offset, s.length};
}

/// The request ids of one connection: every request's id must be larger than the one before
/// (never reused), and the requests not answered yet are tracked, for the pipeline depth and
/// out-of-order counters and for knowing when the connection has nothing left to answer.
class request_ledger {
public:
    request_ledger(std::uint64_t last, shard_counters& c) noexcept : last_(last), counters_(c) {}

    /// Starts tracking `id`; false when it does not grow.
    bool begin(std::uint64_t id) {
        if (id <= last_) return false;
        last_ = id;
        pending_.insert(id);
        const auto depth = pending_.size();
        auto& hw = counters_.max_pipeline_depth;
        if (depth > hw.load(std::memory_order_relaxed)) hw.store(depth, std::memory_order_relaxed);
        counters_.requests.fetch_add(1, std::memory_order_relaxed);
        return true;
    }

    /// Checks that a batch's own id and then every sub-request's grow, before anything runs
    /// (a malformed batch changes nothing); then takes the batch's id.
    bool begin_batch(std::uint64_t batch_id, std::span<const protocol::sub_request> subs) {
        std::uint64_t last = batch_id;
        if (last <= last_) return false;
        for (const auto& s : subs) {
            if (s.id <= last) return false;
            last = s.id;
        }
        last_ = batch_id;
        return true;
    }

    /// Request `id` is answered.
    void answered(std::uint64_t id) {
        auto it = pending_.find(id);
        if (it == pending_.end()) return;
        if (it != pending_.begin())
            counters_.out_of_order_replies.fetch_add(1, std::memory_order_relaxed);
        pending_.erase(it);
    }

    bool idle() const noexcept { return pending_.empty(); }

private:
    std::uint64_t last_;
    std::set<std::uint64_t> pending_; // answered in any order; the lowest is the oldest
    shard_counters& counters_;
};

/// Which shard a request's key must belong to.
struct shard_identity {
    std::uint32_t index = 0, count = 1;
    bool owns(std::span<const std::byte> key) const noexcept {
        return shard_for(key_hash(key), count) == index;
    }
};

/// Admission, for every data request alike: a connection that drains (the server is
/// stopping) takes nothing new, answered `closed` (nothing done, docs/protocol.md); a key of
/// another shard is refused with wrong_shard (a stale client must never create a second copy).
inline std::error_code admit(bool draining, std::span<const std::byte> key,
                             const shard_identity& shard, shard_counters& c) {
    if (draining) return make_error_code(errc::closed);
    if (!shard.owns(key)) {
        c.wrong_shard.fetch_add(1, std::memory_order_relaxed);
        return make_error_code(errc::wrong_shard);
    }
    return {};
}

/// The status code of a reply frame for `ec`: memkv's errc values travel as they are, any
/// other error as errc::internal.
inline std::uint32_t status_code(std::error_code ec) noexcept {
    if (!ec) return 0;
    if (ec.category() == error_category()) return static_cast<std::uint32_t>(ec.value());
    return static_cast<std::uint32_t>(errc::internal);
}

/// A reply header to request `id` of opcode `op` with `status`.
inline protocol::frame_header reply_header(protocol::opcode op, std::uint64_t id,
                                           std::error_code status = {}) noexcept {
    protocol::frame_header r;
    r.op = static_cast<std::uint8_t>(op) | protocol::reply_bit;
    r.request_id = id;
    r.aux = status_code(status);
    return r;
}

} // namespace memkv::detail::server
