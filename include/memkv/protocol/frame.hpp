// SPDX-License-Identifier: Apache-2.0
// The fixed-size frame header of memkv's wire protocol and its pure encode/decode functions.
// The layout is specified in docs/protocol.md; this file is its executable form.
#pragma once

#include <memkv/error.hpp>
#include <memkv/protocol/body_codec.hpp>
#include <memkv/protocol/limits.hpp>
#include <memkv/protocol/wire.hpp>
#include <memkv/result.hpp>

#include <cstddef>
#include <cstdint>
#include <span>

namespace memkv::protocol {

/// "MKVF" read as a little-endian u32.
inline constexpr std::uint32_t frame_magic = 0x46564B4D;
/// Protocol versions this build speaks.
inline constexpr std::uint8_t version_min = 1;
inline constexpr std::uint8_t version_max = 1;
/// Bytes in a frame header, MAC included.
inline constexpr std::size_t header_size = 64;
/// Offset and size of the truncated HMAC at the end of the header.
inline constexpr std::size_t mac_offset = 56;
inline constexpr std::size_t mac_size = 8;

/// Operations. A reply carries the request's opcode with `reply_bit` set.
enum class opcode : std::uint8_t {
    attach = 1, ///< bind this connection to shard `aux`
    put = 2,    ///< body: key, metadata (aux = key length); value follows as payload
    get = 3,    ///< body: key (aux = key length); offset/length select a byte range
    exists = 4, ///< body: aux keys, each u16 length + bytes; reply body: bitmap [+ sizes]
    del = 5,    ///< body: key (aux = key length)
    stats = 6,  ///< reply body: counters, see messages.hpp
    ping = 7,   ///< no body
    batch = 8,  ///< body: aux sub-request descriptors; each sub-request is answered on its own
    data = 9,   ///< payload continuation of request or reply `request_id` at `offset`
};
inline constexpr std::uint8_t reply_bit = 0x80;

/// Request flags (u16).
namespace flags {
inline constexpr std::uint16_t if_absent = 1u << 0;  ///< put: no-op if the key exists
inline constexpr std::uint16_t durable = 1u << 1;    ///< put: acknowledge after a flush
inline constexpr std::uint16_t pin = 1u << 2;        ///< put: exempt from eviction (best effort)
inline constexpr std::uint16_t want_sizes = 1u << 3; ///< exists: reply carries value sizes
inline constexpr std::uint16_t want_meta = 1u << 4;  ///< exists: reply carries metadata
inline constexpr std::uint16_t all = 0x1f;
} // namespace flags

/// A decoded frame header. Field meanings per opcode are in docs/protocol.md.
struct frame_header {
    std::uint8_t version = version_max;
    std::uint8_t op = 0; ///< opcode, with reply_bit on replies
    std::uint16_t flags = 0;
    std::uint64_t request_id = 0; ///< chosen by the client; never reused on a connection
    std::uint32_t body_len = 0;   ///< MACed bytes after the header (keys, metadata, descriptors)
    std::uint32_t aux = 0;        ///< key length / count / shard; the status (errc) in replies
    std::uint64_t value_len = 0;  ///< total bytes of the value the operation moves
    std::uint64_t offset = 0;     ///< range start (get) or payload offset (data, inline payload)
    std::uint64_t length = 0;     ///< range length (get), TTL seconds (put), value size (get reply)
    std::uint32_t payload_len = 0; ///< payload bytes after the body in this frame (not MACed)
    std::uint32_t checksum = 0;    ///< CRC32C of those payload bytes
    std::uint64_t mac = 0;         ///< truncated HMAC-SHA256, see auth/frame_mac.hpp

    bool is_reply() const noexcept { return (op & reply_bit) != 0; }
    protocol::opcode code() const noexcept {
        return static_cast<protocol::opcode>(op & ~reply_bit);
    }
    /// The reply status (replies only): 0 for success, else a `memkv::errc` value.
    std::uint32_t status() const noexcept { return aux; }
};

/// Writes `h` into `out` (exactly header_size bytes), MAC field included as given.
inline void encode_header(const frame_header& h, std::span<std::byte, header_size> out) noexcept {
    detail::body_writer w(out);
    w.u32(frame_magic);
    w.u8(h.version);
    w.u8(h.op);
    w.u16(h.flags);
    w.u64(h.request_id);
    w.u32(h.body_len);
    w.u32(h.aux);
    w.u64(h.value_len);
    w.u64(h.offset);
    w.u64(h.length);
    w.u32(h.payload_len);
    w.u32(h.checksum);
    w.u64(h.mac); // at mac_offset
}

/// Overwrites only the MAC field of an encoded header.
inline void encode_mac(std::uint64_t mac, std::span<std::byte, header_size> out) noexcept {
    store_le64(out.data() + mac_offset, mac);
}

/// Decodes and validates a header against `lim`. Checks everything that can be checked without
/// the MAC: magic, version, opcode, flags, and every declared length against its cap, so that the
/// caller may allocate `body_len` and `payload_len` bytes afterwards. Returns `errc::protocol` for
/// a malformed header and `errc::too_large` for a length over a cap.
inline result<frame_header> decode_header(std::span<const std::byte, header_size> in,
                                          const limits& lim) noexcept {
    // Every read succeeds: the header is header_size bytes. The fields are read into scalars,
    // not through references into `h`: so `h` is built in registers rather than assembled in
    // memory and copied (which made decoding half again as slow).
    detail::body_reader r(in);
    std::uint32_t magic = 0, body_len = 0, aux = 0, payload_len = 0, checksum = 0;
    std::uint8_t version = 0, op_byte = 0;
    std::uint16_t fl = 0;
    std::uint64_t request_id = 0, value_len = 0, offset = 0, length = 0, mac = 0;
    (void)r.u32(magic);
    if (magic != frame_magic) return errc::protocol;
    (void)r.u8(version);
    (void)r.u8(op_byte);
    (void)r.u16(fl);
    (void)r.u64(request_id);
    (void)r.u32(body_len);
    (void)r.u32(aux);
    (void)r.u64(value_len);
    (void)r.u64(offset);
    (void)r.u64(length);
    (void)r.u32(payload_len);
    (void)r.u32(checksum);
    (void)r.u64(mac);
    frame_header h{.version = version,
                   .op = op_byte,
                   .flags = fl,
                   .request_id = request_id,
                   .body_len = body_len,
                   .aux = aux,
                   .value_len = value_len,
                   .offset = offset,
                   .length = length,
                   .payload_len = payload_len,
                   .checksum = checksum,
                   .mac = mac};
    if (h.version < version_min || h.version > version_max) return errc::protocol;
    const auto op = h.op & ~reply_bit;
    if (op < static_cast<int>(opcode::attach) || op > static_cast<int>(opcode::data))
        return errc::protocol;
    if ((h.flags & ~flags::all) != 0) return errc::protocol;
    if (h.body_len > lim.max_body) return errc::too_large;
    if (h.payload_len > lim.max_chunk) return errc::too_large;
    if (h.value_len > lim.max_value) return errc::too_large;
    // A frame's payload must lie inside its value.
    if (h.payload_len != 0 && (h.offset > h.value_len || h.payload_len > h.value_len - h.offset))
        return errc::protocol;
    return h;
}

} // namespace memkv::protocol
