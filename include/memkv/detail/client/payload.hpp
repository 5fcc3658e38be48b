// SPDX-License-Identifier: Apache-2.0
// client::payload: the client's side of inline payloads: a PUT's value going out in data
// frames, a GET's value coming in from them.
#pragma once

#include <memkv/client_types.hpp>
#include <memkv/error.hpp>
#include <memkv/protocol/frame.hpp>

#include <sys/uio.h>

#include <algorithm>
#include <cstdint>
#include <span>
#include <system_error>
#include <vector>

namespace memkv::detail::client {

/// A PUT's value as it goes out: in data frames of chunk_size bytes, a few chunks ahead, each
/// borrowing the caller's value until it is written. A PUT is complete once answered AND none
/// of its value is queued or unsent: the server may answer early (exists, wrong_shard), but the
/// protocol still wants the rest of the value, and the caller's buffer must not be read after
/// the operation completed.
struct outgoing_value {
    std::uint64_t sent = 0; ///< bytes queued so far
    unsigned queued = 0;    ///< data frames queued, not yet written
    bool replied = false;
    std::error_code status; ///< the reply's

    /// The next chunk of `value` (at most `chunk` bytes), counted as queued.
    std::span<const std::byte> next_chunk(std::span<const std::byte> value, std::uint64_t chunk) {
        const auto n = std::min<std::uint64_t>(chunk, value.size() - sent);
        auto out = value.subspan(sent, n);
        sent += n;
        ++queued;
        return out;
    }
    bool more(std::span<const std::byte> value) const noexcept { return sent < value.size(); }
    bool complete(std::span<const std::byte> value) const noexcept {
        return replied && queued == 0 && sent == value.size();
    }
};

/// A GET's value as it comes in: each payload frame's bytes are read straight into the
/// caller's fragments (or a vector of the request's own), in offset order, and the frame's
/// CRC32C checked; once the request failed (fragments too small, a bad CRC) the rest is read
/// into a scratch sink so that the request still completes in step with the stream.
struct incoming_value {
    std::vector<std::byte> owned;          ///< without fragments: the value
    std::vector<std::span<std::byte>> dst; ///< where the bytes go
    std::uint64_t received = 0, expect = 0;
    bool failed = false;

    /// The reply announced `value_len` bytes for `op`; errc::too_large goes to the operation
    /// when its fragments cannot hold them (the bytes are drained).
    void begin(operation& op, std::uint64_t value_len) {
        expect = value_len;
        if (op.fragments.empty()) {
            owned.resize(value_len);
            dst = {std::span<std::byte>(owned)};
            return;
        }
        dst = op.fragments;
        std::uint64_t cap = 0;
        for (auto f : dst)
            cap += f.size();
        if (cap < value_len) fail(op, make_error_code(errc::too_large));
    }

    /// Where frame `h`'s payload goes; false when it does not continue the value in order.
    bool target(const protocol::frame_header& h, std::vector<iovec>& iov,
                std::vector<std::byte>& sink) const {
        if (h.offset != received || h.value_len != expect || h.payload_len > expect - received)
            return false;
        if (failed) {
            if (sink.size() < h.payload_len) sink.resize(h.payload_len);
            iov.push_back({sink.data(), h.payload_len});
            return true;
        }
        std::uint64_t skip = h.offset, left = h.payload_len;
        for (auto f : dst) {
            if (left == 0) break;
            if (skip >= f.size()) {
                skip -= f.size();
                continue;
            }
            const auto n = std::min<std::uint64_t>(f.size() - skip, left);
            iov.push_back({f.data() + skip, n});
            left -= n;
            skip = 0;
        }
        return true;
    }

    /// Frame `h`'s payload arrived; true when the whole value is in (op.size and op.data are
    /// set unless it failed).
    bool arrived(const protocol::frame_header& h, bool crc_ok, bool verify, operation& op) {
        if (!crc_ok && verify) fail(op, make_error_code(errc::checksum));
        received += h.payload_len;
        if (received < expect) return false;
        if (!failed) {
            op.size = received;
            if (op.fragments.empty()) op.data = std::move(owned);
        }
        return true;
    }

private:
    void fail(operation& op, std::error_code ec) {
        if (failed) return;
        failed = true;
        op.status = ec;
    }
};

} // namespace memkv::detail::client
