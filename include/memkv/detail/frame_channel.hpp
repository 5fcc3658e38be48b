// SPDX-License-Identifier: Apache-2.0
// frame_channel: one authenticated, framed connection (either end). Parses incoming frames,
// verifies MACs and payload CRCs, and writes queued outgoing frames with gathered writes.
#pragma once

#include <memkv/auth/frame_mac.hpp>
#include <memkv/checksum.hpp>
#include <memkv/protocol/frame.hpp>

#include <sys/uio.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <span>
#include <vector>

namespace memkv::detail {

/// What a frame handler answers when a verified frame arrives.
enum class frame_action {
    accept,  ///< the payload (if any) goes to the iovecs the handler put in payload_target()
    discard, ///< the payload (if any) is read and dropped
    pause,   ///< no destination yet; the channel stops until resume()
    yield,   ///< handled (no payload); on_readable() returns before reading further frames
};

/// Byte and frame counters of one channel.
struct channel_counters {
    std::uint64_t frames_in = 0, frames_out = 0;
    std::uint64_t bytes_in = 0, bytes_out = 0;
    std::uint64_t payload_bytes_copied = 0; ///< payload bytes copied out of the staging buffer
};

/// A framed, MAC-authenticated connection over `Stream` (a transport's stream).
///
/// Incoming: bytes are read into a staging buffer; headers are decoded against the limits, the
/// body is read and its MAC verified (sequence numbers per direction), and only then is the
/// handler called: `frame_action Handler::on_frame(const frame_header&, std::span<const
/// std::byte> body)`. For payload-carrying frames the handler fills payload_target() with where
/// the bytes go; large payloads are read straight into it (readv), bypassing the staging buffer.
/// When the payload is complete its CRC32C is checked and `void Handler::on_payload(const
/// frame_header&, bool crc_ok)` is called.
///
/// Outgoing: send() MACs and queues a frame; the payload span is borrowed until the frame is
/// written, and then its token is reported by take_sent(). Frames go out in send() order.
///
/// Not thread-safe: the owner (a shard or the client's progress thread) drives it.
template <class Stream>
class frame_channel {
public:
    static constexpr std::size_t staging_size = 64u << 10;
    /// Payloads at least this large are read directly into their destination.
    static constexpr std::size_t direct_threshold = 16u << 10;

    frame_channel(Stream s, auth::frame_mac send_mac, auth::frame_mac recv_mac,
                  const protocol::limits& lim)
        : stream_(std::move(s)), send_mac_(std::move(send_mac)), recv_mac_(std::move(recv_mac)),
          limits_(lim), staging_(staging_size) {}

    Stream& stream() noexcept { return stream_; }
    const channel_counters& counters() const noexcept { return counters_; }
    /// Where the handler puts the destination of the current frame's payload.
    std::vector<iovec>& payload_target() noexcept { return target_; }
    /// True while a frame waits for the handler to accept it (after frame_action::pause).
    bool paused() const noexcept { return paused_; }

    // ---- outgoing ----------------------------------------------------------------------------

    /// Queues a frame. The header's MAC field is computed here; `payload` is borrowed until the
    /// frame has been written and `token` comes back from take_sent() (token 0: not reported).
    void send(protocol::frame_header h, std::vector<std::byte> body,
              std::span<const std::byte> payload = {}, std::uint64_t token = 0) {
        out_frame f;
        h.body_len = static_cast<std::uint32_t>(body.size());
        h.payload_len = static_cast<std::uint32_t>(payload.size());
        if (!payload.empty() && h.checksum == 0) h.checksum = crc32c(payload);
        std::span<std::byte, protocol::header_size> hdr(f.header);
        protocol::encode_header(h, hdr);
        const auto mac =
            send_mac_.compute(send_seq_++, std::span(f.header, protocol::mac_offset), body);
        protocol::encode_mac(mac, hdr);
        f.body = std::move(body);
        f.payload = payload;
        f.token = token;
        queued_bytes_ += protocol::header_size + f.body.size() + payload.size();
        out_.push_back(std::move(f));
    }

    /// Bytes queued and not yet written.
    std::size_t queued_bytes() const noexcept { return queued_bytes_; }
    bool want_write() const noexcept { return !out_.empty(); }

    /// Writes as much as the socket takes. errc::closed or a system error if the peer is gone.
    result<void> flush() noexcept {
        while (!out_.empty()) {
            iov_.clear();
            for (auto it = out_.begin(); it != out_.end() && iov_.size() + 3 <= 256; ++it) {
                auto& f = *it;
                std::size_t skip = it == out_.begin() ? head_written_ : 0;
                add_iov(f.header, protocol::header_size, skip);
                add_iov(f.body.data(), f.body.size(), skip);
                add_iov(f.payload.data(), f.payload.size(), skip);
            }
            auto n = stream_.writev_some(iov_);
            if (!n) return is_retry(n.error()) ? result<void>() : result<void>(n.error());
            std::size_t left = *n;
            counters_.bytes_out += left;
            queued_bytes_ -= left;
            while (left > 0 || (!out_.empty() && frame_size(out_.front()) == head_written_)) {
                auto& f = out_.front();
                const std::size_t rest = frame_size(f) - head_written_;
                if (left >= rest) {
                    left -= rest;
                    if (f.token) sent_.push_back(f.token);
                    out_.pop_front();
                    head_written_ = 0;
                    ++counters_.frames_out;
                } else {
                    head_written_ += left;
                    left = 0;
                    break;
                }
            }
        }
        return {};
    }

    /// Tokens of frames fully written since the last call.
    std::vector<std::uint64_t>& sent_tokens() noexcept { return sent_; }

    // ---- incoming ----------------------------------------------------------------------------

    /// Reads what is available and dispatches complete frames to `h`. Returns success when the
    /// socket has nothing more (or the channel paused), an error when the connection must close:
    /// errc::protocol / errc::too_large (malformed frame), errc::unauthenticated (MAC),
    /// errc::closed (peer closed).
    template <class Handler>
    result<void> on_readable(Handler& h) noexcept {
        for (;;) {
            MEMKV_TRY(process(h));
            if (paused_) return {};
            if (yielded_) {
                yielded_ = false;
                return {};
            }
            auto n = read_more();
            if (!n) {
                if (is_retry(n.error())) return {};
                return n.error();
            }
        }
    }

    /// Continues after a frame_action::pause, once the handler can accept the frame.
    template <class Handler>
    result<void> resume(Handler& h) noexcept {
        if (!paused_) return {};
        return on_readable(h);
    }

private:
    struct out_frame {
        std::byte header[protocol::header_size];
        std::vector<std::byte> body;
        std::span<const std::byte> payload;
        std::uint64_t token = 0;
    };
    enum class rstate { header, body, dispatch, payload };

    static bool is_retry(std::error_code ec) noexcept { return ec == make_error_code(errc::retry); }
    static std::size_t frame_size(const out_frame& f) noexcept {
        return protocol::header_size + f.body.size() + f.payload.size();
    }
    void add_iov(const void* p, std::size_t n, std::size_t& skip) {
        if (skip >= n) {
            skip -= n;
            return;
        }
        iov_.push_back({const_cast<std::byte*>(static_cast<const std::byte*>(p)) + skip, n - skip});
        skip = 0;
    }

    std::size_t avail() const noexcept { return rend_ - rpos_; }

    /// Reads into the staging buffer, or straight into the payload target when a large payload
    /// is pending (with a small staging tail for the next header).
    result<std::size_t> read_more() noexcept {
        if (rpos_ == rend_)
            rpos_ = rend_ = 0;
        else if (rpos_ > staging_size / 2) {
            std::memmove(staging_.data(), staging_.data() + rpos_, avail());
            rend_ -= rpos_;
            rpos_ = 0;
        }
        if (state_ == rstate::payload && !discarding_ && payload_left_ >= direct_threshold) {
            iov_.clear();
            std::size_t want = payload_left_;
            for (std::size_t i = tgt_idx_; i < target_.size() && want > 0; ++i) {
                const std::size_t off = i == tgt_idx_ ? tgt_off_ : 0;
                const std::size_t n = std::min(target_[i].iov_len - off, want);
                iov_.push_back({static_cast<std::byte*>(target_[i].iov_base) + off, n});
                want -= n;
            }
            const std::size_t tail = std::min(protocol::header_size, staging_size - rend_);
            iov_.push_back({staging_.data() + rend_, tail});
            auto n = stream_.readv_some(iov_);
            if (!n) return n;
            counters_.bytes_in += *n;
            std::size_t direct = std::min(*n, payload_left_);
            advance_target(direct);
            rend_ += *n - direct;
            return *n;
        }
        auto n = stream_.read_some(std::span(staging_.data() + rend_, staging_size - rend_));
        if (!n) return n;
        counters_.bytes_in += *n;
        rend_ += *n;
        return *n;
    }

    void advance_target(std::size_t n) noexcept {
        payload_left_ -= n;
        while (n > 0 && tgt_idx_ < target_.size()) {
            const std::size_t room = target_[tgt_idx_].iov_len - tgt_off_;
            const std::size_t k = std::min(room, n);
            tgt_off_ += k;
            n -= k;
            if (tgt_off_ == target_[tgt_idx_].iov_len) {
                ++tgt_idx_;
                tgt_off_ = 0;
            }
        }
    }

    template <class Handler>
    result<void> process(Handler& h) noexcept {
        for (;;) {
            switch (state_) {
            case rstate::header: {
                if (avail() < protocol::header_size) return {};
                std::span<const std::byte, protocol::header_size> hb(staging_.data() + rpos_,
                                                                     protocol::header_size);
                auto d = protocol::decode_header(hb, limits_);
                if (!d) return d.error();
                cur_ = *d;
                std::memcpy(cur_raw_, staging_.data() + rpos_, protocol::mac_offset);
                rpos_ += protocol::header_size;
                body_.clear();
                state_ = rstate::body;
                break;
            }
            case rstate::body: {
                const std::size_t need = cur_.body_len - body_.size();
                const std::size_t k = std::min(need, avail());
                body_.insert(body_.end(), staging_.data() + rpos_, staging_.data() + rpos_ + k);
                rpos_ += k;
                if (body_.size() < cur_.body_len) return {};
                if (!recv_mac_.verify(recv_seq_, std::span(cur_raw_, protocol::mac_offset), body_,
                                      cur_.mac))
                    return errc::unauthenticated;
                ++recv_seq_;
                ++counters_.frames_in;
                state_ = rstate::dispatch;
                break;
            }
            case rstate::dispatch: {
                MEMKV_TRY(dispatch(h));
                if (paused_ || yielded_) return {};
                break;
            }
            case rstate::payload: {
                const std::size_t k = std::min(payload_left_, avail());
                if (discarding_) {
                    payload_left_ -= k;
                } else {
                    copy_to_target(staging_.data() + rpos_, k);
                    counters_.payload_bytes_copied += k;
                }
                rpos_ += k;
                if (payload_left_ > 0) return {};
                finish_payload(h);
                break;
            }
            }
        }
    }

    template <class Handler>
    result<void> dispatch(Handler& h) noexcept {
        target_.clear();
        const frame_action a = h.on_frame(cur_, std::span<const std::byte>(body_));
        if (a == frame_action::pause) {
            paused_ = true;
            return {};
        }
        paused_ = false;
        if (a == frame_action::yield) {
            if (cur_.payload_len != 0) return errc::protocol;
            yielded_ = true;
            state_ = rstate::header;
            return {};
        }
        discarding_ = a == frame_action::discard;
        payload_left_ = cur_.payload_len;
        tgt_idx_ = tgt_off_ = 0;
        if (!discarding_) {
            std::size_t cap = 0;
            for (const auto& v : target_)
                cap += v.iov_len;
            if (cap < cur_.payload_len) return errc::internal;
        }
        if (cur_.payload_len == 0) {
            if (!discarding_) h.on_payload(cur_, true);
            state_ = rstate::header;
        } else {
            state_ = rstate::payload;
        }
        return {};
    }

    void copy_to_target(const std::byte* src, std::size_t n) noexcept {
        std::size_t done = 0;
        while (done < n && tgt_idx_ < target_.size()) {
            auto& v = target_[tgt_idx_];
            const std::size_t k = std::min(v.iov_len - tgt_off_, n - done);
            std::memcpy(static_cast<std::byte*>(v.iov_base) + tgt_off_, src + done, k);
            done += k;
            tgt_off_ += k;
            if (tgt_off_ == v.iov_len) {
                ++tgt_idx_;
                tgt_off_ = 0;
            }
        }
        payload_left_ -= n;
    }

    template <class Handler>
    void finish_payload(Handler& h) noexcept {
        state_ = rstate::header;
        if (discarding_) return;
        std::uint32_t crc = 0;
        std::size_t left = cur_.payload_len;
        for (const auto& v : target_) {
            const std::size_t k = std::min(v.iov_len, left);
            crc = crc32c(v.iov_base, k, crc);
            left -= k;
            if (left == 0) break;
        }
        h.on_payload(cur_, crc == cur_.checksum);
    }

    Stream stream_;
    auth::frame_mac send_mac_;
    auth::frame_mac recv_mac_;
    protocol::limits limits_;
    std::uint64_t send_seq_ = 0;
    std::uint64_t recv_seq_ = 0;

    // outgoing
    std::deque<out_frame> out_;
    std::size_t head_written_ = 0; // bytes of out_.front() already written
    std::size_t queued_bytes_ = 0;
    std::vector<iovec> iov_;
    std::vector<std::uint64_t> sent_;

    // incoming
    std::vector<std::byte> staging_;
    std::size_t rpos_ = 0, rend_ = 0;
    rstate state_ = rstate::header;
    protocol::frame_header cur_;
    std::byte cur_raw_[protocol::mac_offset];
    std::vector<std::byte> body_;
    std::vector<iovec> target_;
    std::size_t tgt_idx_ = 0, tgt_off_ = 0;
    std::size_t payload_left_ = 0;
    bool discarding_ = false;
    bool paused_ = false;
    bool yielded_ = false;
    channel_counters counters_;
};

} // namespace memkv::detail
