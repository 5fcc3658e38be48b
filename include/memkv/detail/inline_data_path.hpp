// SPDX-License-Identifier: Apache-2.0
// inline_data_path<Stream>: the data path of stream transports (TCP, Unix sockets), where
// payload bytes travel on the control stream itself, in frames.
#pragma once

#include <memkv/concepts.hpp>
#include <memkv/detail/frame_channel.hpp>
#include <memkv/protocol/frame.hpp>
#include <memkv/protocol/payload_ref.hpp>

#include <cerrno>
#include <cstdint>
#include <deque>
#include <limits>
#include <span>
#include <unordered_map>
#include <vector>

namespace memkv::detail {

/// What an incoming payload frame's bytes meet (inline_data_path::on_data).
enum class data_disposition : std::uint8_t {
    accept,  ///< they go to armed pulls (and a skipped tail to scratch): payload_target() is set
    discard, ///< every byte is skipped
    pause,   ///< the pull they need is not armed yet: the channel waits
    unknown, ///< no transfer of that request is known here
    invalid, ///< out of order, or another value length than the transfer's: a protocol error
};

/// Moves one connection's payloads inside its frame_channel (memkv::data_path).
///
///  - pull(ref, buf, tag) arms `buf` for bytes [offset, offset + length) of request
///    `ref.request`'s value; its data frames fill it (read straight into it by the channel);
///    it completes when the last of them is in and every one passed its CRC (-EBADMSG
///    otherwise). Pulls of a request are armed in offset order. A frame whose bytes meet no
///    armed pull pauses the channel until one is armed.
///  - push(buf, ref, tag) queues frames borrowing `buf` (the first of a GET carries the reply
///    head announced with announce_reply()), each at most the protocol's frame payload; it
///    completes when the last one is written.
///  - skip(ref): the request's bytes from ref.offset on are read and dropped.
///  - fence(): every pull and push not completed completes with -ECANCELED; nothing borrowed is
///    touched afterwards (the owner closes the channel).
/// The connection feeds it: on_data() and on_payload() from its frame handler, on_sent() after
/// every flush of the channel.
template <class Stream>
class inline_data_path {
public:
    static constexpr bool reply_rides_payload = true;
    static constexpr bool pulls_on_demand = true;

    /// Over `ch`, sending payload frames of at most `max_frame` bytes (the protocol's
    /// limits::max_chunk: a piece larger than that goes out in several frames).
    inline_data_path(frame_channel<Stream>& ch, std::size_t max_frame) noexcept
        : ch_(&ch), max_frame_(std::max<std::size_t>(1, max_frame)) {}
    inline_data_path(const inline_data_path&) = delete;
    inline_data_path& operator=(const inline_data_path&) = delete;

    result<void> pull(const protocol::payload_ref& ref, std::span<std::byte> dst,
                      std::uint64_t tag) {
        if (fenced_) return errc::closed;
        auto& in = inbound_of(ref);
        if (ref.offset != in.armed_end || ref.length != dst.size() ||
            ref.offset + ref.length > in.skip_from)
            return errc::invalid_argument;
        in.pulls.push_back({ref.offset, ref.length, 0, dst.data(), tag, false});
        in.armed_end += ref.length;
        ++open_pulls_;
        return {};
    }

    void skip(const protocol::payload_ref& ref) {
        if (fenced_ || ref.length == 0) return;
        auto& in = inbound_of(ref);
        in.skip_from = std::min(in.skip_from, ref.offset);
        forget_if_done(ref.request);
    }

    /// The head of a GET reply; the next push of that request carries it.
    void announce_reply(const protocol::frame_header& head, std::vector<std::byte> body) {
        heads_[head.request_id] = {head, std::move(body)};
    }

    result<void> push(std::span<const std::byte> src, const protocol::payload_ref& ref,
                      std::uint64_t tag) {
        if (fenced_) return errc::closed;
        for (std::size_t off = 0; off < src.size() || off == 0;) {
            const auto n = std::min(max_frame_, src.size() - off);
            protocol::frame_header h;
            std::vector<std::byte> body;
            if (auto it = heads_.find(ref.request); it != heads_.end()) {
                h = it->second.header;
                body = std::move(it->second.body);
                heads_.erase(it);
            } else {
                h.op = static_cast<std::uint8_t>(protocol::opcode::data) | protocol::reply_bit;
                h.request_id = ref.request;
            }
            h.value_len = ref.transfer_len;
            h.offset = ref.offset + off;
            off += n;
            // The push completes with its last frame (the token comes back once it is written).
            ch_->send(h, std::move(body), src.subspan(off - n, n), off == src.size() ? tag : 0);
            if (n == 0) break;
        }
        pushes_.emplace(tag, src.size());
        return {};
    }

    std::size_t poll(std::span<io_completion> out) {
        const std::size_t n = std::min(out.size(), done_.size());
        std::copy_n(done_.begin(), n, out.begin());
        done_.erase(done_.begin(), done_.begin() + static_cast<std::ptrdiff_t>(n));
        return n;
    }

    void fence() noexcept {
        fenced_ = true;
        for (auto& [tag, bytes] : pushes_)
            done_.push_back({tag, -ECANCELED});
        pushes_.clear();
        for (auto& [id, in] : inbound_)
            for (auto& p : in.pulls)
                done_.push_back({p.tag, -ECANCELED});
        inbound_.clear();
        heads_.clear();
        open_pulls_ = 0;
    }

    /// Queued bytes of the channel (pushes and replies): the connection's in-flight cap.
    std::size_t bytes_in_flight() const noexcept { return ch_->queued_bytes(); }
    /// Armed pulls not completed: buffers waiting for more of this connection's input.
    std::size_t open_pulls() const noexcept { return open_pulls_; }
    /// Requests whose value is being read and dropped, wholly (skip() of a refused PUT): what
    /// they cost counts against the connection's bound on PUTs.
    std::size_t skipped_transfers() const noexcept {
        std::size_t n = 0;
        for (const auto& [id, in] : inbound_)
            n += in.skip_from == 0;
        return n;
    }

    /// Where the payload of frame `h` (payload_len > 0) of a PUT's value goes.
    data_disposition on_data(const protocol::frame_header& h) {
        auto it = inbound_.find(h.request_id);
        if (it == inbound_.end()) return data_disposition::unknown;
        auto& in = it->second;
        if (h.value_len != in.total || h.offset != in.next) return data_disposition::invalid;
        const std::uint64_t end = h.offset + h.payload_len;
        if (h.offset >= in.skip_from) { // all of it is unwanted
            in.next = end;
            forget_if_done(h.request_id);
            return data_disposition::discard;
        }
        auto& iov = ch_->payload_target();
        std::uint64_t pos = h.offset;
        for (const auto& p : in.pulls) {
            if (pos == end) break;
            const auto n = std::min(end, p.offset + p.length) - pos;
            iov.push_back({p.dst + (pos - p.offset), n});
            pos += n;
        }
        if (pos < end && pos >= in.skip_from) {
            if (scratch_.size() < end - pos) scratch_.resize(end - pos);
            iov.push_back({scratch_.data(), end - pos});
            pos = end;
        }
        if (pos < end) {
            iov.clear();
            return data_disposition::pause;
        }
        return data_disposition::accept;
    }

    /// Frame `h`'s payload arrived (into the targets on_data() set), CRC good or bad.
    void on_payload(const protocol::frame_header& h, bool crc_ok) {
        auto it = inbound_.find(h.request_id);
        if (it == inbound_.end()) return;
        auto& in = it->second;
        std::uint64_t left = h.payload_len;
        while (left > 0 && !in.pulls.empty()) {
            auto& p = in.pulls.front();
            const auto n = std::min(left, p.length - p.filled);
            p.filled += n;
            p.bad |= !crc_ok;
            left -= n;
            if (p.filled < p.length) break;
            done_.push_back({p.tag, p.bad ? -EBADMSG : static_cast<std::int64_t>(p.length)});
            in.pulls.pop_front();
            --open_pulls_;
        }
        in.next = h.offset + h.payload_len;
        forget_if_done(h.request_id);
    }

    /// After a flush of the channel: the pushes whose frames were written complete.
    void on_sent() {
        for (auto tag : ch_->sent_tokens()) {
            auto it = pushes_.find(tag);
            if (it == pushes_.end()) continue;
            done_.push_back({tag, static_cast<std::int64_t>(it->second)});
            pushes_.erase(it);
        }
        ch_->sent_tokens().clear();
    }

private:
    struct armed {
        std::uint64_t offset = 0, length = 0, filled = 0;
        std::byte* dst = nullptr;
        std::uint64_t tag = 0;
        bool bad = false; // a frame that filled part of it failed its CRC
    };
    /// The value of one PUT as it arrives.
    struct inbound {
        std::uint64_t total = 0;     // bytes of the value
        std::uint64_t next = 0;      // next byte expected
        std::uint64_t armed_end = 0; // end of the last armed pull
        std::uint64_t skip_from = std::numeric_limits<std::uint64_t>::max();
        std::deque<armed> pulls; // in offset order
    };
    struct head {
        protocol::frame_header header;
        std::vector<std::byte> body;
    };

    inbound& inbound_of(const protocol::payload_ref& ref) {
        auto [it, fresh] = inbound_.try_emplace(ref.request);
        if (fresh) it->second.total = ref.transfer_len;
        return it->second;
    }
    void forget_if_done(std::uint64_t id) {
        auto it = inbound_.find(id);
        if (it != inbound_.end() && it->second.next == it->second.total && it->second.pulls.empty())
            inbound_.erase(it);
    }

    frame_channel<Stream>* ch_;
    std::size_t max_frame_;
    std::unordered_map<std::uint64_t, inbound> inbound_;
    std::unordered_map<std::uint64_t, head> heads_;
    std::unordered_map<std::uint64_t, std::size_t> pushes_; // tag -> bytes, frames not written
    std::vector<io_completion> done_;
    std::vector<std::byte> scratch_; // skipped bytes of frames that also fill a pull
    std::size_t open_pulls_ = 0;
    bool fenced_ = false;
};

} // namespace memkv::detail
