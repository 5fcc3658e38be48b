// SPDX-License-Identifier: Apache-2.0
// libFuzzer target: arbitrary bytes through decode_header, then through the body decoder of the
// decoded opcode. Checks that nothing reads out of bounds and that accepted bodies are canonical.
#include <memkv/protocol/frame.hpp>
#include <memkv/protocol/messages.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using namespace memkv::protocol;

void check(bool ok) {
    if (!ok) std::abort();
}

template <class R>
void check_failure(const R& r) {
    if (!r) check(r.error() == memkv::errc::protocol || r.error() == memkv::errc::too_large);
}

bool same(std::span<const std::byte> a, std::span<const std::byte> b) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

void decode_body(const frame_header& h, std::span<const std::byte> body, const limits& lim) {
    switch (h.code()) {
    case opcode::put:
    case opcode::get:
    case opcode::del: {
        auto r = split_key_meta(h, body, lim);
        check_failure(r);
        if (r) check(r->key.size() + r->meta.size() == body.size() && !r->key.empty());
        if (h.is_reply()) {
            auto m = decode_get_reply_meta(h, body, lim);
            check_failure(m);
            if (m) check(m->size() <= lim.max_meta);
        }
        break;
    }
    case opcode::exists: {
        if (!h.is_reply()) {
            auto r = decode_exists_request(h, body, lim);
            check_failure(r);
            if (r) check(same(encode_exists_request(*r), body));
        }
        // A reply is decoded with the request's count and flags: take them from the header.
        auto r = decode_exists_reply(h.aux, h.flags, body, lim);
        check_failure(r);
        if (r) check(same(encode_exists_reply(*r, h.flags), body));
        break;
    }
    case opcode::batch: {
        auto r = decode_batch(h, body, lim);
        check_failure(r);
        if (r) check(same(encode_batch(*r), body));
        break;
    }
    case opcode::stats: {
        auto r = decode_stats(body);
        check_failure(r);
        if (r) {
            std::vector<std::pair<std::string_view, std::uint64_t>> views;
            for (const auto& [name, value] : *r)
                views.emplace_back(name, value);
            check(same(encode_stats(views), body));
        }
        break;
    }
    case opcode::attach:
    case opcode::ping:
    case opcode::data:
        break; // no body decoder
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < header_size) return 0;
    const auto* bytes = reinterpret_cast<const std::byte*>(data);
    // Small caps so that the fuzzer reaches the cap checks with short inputs; the default caps
    // are exercised as well.
    limits small;
    small.max_key = 16;
    small.max_meta = 8;
    small.max_value = 1u << 16;
    small.max_batch = 8;
    small.max_body = 4096;
    small.max_chunk = 1024;
    for (const limits& lim : {limits{}, small}) {
        auto h = decode_header(std::span<const std::byte, header_size>(bytes, header_size), lim);
        check_failure(h);
        if (!h) continue;
        check(h->body_len <= lim.max_body && h->payload_len <= lim.max_chunk &&
              h->value_len <= lim.max_value);
        std::array<std::byte, header_size> again{};
        encode_header(*h, again);
        check(same(again, std::span<const std::byte>(bytes, header_size)));
        // The body is the rest of the input, as much of it as body_len declares.
        const std::span<const std::byte> rest(bytes + header_size, size - header_size);
        const auto body = rest.first(std::min<std::size_t>(rest.size(), h->body_len));
        decode_body(*h, body, lim); // body_len may disagree with the body: must fail cleanly
        frame_header fitted = *h;   // and with body_len matching, reach the layout checks
        fitted.body_len = static_cast<std::uint32_t>(body.size());
        decode_body(fitted, body, lim);
    }
    return 0;
}
