// SPDX-License-Identifier: Apache-2.0
// Frame header and frame body codecs: round trips, every rejection path, truncations, garbage,
// and the byte-exact examples of docs/protocol.md.
#include "support/catch.hpp"
#include "support/seed.hpp"

#include <memkv/protocol/frame.hpp>
#include <memkv/protocol/messages.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <string_view>
#include <vector>

using namespace memkv::protocol;
using memkv::errc;

namespace {

using bytes = std::vector<std::byte>;
using header_bytes = std::array<std::byte, header_size>;

std::span<const std::byte> as_span(std::string_view s) {
    return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

bytes from_hex(std::string_view hex) {
    bytes out;
    int nibble = -1;
    for (char c : hex) {
        int v = -1;
        if (c >= '0' && c <= '9') v = c - '0';
        if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
        if (v < 0) continue;
        if (nibble < 0) {
            nibble = v;
        } else {
            out.push_back(std::byte(static_cast<std::uint8_t>(nibble * 16 + v)));
            nibble = -1;
        }
    }
    return out;
}

bytes random_bytes(std::mt19937_64& g, std::size_t n) {
    bytes out(n);
    for (auto& b : out)
        b = std::byte(static_cast<std::uint8_t>(g()));
    return out;
}

std::uint64_t uniform(std::mt19937_64& g, std::uint64_t lo, std::uint64_t hi) {
    return std::uniform_int_distribution<std::uint64_t>(lo, hi)(g);
}

header_bytes encode(const frame_header& h) {
    header_bytes out{};
    encode_header(h, out);
    return out;
}

memkv::result<frame_header> decode(const header_bytes& in, const limits& lim = {}) {
    return decode_header(in, lim);
}

frame_header request(opcode op, std::uint32_t aux, std::size_t body_len, std::uint16_t fl = 0) {
    frame_header h;
    h.op = static_cast<std::uint8_t>(op);
    h.aux = aux;
    h.body_len = static_cast<std::uint32_t>(body_len);
    h.flags = fl;
    return h;
}

bool is_clean_failure(std::error_code ec) {
    return ec == errc::protocol || ec == errc::too_large;
}

bool same(std::span<const std::byte> a, std::span<const std::byte> b) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

/// A random header that decode_header must accept under the default limits.
frame_header random_valid_header(std::mt19937_64& g, std::uint8_t op) {
    const limits lim;
    frame_header h;
    h.op = op;
    h.flags = static_cast<std::uint16_t>(g() & flags::all);
    h.request_id = g();
    h.body_len = static_cast<std::uint32_t>(uniform(g, 0, lim.max_body));
    h.aux = static_cast<std::uint32_t>(g());
    h.value_len = uniform(g, 0, lim.max_value);
    h.length = g();
    if (g() % 2 == 0 && h.value_len > 0) {
        h.payload_len = static_cast<std::uint32_t>(
            uniform(g, 1, std::min<std::uint64_t>(lim.max_chunk, h.value_len)));
        h.offset = uniform(g, 0, h.value_len - h.payload_len);
    } else {
        h.offset = g(); // no payload: offset is a range start, unconstrained by the header
    }
    h.checksum = static_cast<std::uint32_t>(g());
    h.mac = g();
    return h;
}

void require_same_header(const frame_header& a, const frame_header& b) {
    CHECK(a.version == b.version);
    CHECK(a.op == b.op);
    CHECK(a.flags == b.flags);
    CHECK(a.request_id == b.request_id);
    CHECK(a.body_len == b.body_len);
    CHECK(a.aux == b.aux);
    CHECK(a.value_len == b.value_len);
    CHECK(a.offset == b.offset);
    CHECK(a.length == b.length);
    CHECK(a.payload_len == b.payload_len);
    CHECK(a.checksum == b.checksum);
    CHECK(a.mac == b.mac);
}

/// Every strict prefix of `body` must fail to decode (with a header whose body_len matches).
template <class Decode>
void require_truncations_rejected(const bytes& body, Decode&& decode_prefix) {
    std::size_t accepted = 0;
    for (std::size_t n = 0; n < body.size(); ++n) {
        auto r = decode_prefix(std::span<const std::byte>(body.data(), n));
        if (r) {
            ++accepted;
            UNSCOPED_INFO("prefix of " << n << " bytes out of " << body.size() << " accepted");
        } else {
            REQUIRE(is_clean_failure(r.error()));
        }
    }
    REQUIRE(accepted == 0);
}

struct random_keys {
    std::vector<bytes> storage;
    std::vector<std::span<const std::byte>> views;
};

random_keys make_keys(std::mt19937_64& g, std::size_t count, std::size_t max_len) {
    random_keys k;
    k.storage.reserve(count);
    for (std::size_t i = 0; i < count; ++i)
        k.storage.push_back(random_bytes(g, uniform(g, 1, max_len)));
    for (const auto& s : k.storage)
        k.views.emplace_back(s);
    return k;
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Frame header

TEST_CASE("Frame headers round-trip for every opcode with random field values", "[protocol]") {
    auto g = memkv::test::rng(0x1001);
    for (int op = static_cast<int>(opcode::attach); op <= static_cast<int>(opcode::data); ++op) {
        for (std::uint8_t bit : {std::uint8_t{0}, reply_bit}) {
            for (int i = 0; i < 200; ++i) {
                const auto h = random_valid_header(g, static_cast<std::uint8_t>(op | bit));
                const auto wire = encode(h);
                auto d = decode(wire);
                INFO("opcode " << op << " reply " << int(bit));
                REQUIRE(d);
                require_same_header(h, *d);
                REQUIRE(d->code() == static_cast<opcode>(op));
                REQUIRE(d->is_reply() == (bit != 0));
                REQUIRE(encode(*d) == wire);
            }
        }
    }
}

TEST_CASE("The header layout puts every field at its documented offset", "[protocol]") {
    frame_header h;
    h.op = 0x82;
    h.flags = 0x0102;
    h.request_id = 0x1112131415161718;
    h.body_len = 0x21222324;
    h.aux = 0x31323334;
    h.value_len = 0x4142434445464748;
    h.offset = 0x5152535455565758;
    h.length = 0x6162636465666768;
    h.payload_len = 0x71727374;
    h.checksum = 0x81828384;
    h.mac = 0x9192939495969798;
    const auto w = encode(h);
    const bytes expected = from_hex("4d4b5646 01 82 0201 1817161514131211 24232221 34333231"
                                    "4847464544434241 5857565554535251 6867666564636261"
                                    "74737271 84838281 9897969594939291");
    REQUIRE(expected.size() == header_size);
    REQUIRE(same(w, expected));
    header_bytes patched = w;
    encode_mac(0x0102030405060708, patched);
    REQUIRE(same(std::span(patched).first(mac_offset), std::span(w).first(mac_offset)));
    REQUIRE(same(std::span(patched).subspan(mac_offset), from_hex("0807060504030201")));
}

TEST_CASE("decode_header rejects a bad magic", "[protocol]") {
    const auto good = encode(request(opcode::ping, 0, 0));
    REQUIRE(decode(good));
    for (std::size_t i = 0; i < 4; ++i) {
        for (unsigned x : {0x01u, 0x20u, 0x80u, 0xffu}) {
            auto bad = good;
            bad[i] ^= std::byte(static_cast<std::uint8_t>(x));
            REQUIRE(decode(bad).error() == errc::protocol);
        }
    }
    header_bytes zeros{};
    REQUIRE(decode(zeros).error() == errc::protocol);
}

TEST_CASE("decode_header rejects versions outside the supported range", "[protocol]") {
    for (int v = 0; v < 256; ++v) {
        auto h = request(opcode::ping, 0, 0);
        h.version = static_cast<std::uint8_t>(v);
        const bool ok = v >= version_min && v <= version_max;
        auto d = decode(encode(h));
        INFO("version " << v);
        if (ok) {
            REQUIRE(d);
        } else {
            REQUIRE(d.error() == errc::protocol);
        }
    }
}

TEST_CASE("decode_header rejects unknown opcodes with or without the reply bit", "[protocol]") {
    for (int op = 0; op < 256; ++op) {
        auto h = request(opcode::ping, 0, 0);
        h.op = static_cast<std::uint8_t>(op);
        const int base = op & 0x7f;
        const bool known =
            base >= static_cast<int>(opcode::attach) && base <= static_cast<int>(opcode::data);
        auto d = decode(encode(h));
        INFO("opcode byte " << op);
        if (known) {
            REQUIRE(d);
        } else {
            REQUIRE(d.error() == errc::protocol);
        }
    }
}

TEST_CASE("decode_header rejects every undefined flag bit", "[protocol]") {
    for (int bit = 0; bit < 16; ++bit) {
        auto h = request(opcode::put, 1, 1);
        h.flags = static_cast<std::uint16_t>(1u << bit);
        auto d = decode(encode(h));
        INFO("flag bit " << bit);
        if (((1u << bit) & flags::all) != 0) {
            REQUIRE(d);
        } else {
            REQUIRE(d.error() == errc::protocol);
        }
    }
    auto h = request(opcode::put, 1, 1);
    h.flags = flags::all;
    REQUIRE(decode(encode(h)));
    h.flags = 0xffff;
    REQUIRE(decode(encode(h)).error() == errc::protocol);
}

TEST_CASE("decode_header rejects declared lengths over their caps", "[protocol]") {
    const limits lim;
    SECTION("body length") {
        for (std::uint32_t n :
             {lim.max_body + 1, 1u << 31, std::numeric_limits<std::uint32_t>::max()}) {
            auto h = request(opcode::put, 1, 0);
            h.body_len = n;
            REQUIRE(decode(encode(h)).error() == errc::too_large);
        }
        auto h = request(opcode::put, 1, lim.max_body);
        REQUIRE(decode(encode(h)));
    }
    SECTION("payload length") {
        for (std::uint32_t n :
             {lim.max_chunk + 1, 1u << 31, std::numeric_limits<std::uint32_t>::max()}) {
            auto h = request(opcode::data, 0, 0);
            h.value_len = lim.max_value;
            h.payload_len = n;
            REQUIRE(decode(encode(h)).error() == errc::too_large);
        }
        auto h = request(opcode::data, 0, 0);
        h.value_len = lim.max_value;
        h.payload_len = lim.max_chunk;
        REQUIRE(decode(encode(h)));
    }
    SECTION("value length") {
        for (std::uint64_t n : {lim.max_value + 1, std::uint64_t{1} << 31, std::uint64_t{1} << 63,
                                std::numeric_limits<std::uint64_t>::max()}) {
            if (n <= lim.max_value) continue;
            auto h = request(opcode::put, 1, 1);
            h.value_len = n;
            REQUIRE(decode(encode(h)).error() == errc::too_large);
        }
        auto h = request(opcode::put, 1, 1);
        h.value_len = lim.max_value;
        REQUIRE(decode(encode(h)));
    }
    SECTION("configured caps are honoured, not the defaults") {
        limits small;
        small.max_body = 100;
        small.max_chunk = 10;
        small.max_value = 1000;
        auto h = request(opcode::put, 1, 101);
        REQUIRE(decode(encode(h), small).error() == errc::too_large);
        h.body_len = 100;
        h.value_len = 1001;
        REQUIRE(decode(encode(h), small).error() == errc::too_large);
        h.value_len = 1000;
        h.payload_len = 11;
        REQUIRE(decode(encode(h), small).error() == errc::too_large);
        h.payload_len = 10;
        REQUIRE(decode(encode(h), small));
    }
}

TEST_CASE("decode_header rejects a payload that lies outside its value", "[protocol]") {
    auto h = request(opcode::data, 0, 0);
    h.value_len = 1000;
    h.payload_len = 100;
    h.offset = 900;
    REQUIRE(decode(encode(h))); // ends exactly at the end of the value
    for (std::uint64_t off :
         {std::uint64_t{901}, std::uint64_t{1000}, std::uint64_t{1001}, std::uint64_t{1} << 31,
          std::uint64_t{1} << 63, std::numeric_limits<std::uint64_t>::max() - 50,
          std::numeric_limits<std::uint64_t>::max()}) {
        h.offset = off;
        INFO("offset " << off);
        REQUIRE(decode(encode(h)).error() == errc::protocol);
    }
    h.value_len = 0; // any payload in an empty value is outside it
    h.offset = 0;
    h.payload_len = 1;
    REQUIRE(decode(encode(h)).error() == errc::protocol);
    h.payload_len = 0; // no payload: offset unconstrained (a get's range start)
    h.offset = std::numeric_limits<std::uint64_t>::max();
    REQUIRE(decode(encode(h)));
}

TEST_CASE("decode_header never accepts a random header that breaks an invariant", "[protocol]") {
    auto g = memkv::test::rng(0x1002);
    const limits lim;
    int accepted = 0;
    for (int i = 0; i < 20000; ++i) {
        header_bytes w{};
        for (auto& b : w)
            b = std::byte(static_cast<std::uint8_t>(g()));
        store_le32(w.data(), frame_magic);
        if (g() % 2) w[4] = std::byte{1};
        if (g() % 2) w[5] = std::byte(static_cast<std::uint8_t>(1 + g() % 9));
        if (g() % 2) store_le16(w.data() + 6, static_cast<std::uint16_t>(g() & flags::all));
        if (g() % 2)
            store_le32(w.data() + 16, static_cast<std::uint32_t>(g() % (2 * lim.max_body)));
        if (g() % 2) store_le64(w.data() + 24, g() % (2 * lim.max_value));
        if (g() % 2)
            store_le32(w.data() + 48, static_cast<std::uint32_t>(g() % (2 * lim.max_chunk)));
        if (g() % 2) store_le64(w.data() + 32, g() % (2 * lim.max_value));
        auto d = decode(w);
        if (!d) {
            REQUIRE(is_clean_failure(d.error()));
            continue;
        }
        ++accepted;
        REQUIRE(d->body_len <= lim.max_body);
        REQUIRE(d->payload_len <= lim.max_chunk);
        REQUIRE(d->value_len <= lim.max_value);
        REQUIRE((d->flags & ~flags::all) == 0);
        if (d->payload_len != 0) REQUIRE(d->offset + d->payload_len <= d->value_len);
        REQUIRE(encode(*d) == w);
    }
    REQUIRE(accepted > 0);
}

TEST_CASE("The attach and put frames of docs/protocol.md encode to the documented bytes",
          "[protocol]") {
    SECTION("attach to shard 2, request id 1, sequence 0") {
        frame_header h;
        h.op = static_cast<std::uint8_t>(opcode::attach);
        h.request_id = 1;
        h.aux = 2;
        h.mac = 0xbdf8ee14ba7cb9fe;
        const bytes expected = from_hex("4d4b5646010100000100000000000000"
                                        "00000000020000000000000000000000"
                                        "00000000000000000000000000000000"
                                        "0000000000000000feb97cba14eef8bd");
        REQUIRE(same(encode(h), expected));
    }
    SECTION("put of key \"abc\" with metadata \"fp16\" and a 16-byte inline value") {
        frame_header h;
        h.op = static_cast<std::uint8_t>(opcode::put);
        h.flags = flags::if_absent | flags::durable;
        h.request_id = 7;
        h.body_len = 7;
        h.aux = 3;
        h.value_len = 16;
        h.offset = 0;
        h.length = 3600;
        h.payload_len = 16;
        h.checksum = 0x42d3119e;
        h.mac = 0xbef34e897740ee61;
        const bytes expected = from_hex("4d4b5646010203000700000000000000"
                                        "07000000030000001000000000000000"
                                        "0000000000000000100e000000000000"
                                        "100000009e11d34261ee4077894ef3be");
        REQUIRE(same(encode(h), expected));
        header_bytes w{};
        std::copy(expected.begin(), expected.end(), w.begin());
        auto d = decode(w);
        REQUIRE(d);
        require_same_header(h, *d);
        const bytes body = from_hex("61626366703136");
        auto km = split_key_meta(*d, body, limits{});
        REQUIRE(km);
        REQUIRE(same(km->key, as_span("abc")));
        REQUIRE(same(km->meta, as_span("fp16")));
    }
}

// ---------------------------------------------------------------------------------------------
// put / get / del bodies

TEST_CASE("Key and metadata bodies round-trip for put, get and del", "[protocol]") {
    auto g = memkv::test::rng(0x2001);
    const limits lim;
    for (int i = 0; i < 500; ++i) {
        const auto key = random_bytes(g, uniform(g, 1, lim.max_key));
        const auto meta = random_bytes(g, uniform(g, 0, lim.max_meta));
        const auto body = encode_key_meta(key, meta);
        auto r = split_key_meta(
            request(opcode::put, static_cast<std::uint32_t>(key.size()), body.size()), body, lim);
        REQUIRE(r);
        REQUIRE(same(r->key, key));
        REQUIRE(same(r->meta, meta));
        REQUIRE(r->key.data() == body.data()); // views into the caller's buffer
        for (opcode op : {opcode::get, opcode::del}) {
            const auto kb = encode_key_meta(key);
            auto k = split_key_meta(request(op, static_cast<std::uint32_t>(key.size()), kb.size()),
                                    kb, lim);
            REQUIRE(k);
            REQUIRE(same(k->key, key));
            REQUIRE(k->meta.empty());
        }
    }
}

TEST_CASE("Key and metadata bodies are rejected when malformed or over a cap", "[protocol]") {
    const limits lim;
    const bytes key(10, std::byte{'k'});
    const bytes meta(20, std::byte{'m'});
    const auto body = encode_key_meta(key, meta);
    auto put = [&](std::uint32_t key_len, std::span<const std::byte> b) {
        return split_key_meta(request(opcode::put, key_len, b.size()), b, lim);
    };
    REQUIRE(put(10, body));
    REQUIRE(put(0, body).error() == errc::protocol);                // empty key
    REQUIRE(put(31, body).error() == errc::protocol);               // key past the body
    REQUIRE(put(lim.max_key + 1, body).error() == errc::too_large); // key over cap
    REQUIRE(put(std::uint32_t{1} << 31, body).error() == errc::too_large);
    const bytes long_meta(10 + lim.max_meta + 1, std::byte{1});
    REQUIRE(put(10, long_meta).error() == errc::too_large); // metadata over cap
    const bytes max_body(lim.max_key + lim.max_meta, std::byte{1});
    REQUIRE(put(lim.max_key, max_body));
    // get and del carry no metadata
    for (opcode op : {opcode::get, opcode::del}) {
        REQUIRE(split_key_meta(request(op, 10, body.size()), body, lim).error() == errc::protocol);
        REQUIRE(split_key_meta(request(op, 30, body.size()), body, lim));
    }
    // body_len must match the body, the opcode must be put/get/del, and no reply bit
    REQUIRE(split_key_meta(request(opcode::put, 10, body.size() + 1), body, lim).error() ==
            errc::protocol);
    for (opcode op : {opcode::attach, opcode::exists, opcode::stats, opcode::ping, opcode::batch,
                      opcode::data}) {
        REQUIRE(split_key_meta(request(op, 10, body.size()), body, lim).error() == errc::protocol);
    }
    auto reply = request(opcode::put, 10, body.size());
    reply.op |= reply_bit;
    REQUIRE(split_key_meta(reply, body, lim).error() == errc::protocol);
}

TEST_CASE("Truncated key bodies are rejected; metadata runs to the declared body end",
          "[protocol]") {
    const limits lim;
    const bytes key(16, std::byte{'k'});
    const bytes meta(8, std::byte{'m'});
    const auto body = encode_key_meta(key, meta);
    for (std::size_t n = 0; n < body.size(); ++n) {
        const std::span<const std::byte> prefix(body.data(), n);
        auto r = split_key_meta(request(opcode::put, 16, n), prefix, lim);
        if (n < key.size()) {
            REQUIRE(r.error() == errc::protocol);
        } else {
            // The metadata length is body_len - key_len: a shorter (MACed) body_len declares a
            // shorter metadata; nothing else can detect it.
            REQUIRE(r);
            REQUIRE(r->meta.size() == n - key.size());
        }
        for (opcode op : {opcode::get, opcode::del}) {
            auto k = split_key_meta(request(op, 16, n), prefix, lim);
            if (n < key.size()) REQUIRE(k.error() == errc::protocol);
        }
    }
}

TEST_CASE("Get reply metadata is bounded and absent from failed replies", "[protocol]") {
    const limits lim;
    auto h = request(opcode::get, 0, 4);
    h.op |= reply_bit;
    const bytes meta(4, std::byte{7});
    REQUIRE(decode_get_reply_meta(h, meta, lim));
    REQUIRE(decode_get_reply_meta(h, meta, lim)->size() == 4);
    h.aux = static_cast<std::uint32_t>(errc::not_found);
    REQUIRE(decode_get_reply_meta(h, meta, lim).error() == errc::protocol);
    h.body_len = 0;
    REQUIRE(decode_get_reply_meta(h, {}, lim));
    h.aux = 0;
    const bytes big(lim.max_meta + 1, std::byte{1});
    h.body_len = static_cast<std::uint32_t>(big.size());
    REQUIRE(decode_get_reply_meta(h, big, lim).error() == errc::too_large);
    REQUIRE(decode_get_reply_meta(request(opcode::get, 0, 4), meta, lim).error() == errc::protocol);
}

// ---------------------------------------------------------------------------------------------
// exists

TEST_CASE("Exists requests round-trip", "[protocol]") {
    auto g = memkv::test::rng(0x3001);
    const limits lim;
    for (int i = 0; i < 300; ++i) {
        const std::size_t count = i == 0 ? lim.max_batch : uniform(g, 1, 64);
        const auto keys = make_keys(g, count, i % 3 == 0 ? lim.max_key : 40);
        const auto body = encode_exists_request(keys.views);
        auto r = decode_exists_request(
            request(opcode::exists, static_cast<std::uint32_t>(count), body.size()), body, lim);
        REQUIRE(r);
        REQUIRE(r->size() == count);
        for (std::size_t k = 0; k < count; ++k)
            REQUIRE(same((*r)[k], keys.views[k]));
    }
}

TEST_CASE("Exists requests are rejected when malformed or over a cap", "[protocol]") {
    const limits lim;
    auto g = memkv::test::rng(0x3002);
    const auto keys = make_keys(g, 5, 30);
    const auto body = encode_exists_request(keys.views);
    auto dec = [&](std::uint32_t count, std::span<const std::byte> b, const limits& l = {}) {
        return decode_exists_request(request(opcode::exists, count, b.size()), b, l);
    };
    REQUIRE(dec(5, body));
    REQUIRE(dec(0, body).error() == errc::protocol);
    REQUIRE(dec(4, body).error() == errc::protocol); // trailing entry
    REQUIRE(dec(6, body).error() == errc::protocol); // missing entry
    REQUIRE(dec(lim.max_batch + 1, body).error() == errc::too_large);
    REQUIRE(dec(std::numeric_limits<std::uint32_t>::max(), body).error() == errc::too_large);
    REQUIRE(dec(1u << 31, body).error() == errc::too_large);
    limits small;
    small.max_batch = 4;
    REQUIRE(dec(5, body, small).error() == errc::too_large);
    small = {};
    small.max_key = 10;
    REQUIRE(dec(5, body, small).error() == errc::too_large);
    // a zero-length key
    bytes zero = body;
    store_le16(zero.data(), 0);
    REQUIRE(dec(5, zero).error() == errc::protocol);
    // a key length running past the body
    bytes past = body;
    store_le16(past.data(), 0xffff);
    REQUIRE(is_clean_failure(dec(5, past).error()));
    // trailing garbage
    bytes longer = body;
    longer.push_back(std::byte{0});
    REQUIRE(dec(5, longer).error() == errc::protocol);
    // wrong opcode, reply bit, body_len mismatch
    REQUIRE(decode_exists_request(request(opcode::get, 5, body.size()), body, lim).error() ==
            errc::protocol);
    auto reply = request(opcode::exists, 5, body.size());
    reply.op |= reply_bit;
    REQUIRE(decode_exists_request(reply, body, lim).error() == errc::protocol);
    REQUIRE(decode_exists_request(request(opcode::exists, 5, body.size() - 1), body, lim).error() ==
            errc::protocol);
}

TEST_CASE("Every truncation of an exists request is rejected", "[protocol]") {
    auto g = memkv::test::rng(0x3003);
    const auto keys = make_keys(g, 7, 20);
    const auto body = encode_exists_request(keys.views);
    require_truncations_rejected(body, [](std::span<const std::byte> p) {
        return decode_exists_request(request(opcode::exists, 7, p.size()), p, limits{});
    });
}

namespace {
struct sample_reply {
    exists_reply reply;
    std::vector<bytes> meta_storage;
};

sample_reply random_exists_reply(std::mt19937_64& g, std::size_t count, std::uint16_t fl) {
    const limits lim;
    sample_reply s;
    s.meta_storage.resize(count);
    for (std::size_t i = 0; i < count; ++i) {
        const bool present = g() % 3 != 0;
        s.reply.present.push_back(present);
        if (fl & flags::want_sizes)
            s.reply.sizes.push_back(present ? uniform(g, 0, lim.max_value) : 0);
        if (fl & flags::want_meta) {
            if (present) s.meta_storage[i] = random_bytes(g, uniform(g, 0, lim.max_meta));
            s.reply.meta.emplace_back(s.meta_storage[i]);
        }
    }
    return s;
}

const std::uint16_t exists_flag_sets[] = {0, flags::want_sizes, flags::want_meta,
                                          flags::want_sizes | flags::want_meta};
} // namespace

TEST_CASE("Exists replies round-trip with and without sizes and metadata", "[protocol]") {
    auto g = memkv::test::rng(0x3004);
    const limits lim;
    for (std::uint16_t fl : exists_flag_sets) {
        for (int i = 0; i < 200; ++i) {
            const std::size_t count = i == 0 ? lim.max_batch : uniform(g, 1, 70);
            const auto s = random_exists_reply(g, count, fl);
            const auto body = encode_exists_reply(s.reply, fl);
            auto r = decode_exists_reply(static_cast<std::uint32_t>(count), fl, body, lim);
            INFO("flags " << fl << " count " << count);
            REQUIRE(r);
            REQUIRE(r->present == s.reply.present);
            REQUIRE(r->sizes == s.reply.sizes);
            REQUIRE(r->meta.size() == s.reply.meta.size());
            for (std::size_t k = 0; k < r->meta.size(); ++k)
                REQUIRE(same(r->meta[k], s.reply.meta[k]));
            REQUIRE(encode_exists_reply(*r, fl) == body);
        }
    }
}

TEST_CASE("The exists bitmap is LSB first with zero padding", "[protocol]") {
    exists_reply r;
    r.present = {true, false, false, true, false, false, false, false, false, true};
    const auto body = encode_exists_reply(r, 0);
    REQUIRE(body == from_hex("0902"));
    bytes padded = body;
    padded[1] |= std::byte{0x04}; // bit 10 of a 10-key bitmap
    REQUIRE(decode_exists_reply(10, 0, padded, limits{}).error() == errc::protocol);
    // absent keys are always written as size 0 and empty metadata
    r.sizes.assign(10, 5);
    const bytes m{std::byte{1}};
    r.meta.assign(10, m);
    const auto full = encode_exists_reply(r, flags::want_sizes | flags::want_meta);
    auto d = decode_exists_reply(10, flags::want_sizes | flags::want_meta, full, limits{});
    REQUIRE(d);
    const std::vector<std::uint64_t> sizes{5, 0, 0, 5, 0, 0, 0, 0, 0, 5};
    REQUIRE(d->sizes == sizes);
    REQUIRE(d->meta[1].empty());
    REQUIRE(d->meta[3].size() == 1);
}

TEST_CASE("Exists replies are rejected when malformed or over a cap", "[protocol]") {
    const limits lim;
    exists_reply r;
    r.present = {true, false, true};
    r.sizes = {100, 0, 200};
    const bytes m(3, std::byte{9});
    r.meta = {m, {}, m};
    const std::uint16_t both = flags::want_sizes | flags::want_meta;
    const auto body = encode_exists_reply(r, both);
    REQUIRE(decode_exists_reply(3, both, body, lim));
    REQUIRE(decode_exists_reply(0, both, body, lim).error() == errc::protocol);
    REQUIRE(decode_exists_reply(lim.max_batch + 1, both, body, lim).error() == errc::too_large);
    REQUIRE(decode_exists_reply(2, both, body, lim).error() == errc::protocol);
    REQUIRE(decode_exists_reply(4, both, body, lim).error() == errc::protocol);
    REQUIRE(decode_exists_reply(3, flags::want_sizes, body, lim).error() == errc::protocol);
    REQUIRE(decode_exists_reply(3, 0, body, lim).error() == errc::protocol);
    // size of an absent key (offset 1 + 8)
    bytes absent_size = body;
    store_le64(absent_size.data() + 1 + 8, 1);
    REQUIRE(decode_exists_reply(3, both, absent_size, lim).error() == errc::protocol);
    // size over the value cap
    bytes huge = body;
    store_le64(huge.data() + 1, lim.max_value + 1);
    REQUIRE(decode_exists_reply(3, both, huge, lim).error() == errc::too_large);
    store_le64(huge.data() + 1, std::uint64_t{1} << 63);
    REQUIRE(decode_exists_reply(3, both, huge, lim).error() == errc::too_large);
    // metadata over the cap, and metadata of an absent key
    exists_reply big = r;
    const bytes long_meta(lim.max_meta + 1, std::byte{1});
    big.meta[0] = long_meta;
    REQUIRE(decode_exists_reply(3, both, encode_exists_reply(big, both), lim).error() ==
            errc::too_large);
    bytes absent_meta = body;
    const std::size_t meta1 = 1 + 24 + 2 + 3; // bitmap, sizes, first entry
    store_le16(absent_meta.data() + meta1, 1);
    REQUIRE(is_clean_failure(decode_exists_reply(3, both, absent_meta, lim).error()));
    // trailing bytes
    bytes longer = body;
    longer.push_back(std::byte{0});
    REQUIRE(decode_exists_reply(3, both, longer, lim).error() == errc::protocol);
}

TEST_CASE("Every truncation of an exists reply is rejected", "[protocol]") {
    auto g = memkv::test::rng(0x3005);
    for (std::uint16_t fl : exists_flag_sets) {
        for (std::size_t count : {std::size_t{1}, std::size_t{8}, std::size_t{13}}) {
            auto s = random_exists_reply(g, count, fl);
            s.reply.present[0] = true;
            if (fl & flags::want_meta) {
                s.meta_storage[0] = bytes(5, std::byte{3});
                s.reply.meta[0] = s.meta_storage[0];
            }
            const auto body = encode_exists_reply(s.reply, fl);
            INFO("flags " << fl << " count " << count);
            require_truncations_rejected(body, [&](std::span<const std::byte> p) {
                return decode_exists_reply(static_cast<std::uint32_t>(count), fl, p, limits{});
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// batch

namespace {
struct sample_batch {
    std::vector<sub_request> subs;
    std::vector<bytes> storage;
};

sample_batch random_batch(std::mt19937_64& g, std::size_t count, std::size_t max_key = 64) {
    const limits lim;
    sample_batch b;
    b.storage.reserve(2 * count);
    for (std::size_t i = 0; i < count; ++i) {
        sub_request s;
        const int kind = static_cast<int>(g() % 3);
        s.op = kind == 0 ? opcode::put : kind == 1 ? opcode::get : opcode::del;
        s.flags = static_cast<std::uint16_t>(g() & flags::all);
        s.id = g();
        b.storage.push_back(random_bytes(g, uniform(g, 1, max_key)));
        s.key = b.storage.back();
        if (s.op == opcode::put) {
            s.value_len = uniform(g, 0, lim.max_value);
            s.length = g() % 100000;
            b.storage.push_back(random_bytes(g, uniform(g, 0, lim.max_meta)));
            s.meta = b.storage.back();
        } else if (s.op == opcode::get) {
            s.offset = g();
            s.length = g();
        }
        b.subs.push_back(s);
    }
    return b;
}

void require_same_sub(const sub_request& a, const sub_request& b) {
    REQUIRE(a.op == b.op);
    REQUIRE(a.flags == b.flags);
    REQUIRE(a.id == b.id);
    REQUIRE(a.value_len == b.value_len);
    REQUIRE(a.offset == b.offset);
    REQUIRE(a.length == b.length);
    REQUIRE(same(a.key, b.key));
    REQUIRE(same(a.meta, b.meta));
}

memkv::result<std::vector<sub_request>> decode_b(std::uint32_t count, std::span<const std::byte> b,
                                                 const limits& lim = {}) {
    return decode_batch(request(opcode::batch, count, b.size()), b, lim);
}
} // namespace

TEST_CASE("The batch descriptor is 40 bytes laid out as documented", "[protocol]") {
    const bytes key = from_hex("aabbcc");
    const bytes meta = from_hex("dd");
    sub_request s;
    s.op = opcode::put;
    s.flags = flags::durable | flags::pin;
    s.id = 0x0102030405060708;
    s.value_len = 0x1000;
    s.offset = 0;
    s.length = 60;
    s.key = key;
    s.meta = meta;
    const auto body = encode_batch(std::span<const sub_request>(&s, 1));
    REQUIRE(batch_descriptor_size == 40);
    REQUIRE(body == from_hex("02 00 0600 0300 0100 0807060504030201 0010000000000000"
                             "0000000000000000 3c00000000000000 aabbcc dd"));
}

TEST_CASE("Batches round-trip", "[protocol]") {
    auto g = memkv::test::rng(0x4001);
    const limits lim;
    for (int i = 0; i < 300; ++i) {
        const std::size_t count = i == 0 ? lim.max_batch : uniform(g, 1, 40);
        const auto b = random_batch(g, count, i == 0 ? 8 : 64);
        const auto body = encode_batch(b.subs);
        auto r = decode_b(static_cast<std::uint32_t>(count), body);
        REQUIRE(r);
        REQUIRE(r->size() == count);
        for (std::size_t k = 0; k < count; ++k)
            require_same_sub((*r)[k], b.subs[k]);
        REQUIRE(encode_batch(*r) == body);
    }
}

TEST_CASE("Batch sub-requests are checked one by one", "[protocol]") {
    const limits lim;
    const bytes key(8, std::byte{'k'});
    const bytes meta(4, std::byte{'m'});
    sub_request put;
    put.op = opcode::put;
    put.id = 1;
    put.value_len = 100;
    put.key = key;
    put.meta = meta;
    sub_request get;
    get.op = opcode::get;
    get.id = 2;
    get.offset = 10;
    get.length = 20;
    get.key = key;
    const std::vector<sub_request> good{put, get};
    const auto body = encode_batch(good);
    REQUIRE(decode_b(2, body));
    auto with = [&](std::size_t at, auto mutate) {
        bytes b = body;
        mutate(b.data() + at);
        return decode_b(2, b);
    };
    const std::size_t second = batch_descriptor_size + key.size() + meta.size();
    for (std::size_t at : {std::size_t{0}, second}) {
        INFO("descriptor at " << at);
        for (unsigned op : {0u, 1u, 4u, 6u, 7u, 8u, 9u, 10u, 0x82u, 0xffu})
            REQUIRE(with(at, [&](std::byte* p) { p[0] = std::byte(op); }).error() ==
                    errc::protocol);
        REQUIRE(with(at, [](std::byte* p) { p[1] = std::byte{1}; }).error() == errc::protocol);
        REQUIRE(with(at, [](std::byte* p) { store_le16(p + 2, 0x20); }).error() == errc::protocol);
        REQUIRE(with(at, [](std::byte* p) { store_le16(p + 4, 0); }).error() == errc::protocol);
        REQUIRE(with(at, [&](std::byte* p) {
                    store_le16(p + 4, static_cast<std::uint16_t>(lim.max_key + 1));
                }).error() == errc::too_large);
        REQUIRE(with(at, [&](std::byte* p) {
                    store_le16(p + 6, static_cast<std::uint16_t>(lim.max_meta + 1));
                }).error() == errc::too_large);
        REQUIRE(with(at, [&](std::byte* p) { store_le64(p + 16, lim.max_value + 1); }).error() ==
                errc::too_large);
        REQUIRE(with(at, [](std::byte* p) {
                    store_le64(p + 16, std::uint64_t{1} << 63);
                }).error() == errc::too_large);
    }
    // value and metadata only on put; offset only on get; length not on del
    REQUIRE(with(second, [](std::byte* p) { store_le64(p + 16, 1); }).error() == errc::protocol);
    REQUIRE(with(0, [](std::byte* p) { store_le64(p + 24, 1); }).error() == errc::protocol);
    sub_request del = get;
    del.op = opcode::del;
    del.offset = 0;
    del.length = 0;
    REQUIRE(decode_b(1, encode_batch(std::span<const sub_request>(&del, 1))));
    del.length = 1;
    REQUIRE(decode_b(1, encode_batch(std::span<const sub_request>(&del, 1))).error() ==
            errc::protocol);
    del.length = 0;
    del.offset = 1;
    REQUIRE(decode_b(1, encode_batch(std::span<const sub_request>(&del, 1))).error() ==
            errc::protocol);
    sub_request get_meta = get;
    get_meta.meta = meta;
    REQUIRE(decode_b(1, encode_batch(std::span<const sub_request>(&get_meta, 1))).error() ==
            errc::protocol);
    // counts
    REQUIRE(decode_b(0, body).error() == errc::protocol);
    REQUIRE(decode_b(1, body).error() == errc::protocol);
    REQUIRE(decode_b(3, body).error() == errc::protocol);
    REQUIRE(decode_b(lim.max_batch + 1, body).error() == errc::too_large);
    REQUIRE(decode_b(std::numeric_limits<std::uint32_t>::max(), body).error() == errc::too_large);
    limits small;
    small.max_batch = 1;
    REQUIRE(decode_b(2, body, small).error() == errc::too_large);
    bytes longer = body;
    longer.push_back(std::byte{0});
    REQUIRE(decode_b(2, longer).error() == errc::protocol);
    // header checks
    REQUIRE(decode_batch(request(opcode::exists, 2, body.size()), body, lim).error() ==
            errc::protocol);
    REQUIRE(decode_batch(request(opcode::batch, 2, body.size() + 1), body, lim).error() ==
            errc::protocol);
    auto reply = request(opcode::batch, 2, body.size());
    reply.op |= reply_bit;
    REQUIRE(decode_batch(reply, body, lim).error() == errc::protocol);
}

TEST_CASE("Every truncation of a batch is rejected", "[protocol]") {
    auto g = memkv::test::rng(0x4002);
    for (int i = 0; i < 5; ++i) {
        const auto b = random_batch(g, 4, 16);
        const auto body = encode_batch(b.subs);
        require_truncations_rejected(body,
                                     [](std::span<const std::byte> p) { return decode_b(4, p); });
    }
}

// ---------------------------------------------------------------------------------------------
// stats

TEST_CASE("Stats replies round-trip", "[protocol]") {
    auto g = memkv::test::rng(0x5001);
    for (int i = 0; i < 100; ++i) {
        const std::size_t count = i == 0 ? stats_max_count : i == 1 ? 0 : uniform(g, 1, 50);
        std::vector<std::string> names;
        for (std::size_t k = 0; k < count; ++k) {
            std::string n(uniform(g, 1, stats_max_name), 'a');
            for (auto& c : n)
                c = static_cast<char>('a' + g() % 26);
            names.push_back(n);
        }
        std::vector<std::pair<std::string_view, std::uint64_t>> in;
        for (const auto& n : names)
            in.emplace_back(n, g());
        const auto body = encode_stats(in);
        auto r = decode_stats(body);
        REQUIRE(r);
        REQUIRE(r->size() == count);
        for (std::size_t k = 0; k < count; ++k) {
            REQUIRE((*r)[k].first == in[k].first);
            REQUIRE((*r)[k].second == in[k].second);
        }
    }
    const std::pair<std::string_view, std::uint64_t> one[] = {{"get_hits", 0x0102}};
    REQUIRE(encode_stats(one) == from_hex("01000000 0800 6765745f68697473 0201000000000000"));
}

TEST_CASE("Stats replies are rejected when malformed or over a cap", "[protocol]") {
    const std::pair<std::string_view, std::uint64_t> two[] = {{"puts", 1}, {"gets", 2}};
    const auto body = encode_stats(two);
    REQUIRE(decode_stats(body));
    bytes b = body;
    store_le32(b.data(), 3);
    REQUIRE(decode_stats(b).error() == errc::protocol);
    store_le32(b.data(), 1);
    REQUIRE(decode_stats(b).error() == errc::protocol);
    store_le32(b.data(), stats_max_count + 1);
    REQUIRE(decode_stats(b).error() == errc::too_large);
    store_le32(b.data(), std::numeric_limits<std::uint32_t>::max());
    REQUIRE(decode_stats(b).error() == errc::too_large);
    b = body;
    store_le16(b.data() + 4, 0);
    REQUIRE(decode_stats(b).error() == errc::protocol);
    b = body;
    store_le16(b.data() + 4, static_cast<std::uint16_t>(stats_max_name + 1));
    REQUIRE(decode_stats(b).error() == errc::too_large);
    b = body;
    b.push_back(std::byte{0});
    REQUIRE(decode_stats(b).error() == errc::protocol);
    // a name of exactly the maximum length is fine
    const std::string longest(stats_max_name, 'n');
    const std::pair<std::string_view, std::uint64_t> edge[] = {{longest, 5}};
    REQUIRE(decode_stats(encode_stats(edge)));
}

TEST_CASE("Every truncation of a stats reply is rejected", "[protocol]") {
    const std::pair<std::string_view, std::uint64_t> three[] = {
        {"bytes_read", 1}, {"x", 2}, {"evicted_regions", 3}};
    require_truncations_rejected(encode_stats(three),
                                 [](std::span<const std::byte> p) { return decode_stats(p); });
    const auto empty = encode_stats({});
    REQUIRE(empty.size() == 4);
    require_truncations_rejected(empty,
                                 [](std::span<const std::byte> p) { return decode_stats(p); });
}

// ---------------------------------------------------------------------------------------------
// garbage

namespace {
/// Either a random body, or a valid one with random bytes changed, cut or appended.
bytes garbage(std::mt19937_64& g, const bytes& valid) {
    bytes b;
    if (g() % 3 == 0 || valid.empty()) {
        b = random_bytes(g, uniform(g, 0, 300));
    } else {
        b = valid;
        const auto edits = uniform(g, 1, 4);
        for (std::uint64_t e = 0; e < edits; ++e) {
            switch (g() % 4) {
            case 0:
                b[g() % b.size()] = std::byte(static_cast<std::uint8_t>(g()));
                break;
            case 1:
                b.resize(g() % (b.size() + 1));
                break;
            case 2:
                b.push_back(std::byte(static_cast<std::uint8_t>(g())));
                break;
            default:
                b[g() % b.size()] ^= std::byte{1};
                break;
            }
            if (b.empty()) break;
        }
    }
    return b;
}

std::uint32_t garbage_count(std::mt19937_64& g, std::uint32_t valid) {
    switch (g() % 4) {
    case 0:
        return valid;
    case 1:
        return static_cast<std::uint32_t>(g());
    case 2:
        return static_cast<std::uint32_t>(g() % 16);
    default:
        return valid + static_cast<std::uint32_t>(g() % 3) - 1;
    }
}
} // namespace

TEST_CASE("Random garbage bodies either decode canonically or fail cleanly", "[protocol]") {
    auto g = memkv::test::rng(0x6001);
    const limits lim;
    int decoded = 0, failed = 0;
    auto tally = [&](const auto& r) {
        if (r) {
            ++decoded;
        } else {
            ++failed;
            REQUIRE(is_clean_failure(r.error()));
        }
    };
    for (int i = 0; i < 4000; ++i) {
        // key/metadata
        {
            const auto valid = encode_key_meta(random_bytes(g, 5), random_bytes(g, 3));
            const auto b = garbage(g, valid);
            const opcode ops[] = {opcode::put, opcode::get, opcode::del};
            const auto h = request(ops[g() % 3], garbage_count(g, 5), b.size());
            auto r = split_key_meta(h, b, lim);
            tally(r);
            if (r) REQUIRE(r->key.size() + r->meta.size() == b.size());
        }
        // exists request
        {
            const auto keys = make_keys(g, 3, 6);
            const auto b = garbage(g, encode_exists_request(keys.views));
            const auto n = garbage_count(g, 3);
            auto r = decode_exists_request(request(opcode::exists, n, b.size()), b, lim);
            tally(r);
            if (r) REQUIRE(encode_exists_request(*r) == b);
        }
        // exists reply
        {
            const std::uint16_t fl = exists_flag_sets[g() % 4];
            const auto s = random_exists_reply(g, 3, fl);
            const auto b = garbage(g, encode_exists_reply(s.reply, fl));
            const auto n = garbage_count(g, 3);
            auto r = decode_exists_reply(n, fl, b, lim);
            tally(r);
            if (r) REQUIRE(encode_exists_reply(*r, fl) == b);
        }
        // batch
        {
            const auto sb = random_batch(g, 2, 6);
            const auto b = garbage(g, encode_batch(sb.subs));
            const auto n = garbage_count(g, 2);
            auto r = decode_b(n, b);
            tally(r);
            if (r) REQUIRE(encode_batch(*r) == b);
        }
        // stats
        {
            const std::pair<std::string_view, std::uint64_t> st[] = {{"ab", g()}, {"cde", g()}};
            const auto b = garbage(g, encode_stats(st));
            auto r = decode_stats(b);
            tally(r);
            if (r) {
                std::vector<std::pair<std::string_view, std::uint64_t>> views;
                for (const auto& [name, value] : *r)
                    views.emplace_back(name, value);
                REQUIRE(encode_stats(views) == b);
            }
        }
    }
    INFO("decoded " << decoded << ", failed " << failed);
    REQUIRE(decoded > 0);
    REQUIRE(failed > 0);
}
