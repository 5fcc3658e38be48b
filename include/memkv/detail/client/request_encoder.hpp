// SPDX-License-Identifier: Apache-2.0
// client::request_encoder: the request frames of the client's operations, as pure functions.
#pragma once

#include <memkv/client_types.hpp>
#include <memkv/protocol/frame.hpp>
#include <memkv/protocol/limits.hpp>
#include <memkv/protocol/messages.hpp>

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace memkv::detail::client {

/// A request frame ready to queue: its header (the channel adds the MAC) and body.
struct request_frame {
    protocol::frame_header header;
    std::vector<std::byte> body;
};

inline std::span<const std::byte> bytes_of(const std::string& s) noexcept {
    return std::as_bytes(std::span(s.data(), s.size()));
}

/// How many of `sizes[first..]` go into one frame: at most `max_count`, and at most `max_body`
/// body bytes; at least one (one operation always fits: keys and metadata are capped far below
/// max_body).
inline std::size_t frame_span(std::span<const std::size_t> sizes, std::size_t first,
                              std::size_t max_count, std::size_t max_body) noexcept {
    std::size_t n = 0, body = 0;
    for (; first + n < sizes.size() && n < max_count; ++n) {
        body += sizes[first + n];
        if (n > 0 && body > max_body) break;
    }
    return n;
}

/// Bytes one operation takes in a batch body.
inline std::size_t batch_entry_size(const operation& op, std::size_t wire_key_size) noexcept {
    return protocol::batch_descriptor_size + wire_key_size +
           (op.kind == op_kind::put ? op.options.meta.size() : 0);
}

/// The batch sub-request of a put, get or del under request id `id` (the key a view of
/// `wire_key`).
inline protocol::sub_request sub_request_of(const operation& op, const std::string& wire_key,
                                            std::uint64_t id) noexcept {
    protocol::sub_request s;
    s.id = id;
    s.key = bytes_of(wire_key);
    switch (op.kind) {
    case op_kind::put:
        s.op = protocol::opcode::put;
        s.value_len = op.value.size();
        s.length = op.options.ttl_seconds;
        s.meta = op.options.meta;
        s.flags = (op.options.if_absent ? protocol::flags::if_absent : 0) |
                  (op.options.durable ? protocol::flags::durable : 0) |
                  (op.options.pin ? protocol::flags::pin : 0);
        break;
    case op_kind::get:
        s.op = protocol::opcode::get;
        s.offset = op.offset;
        s.length = op.length;
        break;
    default:
        s.op = protocol::opcode::del;
        break;
    }
    return s;
}

/// A batch frame of `subs` under request id `batch_id` (their own ids follow it).
inline request_frame batch_frame(std::uint64_t batch_id,
                                 std::span<const protocol::sub_request> subs) {
    request_frame f;
    f.header.op = static_cast<std::uint8_t>(protocol::opcode::batch);
    f.header.request_id = batch_id;
    f.header.aux = static_cast<std::uint32_t>(subs.size());
    f.body = protocol::encode_batch(subs);
    return f;
}

/// Most keys per exists frame: the reply (bitmap, sizes, up to max_meta bytes of metadata per
/// key) must fit one body.
inline std::size_t exists_chunk(const protocol::limits& lim) noexcept {
    const std::size_t per_key = 8 + 2 + lim.max_meta + 1;
    return std::max<std::size_t>(1, std::min<std::size_t>(lim.max_batch, lim.max_body / per_key));
}

/// An exists frame asking for sizes and metadata of `keys`.
inline request_frame exists_frame(std::uint64_t id, std::span<const std::string> keys) {
    std::vector<std::span<const std::byte>> views;
    views.reserve(keys.size());
    for (const auto& k : keys)
        views.push_back(bytes_of(k));
    request_frame f;
    f.header.op = static_cast<std::uint8_t>(protocol::opcode::exists);
    f.header.request_id = id;
    f.header.aux = static_cast<std::uint32_t>(keys.size());
    f.header.flags = protocol::flags::want_sizes | protocol::flags::want_meta;
    f.body = protocol::encode_exists_request(views);
    return f;
}

/// A frame with no body: stats, ping, or attach to shard `aux`.
inline request_frame bare_frame(protocol::opcode op, std::uint64_t id, std::uint32_t aux = 0) {
    request_frame f;
    f.header.op = static_cast<std::uint8_t>(op);
    f.header.request_id = id;
    f.header.aux = aux;
    return f;
}

/// A data frame carrying bytes [offset, offset + n) of a put's value of `value_len` bytes.
inline protocol::frame_header data_header(std::uint64_t id, std::uint64_t value_len,
                                          std::uint64_t offset) noexcept {
    protocol::frame_header h;
    h.op = static_cast<std::uint8_t>(protocol::opcode::data);
    h.request_id = id;
    h.value_len = value_len;
    h.offset = offset;
    return h;
}

} // namespace memkv::detail::client
