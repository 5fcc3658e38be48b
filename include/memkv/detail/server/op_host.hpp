// SPDX-License-Identifier: Apache-2.0
// op_host: the connection a server operation serves, as the operation sees it.
#pragma once

#include <memkv/protocol/frame.hpp>
#include <memkv/protocol/payload_ref.hpp>
#include <memkv/result.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <system_error>

namespace memkv::detail::server {

/// The head of a GET reply: what the client learns besides the bytes.
struct get_reply {
    std::uint64_t id = 0;
    std::uint64_t value_size = 0; ///< the stored value's total size
    std::uint64_t range_len = 0;  ///< bytes of the range returned
    std::string meta;             ///< the value's metadata
};

/// What an operation asks of its connection: its payload moves through pull/push/skip (the
/// connection's data path, rules of memkv::data_path), its replies go out on the connection's
/// control channel, and the pool buffers it holds count against the connection's in-flight cap.
/// Implemented by server::connection, and by a fake in unit tests.
///
/// Contract: an operation uses its host only until the host detaches it (the connection
/// closed); from then on it finishes on its own and answers nobody.
class op_host {
public:
    virtual result<void> pull(const protocol::payload_ref& ref, std::span<std::byte> dst,
                              std::uint64_t tag) = 0;
    virtual result<void> push(std::span<const std::byte> src, const protocol::payload_ref& ref,
                              std::uint64_t tag) = 0;
    virtual void skip(const protocol::payload_ref& ref) = 0;
    /// data_path rule 6: the GET reply head rides the first push (announce_get()) instead of
    /// following the last one (reply_get()).
    virtual bool reply_rides_payload() const noexcept = 0;
    /// data_path rule 7: pulls are armed only for bytes the stream has reached (record_write's
    /// want()), not ahead.
    virtual bool pulls_on_demand() const noexcept = 0;

    /// A reply without payload (PUT, DEL, and every refusal).
    virtual void reply(protocol::opcode op, std::uint64_t id, std::error_code status) = 0;
    /// The head of a GET reply, to ride the first push (reply_rides_payload()).
    virtual void announce_get(const get_reply& r) = 0;
    /// The whole GET reply head now: an empty range, or after the last push (one-sided paths).
    virtual void reply_get(const get_reply& r) = 0;
    /// A GET that failed: an error reply, or, once bytes went out after the head
    /// (`head_out`), a status in the request's next payload frame.
    virtual void fail_get(std::uint64_t id, std::error_code status, std::uint64_t range_len,
                          bool head_out) = 0;
    /// The request's last payload is queued: it counts as answered.
    virtual void answered(std::uint64_t id) = 0;

    /// Whether the connection may hold one more pool buffer (its in-flight cap).
    virtual bool may_hold_buffer() const noexcept = 0;
    /// Pool buffers the connection's operations hold changed by `delta`.
    virtual void held_buffers(int delta) noexcept = 0;
    /// The operation `id` is over (nothing of it in flight): the connection forgets it.
    virtual void op_done(std::uint64_t id) = 0;

protected:
    ~op_host() = default;
};

} // namespace memkv::detail::server
