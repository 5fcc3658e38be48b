// SPDX-License-Identifier: Apache-2.0
// Pure encoders and decoders of frame bodies (key/metadata, exists, batch, stats), shared by the
// client and the server. Layouts are specified in docs/protocol.md, section "Operations".
#pragma once

#include <memkv/error.hpp>
#include <memkv/protocol/body_codec.hpp>
#include <memkv/protocol/frame.hpp>
#include <memkv/protocol/limits.hpp>
#include <memkv/protocol/wire.hpp>
#include <memkv/result.hpp>

#include <algorithm>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

// Contract of every decoder below: `body` is exactly the frame's body (header.body_len bytes,
// already MAC-checked or about to be); every length is checked against `limits` and against the
// bytes actually present before anything is allocated or indexed; the result holds views into
// `body` (valid while the caller keeps that buffer) plus at most one vector bounded by
// max_batch. Failures: errc::protocol for a malformed body, errc::too_large for a length over a
// cap. Decoders accept only the canonical encoding (reserved bytes and padding bits zero, no
// trailing bytes), so decode followed by encode reproduces the body exactly.
//
// Encoders take values that already satisfy the caps (the caller validated them); a length that
// does not fit its field is a precondition violation (asserted in debug builds).

namespace memkv::protocol {

// ---------------------------------------------------------------------------------------------
// put / get / del requests: key (aux = key length), then metadata (put only; rest of the body)

/// The key and metadata of a put, get or del request; views into the caller's body buffer.
struct key_meta {
    std::span<const std::byte> key;  ///< 1..max_key bytes
    std::span<const std::byte> meta; ///< 0..max_meta bytes; always empty for get and del
};

/// Encodes a put/get/del request body: `key` then `meta` (empty for get and del). The header's
/// aux must be key.size() and body_len the returned size.
inline std::vector<std::byte> encode_key_meta(std::span<const std::byte> key,
                                              std::span<const std::byte> meta = {}) {
    std::vector<std::byte> out(key.size() + meta.size());
    detail::body_writer w(out);
    w.bytes(key);
    w.bytes(meta);
    return out;
}

/// Splits the body of a put, get or del request (no reply bit) into key and metadata. The key
/// length is header.aux (1..max_key); the metadata is the rest of the body (0..max_meta bytes,
/// and none for get and del). Since the metadata runs to the end of the body, its length is
/// defined by the MACed body_len.
inline result<key_meta> split_key_meta(const frame_header& h, std::span<const std::byte> body,
                                       const limits& lim) noexcept {
    const opcode op = h.code();
    if (h.is_reply() || (op != opcode::put && op != opcode::get && op != opcode::del))
        return errc::protocol;
    if (body.size() != h.body_len) return errc::protocol;
    const std::uint32_t key_len = h.aux;
    if (key_len == 0) return errc::protocol;
    if (key_len > lim.max_key) return errc::too_large;
    if (key_len > body.size()) return errc::protocol;
    const std::size_t meta_len = body.size() - key_len;
    if (meta_len != 0 && op != opcode::put) return errc::protocol;
    if (meta_len > lim.max_meta) return errc::too_large;
    return key_meta{body.first(key_len), body.subspan(key_len)};
}

/// The metadata carried by a get reply's body (0..max_meta bytes; a view into `body`). A reply
/// with a non-zero status must have an empty body.
inline result<std::span<const std::byte>> decode_get_reply_meta(const frame_header& h,
                                                                std::span<const std::byte> body,
                                                                const limits& lim) noexcept {
    if (!h.is_reply() || h.code() != opcode::get) return errc::protocol;
    if (body.size() != h.body_len) return errc::protocol;
    if (h.status() != 0 && !body.empty()) return errc::protocol;
    if (body.size() > lim.max_meta) return errc::too_large;
    return body;
}

// ---------------------------------------------------------------------------------------------
// exists: request body = aux x (u16 key_len, key); reply body = bitmap [sizes] [metadata]

/// Encodes an exists request body; the header's aux must be keys.size() (1..max_batch) and
/// body_len the returned size. Each key is 1..max_key (<= 65535) bytes.
inline std::vector<std::byte>
encode_exists_request(std::span<const std::span<const std::byte>> keys) {
    std::size_t n = 0;
    for (const auto& k : keys)
        n += 2 + k.size();
    std::vector<std::byte> out(n);
    detail::body_writer w(out);
    for (const auto& k : keys) {
        assert(!k.empty() && k.size() <= 0xffff);
        w.u16(static_cast<std::uint16_t>(k.size()));
        w.bytes(k);
    }
    return out;
}

/// Decodes an exists request body: header.aux keys (1..max_batch), each a u16 length
/// (1..max_key) and that many bytes, filling the body exactly. Returns views into `body`.
inline result<std::vector<std::span<const std::byte>>>
decode_exists_request(const frame_header& h, std::span<const std::byte> body, const limits& lim) {
    if (h.is_reply() || h.code() != opcode::exists) return errc::protocol;
    if (body.size() != h.body_len) return errc::protocol;
    const std::uint32_t count = h.aux;
    if (count == 0) return errc::protocol;
    if (count > lim.max_batch) return errc::too_large;
    if (count > body.size() / 3) return errc::protocol; // every entry takes at least 3 bytes
    std::vector<std::span<const std::byte>> keys;
    keys.reserve(count);
    detail::body_reader r(body);
    for (std::uint32_t i = 0; i < count; ++i) {
        std::uint16_t len = 0;
        if (!r.u16(len) || len == 0) return errc::protocol;
        if (len > lim.max_key) return errc::too_large;
        std::span<const std::byte> key;
        if (!r.bytes(len, key)) return errc::protocol;
        keys.push_back(key);
    }
    if (r.remaining() != 0) return errc::protocol;
    return keys;
}

/// An exists reply. `present` has one entry per requested key, in request order; `sizes` and
/// `meta` are filled only when the request asked for them (flags::want_sizes, want_meta), with
/// 0 and empty for absent keys. `meta` views point into the decoded body.
struct exists_reply {
    std::vector<bool> present;                    ///< key i is stored
    std::vector<std::uint64_t> sizes;             ///< value sizes, or empty
    std::vector<std::span<const std::byte>> meta; ///< per-value metadata, or empty
};

/// Bytes in the bitmap of an exists reply for `count` keys.
constexpr std::size_t exists_bitmap_size(std::uint32_t count) noexcept {
    return (std::size_t{count} + 7) / 8;
}

/// Encodes an exists reply body for a request with `request_flags`. Layout: bitmap of
/// ceil(count/8) bytes (bit i = key i present, LSB first, padding bits zero); if want_sizes,
/// count x u64 sizes; if want_meta, count x (u16 length, bytes). Absent keys are always written
/// as size 0 and empty metadata. Preconditions: sizes and meta have present.size() entries when
/// requested; metadata entries are at most max_meta bytes.
inline std::vector<std::byte> encode_exists_reply(const exists_reply& r,
                                                  std::uint16_t request_flags) {
    const std::size_t count = r.present.size();
    const bool want_sizes = (request_flags & flags::want_sizes) != 0;
    const bool want_meta = (request_flags & flags::want_meta) != 0;
    assert(!want_sizes || r.sizes.size() == count);
    assert(!want_meta || r.meta.size() == count);
    std::size_t n = exists_bitmap_size(static_cast<std::uint32_t>(count));
    if (want_sizes) n += 8 * count;
    if (want_meta) {
        n += 2 * count;
        for (std::size_t i = 0; i < count; ++i)
            if (r.present[i]) n += r.meta[i].size();
    }
    std::vector<std::byte> out(n);
    for (std::size_t i = 0; i < count; ++i)
        if (r.present[i]) out[i / 8] |= std::byte{static_cast<std::uint8_t>(1u << (i % 8))};
    detail::body_writer w(out);
    w.skip(exists_bitmap_size(static_cast<std::uint32_t>(count)));
    if (want_sizes)
        for (std::size_t i = 0; i < count; ++i)
            w.u64(r.present[i] ? r.sizes[i] : 0);
    if (want_meta) {
        for (std::size_t i = 0; i < count; ++i) {
            const auto m = r.present[i] ? r.meta[i] : std::span<const std::byte>{};
            assert(m.size() <= 0xffff);
            w.u16(static_cast<std::uint16_t>(m.size()));
            w.bytes(m);
        }
    }
    assert(w.size() == n);
    return out;
}

/// Decodes an exists reply body, given the request's key count and flags. Rejects padding bits
/// set, a size or metadata for an absent key, sizes over max_value, metadata over max_meta, and
/// a body that is not exactly the layout's size.
inline result<exists_reply> decode_exists_reply(std::uint32_t count, std::uint16_t request_flags,
                                                std::span<const std::byte> body,
                                                const limits& lim) {
    if (count == 0) return errc::protocol;
    if (count > lim.max_batch) return errc::too_large;
    const bool want_sizes = (request_flags & flags::want_sizes) != 0;
    const bool want_meta = (request_flags & flags::want_meta) != 0;
    const std::size_t bitmap_len = exists_bitmap_size(count);
    std::size_t min_len = bitmap_len;
    if (want_sizes) min_len += 8 * std::size_t{count};
    if (want_meta) min_len += 2 * std::size_t{count};
    if (body.size() < min_len) return errc::protocol;
    if (!want_meta && body.size() != min_len) return errc::protocol;
    if (count % 8 != 0 && (std::to_integer<unsigned>(body[bitmap_len - 1]) >> (count % 8)) != 0)
        return errc::protocol; // padding bits must be zero
    exists_reply out;
    out.present.resize(count);
    for (std::uint32_t i = 0; i < count; ++i)
        out.present[i] = ((std::to_integer<unsigned>(body[i / 8]) >> (i % 8)) & 1u) != 0;
    detail::body_reader r(body.subspan(bitmap_len));
    if (want_sizes) {
        out.sizes.resize(count);
        for (std::uint32_t i = 0; i < count; ++i) {
            std::uint64_t size = 0;
            if (!r.u64(size)) return errc::protocol;
            if (!out.present[i] && size != 0) return errc::protocol;
            if (size > lim.max_value) return errc::too_large;
            out.sizes[i] = size;
        }
    }
    if (want_meta) {
        out.meta.resize(count);
        for (std::uint32_t i = 0; i < count; ++i) {
            std::uint16_t len = 0;
            if (!r.u16(len)) return errc::protocol;
            if (!out.present[i] && len != 0) return errc::protocol;
            if (len > lim.max_meta) return errc::too_large;
            if (!r.bytes(len, out.meta[i])) return errc::protocol;
        }
    }
    if (r.remaining() != 0) return errc::protocol;
    return out;
}

// ---------------------------------------------------------------------------------------------
// batch: aux sub-requests, each a 40-byte descriptor followed by its key and metadata

/// Bytes in a batch sub-request descriptor. Layout (little-endian):
///   0 u8 opcode (put, get or del)   1 u8 reserved (0)   2 u16 flags   4 u16 key_len
///   6 u16 meta_len   8 u64 sub_request_id   16 u64 value_len   24 u64 offset   32 u64 length
/// followed by key_len key bytes and meta_len metadata bytes (no padding).
inline constexpr std::size_t batch_descriptor_size = 40;

/// One sub-request of a batch frame. Its reply is an ordinary reply frame of opcode `op` whose
/// request_id is `id`; a put's value follows in `data` frames tagged with `id`. Field meanings
/// are those of the corresponding header fields of a stand-alone request.
struct sub_request {
    opcode op = opcode::get;         ///< put, get or del
    std::uint16_t flags = 0;         ///< within flags::all
    std::uint64_t id = 0;            ///< request id of this sub-request (never reused)
    std::uint64_t value_len = 0;     ///< put: value bytes (<= max_value); get, del: 0
    std::uint64_t offset = 0;        ///< get: range start; put, del: 0
    std::uint64_t length = 0;        ///< get: range length (0 = to the end); put: TTL s; del: 0
    std::span<const std::byte> key;  ///< 1..max_key bytes
    std::span<const std::byte> meta; ///< put: 0..max_meta bytes; get, del: empty
};

/// Encodes a batch body; the header's aux must be subs.size() (1..max_batch) and body_len the
/// returned size.
inline std::vector<std::byte> encode_batch(std::span<const sub_request> subs) {
    std::size_t n = 0;
    for (const auto& s : subs)
        n += batch_descriptor_size + s.key.size() + s.meta.size();
    std::vector<std::byte> out(n);
    detail::body_writer w(out);
    for (const auto& s : subs) {
        assert(s.key.size() <= 0xffff && s.meta.size() <= 0xffff);
        w.u8(static_cast<std::uint8_t>(s.op));
        w.u8(0);
        w.u16(s.flags);
        w.u16(static_cast<std::uint16_t>(s.key.size()));
        w.u16(static_cast<std::uint16_t>(s.meta.size()));
        w.u64(s.id);
        w.u64(s.value_len);
        w.u64(s.offset);
        w.u64(s.length);
        w.bytes(s.key);
        w.bytes(s.meta);
    }
    return out;
}

/// Decodes a batch body: header.aux sub-requests (1..max_batch) filling the body exactly. Each
/// is checked on its own: opcode put, get or del; reserved byte zero; flags within flags::all;
/// key 1..max_key; metadata <= max_meta and only on put; value_len <= max_value and only on put;
/// offset zero on put and del, length zero on del. Duplicate ids are not checked here.
inline result<std::vector<sub_request>>
decode_batch(const frame_header& h, std::span<const std::byte> body, const limits& lim) {
    if (h.is_reply() || h.code() != opcode::batch) return errc::protocol;
    if (body.size() != h.body_len) return errc::protocol;
    const std::uint32_t count = h.aux;
    if (count == 0) return errc::protocol;
    if (count > lim.max_batch) return errc::too_large;
    if (count > body.size() / (batch_descriptor_size + 1)) return errc::protocol;
    std::vector<sub_request> subs;
    subs.reserve(count);
    detail::body_reader r(body);
    for (std::uint32_t i = 0; i < count; ++i) {
        if (r.remaining() < batch_descriptor_size) return errc::protocol;
        std::uint8_t op = 0, reserved = 0;
        std::uint16_t fl = 0, key_len = 0, meta_len = 0;
        sub_request s;
        (void)r.u8(op);
        (void)r.u8(reserved);
        (void)r.u16(fl);
        (void)r.u16(key_len);
        (void)r.u16(meta_len);
        (void)r.u64(s.id);
        (void)r.u64(s.value_len);
        (void)r.u64(s.offset);
        (void)r.u64(s.length);
        s.op = static_cast<opcode>(op);
        s.flags = fl;
        const bool is_put = s.op == opcode::put;
        if (!is_put && s.op != opcode::get && s.op != opcode::del) return errc::protocol;
        if (reserved != 0 || (fl & ~flags::all) != 0) return errc::protocol;
        if (key_len == 0) return errc::protocol;
        if (key_len > lim.max_key || meta_len > lim.max_meta || s.value_len > lim.max_value)
            return errc::too_large;
        if (!is_put && (meta_len != 0 || s.value_len != 0)) return errc::protocol;
        if (s.op != opcode::get && s.offset != 0) return errc::protocol;
        if (s.op == opcode::del && s.length != 0) return errc::protocol;
        if (!r.bytes(key_len, s.key) || !r.bytes(meta_len, s.meta)) return errc::protocol;
        subs.push_back(s);
    }
    if (r.remaining() != 0) return errc::protocol;
    return subs;
}

// ---------------------------------------------------------------------------------------------
// stats reply: u32 count, then count x (u16 name_len, name, u64 value)

/// Most bytes in a counter name of a stats reply.
inline constexpr std::size_t stats_max_name = 128;
/// Most counters in a stats reply.
inline constexpr std::uint32_t stats_max_count = 4096;

/// Encodes a stats reply body. Preconditions: at most stats_max_count entries; names are
/// 1..stats_max_name bytes (by convention lower-case ASCII, e.g. "get_hits").
inline std::vector<std::byte>
encode_stats(std::span<const std::pair<std::string_view, std::uint64_t>> stats) {
    assert(stats.size() <= stats_max_count);
    std::size_t n = 4;
    for (const auto& [name, value] : stats)
        n += 2 + name.size() + 8;
    std::vector<std::byte> out(n);
    detail::body_writer w(out);
    w.u32(static_cast<std::uint32_t>(stats.size()));
    for (const auto& [name, value] : stats) {
        assert(!name.empty() && name.size() <= stats_max_name);
        w.u16(static_cast<std::uint16_t>(name.size()));
        w.bytes(std::as_bytes(std::span<const char>(name.data(), name.size())));
        w.u64(value);
    }
    return out;
}

/// Decodes a stats reply body: at most stats_max_count counters (else too_large), names of
/// 1..stats_max_name bytes (an empty name is malformed, a longer one too_large), filling the
/// body exactly. Names are copied; they are not checked for character set.
inline result<std::vector<std::pair<std::string, std::uint64_t>>>
decode_stats(std::span<const std::byte> body) {
    detail::body_reader r(body);
    std::uint32_t count = 0;
    if (!r.u32(count)) return errc::protocol;
    if (count > stats_max_count) return errc::too_large;
    if (count > r.remaining() / 11) return errc::protocol; // every entry takes at least 11 bytes
    std::vector<std::pair<std::string, std::uint64_t>> out;
    out.reserve(count);
    for (std::uint32_t i = 0; i < count; ++i) {
        std::uint16_t len = 0;
        if (!r.u16(len) || len == 0) return errc::protocol;
        if (len > stats_max_name) return errc::too_large;
        std::span<const std::byte> name;
        std::uint64_t value = 0;
        if (!r.bytes(len, name) || !r.u64(value)) return errc::protocol;
        out.emplace_back(std::string(reinterpret_cast<const char*>(name.data()), name.size()),
                         value);
    }
    if (r.remaining() != 0) return errc::protocol;
    return out;
}

} // namespace memkv::protocol
