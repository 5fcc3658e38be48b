// SPDX-License-Identifier: Apache-2.0
// value_read<Store>: the machine that returns one GET's range of a stored value.
#pragma once

#include <memkv/checksum.hpp>
#include <memkv/detail/server/op_host.hpp>
#include <memkv/detail/server/shard_services.hpp>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <memory>
#include <string>

namespace memkv::detail::server {

/// Returns a range of a stored value. Pieces (one pool buffer each) are read from the store a
/// few ahead (buffers_per_request, counting pieces being pushed), their stored chunk CRCs
/// verified, and pushed through the connection's data path in offset order. The value's region
/// stays pinned until nothing of the read is in flight, so its bytes are never reused under it.
///
/// Events: start(), retry() (buffers came back), on_io() (a read or a push completed),
/// detach() (the connection closed).
///
/// Failures: damaged stored bytes drop the entry (a miss from then on) and are answered as a
/// miss, or, once bytes went out, as errc::checksum; a failed read is answered with its error.
template <store Store>
class value_read final : public waiting_op, public std::enable_shared_from_this<value_read<Store>> {
public:
    using services = shard_services<Store>;
    using io = op_io<value_read>;

    /// A GET of [offset, offset + length) of `entry` (copied: the index may change meanwhile),
    /// `key` its index key; the range must lie inside the value.
    value_read(services& s, op_host& host, std::uint64_t id, storage::index_entry entry,
               std::string key, std::uint64_t offset, std::uint64_t length)
        : s_(s), host_(&host), id_(id), entry_(std::move(entry)), key_(std::move(key)),
          range_off_(offset), range_len_(length) {
        const std::uint64_t bsize = s_.pool.buffer_size();
        next_piece_ = range_off_ / bsize;
        end_piece_ = range_len_ == 0 ? next_piece_ : (range_off_ + range_len_ + bsize - 1) / bsize;
    }

    std::uint64_t id() const noexcept { return id_; }

    void start() {
        auto self = this->shared_from_this();
        s_.engine.pin(entry_.region);
        if (range_len_ == 0) {
            done_ = true;
            host_->reply_get(head());
            return finish();
        }
        schedule();
        finish(); // a read refused at once fails it with nothing in flight
    }

    void retry() override {
        auto self = this->shared_from_this();
        if (!done_) schedule();
        finish();
    }

    void on_io(const io& x, std::int64_t res) {
        auto self = this->shared_from_this();
        if (x.kind == io_kind::push)
            on_pushed(x, res);
        else
            on_read(x, res);
        finish();
    }

    void detach() {
        auto self = this->shared_from_this();
        host_ = nullptr;
        done_ = true;
        drop_ready();
        finish();
    }

private:
    struct piece {
        std::uint64_t index = 0;
        std::byte* buf = nullptr;
        bool ready = false;
    };

    get_reply head() const { return {id_, entry_.value_len, range_len_, entry_.meta}; }

    /// Reads the next pieces, up to the per-request read-ahead: pieces being read, waiting and
    /// being pushed count alike, or a client reading slower than the store would let one GET
    /// take the pool (and hold its connection over the in-flight cap).
    void schedule() {
        const std::uint64_t bsize = s_.pool.buffer_size();
        while (host_ && !done_ && next_piece_ < end_piece_ &&
               pieces_.size() + pushing_ < s_.cfg.buffers_per_request) {
            // The read-ahead is bounded per request and by the pool, not by the connection's
            // in-flight cap (which stops the connection's reading, as it always did): a device
            // that likes deep queues gets them from a few large GETs.
            std::byte* b = s_.pool.acquire();
            if (!b) return s_.waiters.add(this->shared_from_this());
            host_->held_buffers(1);
            const auto k = next_piece_++;
            const std::uint64_t start = k * bsize;
            const std::uint64_t len = std::min(bsize, entry_.value_len - start);
            const std::uint32_t bs = s_.store.block_size();
            const std::uint64_t aligned = (len + bs - 1) / bs * bs;
            pieces_.push_back({k, b, false});
            const auto tag =
                s_.tags.add(io{this->shared_from_this(), io_kind::store_read, b, aligned, k});
            if (auto r = s_.store.read(entry_.device_offset + start, {b, aligned}, tag); !r) {
                s_.tags.cancel(tag);
                pieces_.back().ready = true; // given back by fail()
                return fail(r.error());
            }
            ++reading_;
            s_.counters.bytes_read.fetch_add(aligned, std::memory_order_relaxed);
        }
    }

    void on_read(const io& x, std::int64_t res) {
        --reading_;
        auto p = std::find_if(pieces_.begin(), pieces_.end(),
                              [&](const piece& q) { return q.buf == x.buf; });
        if (done_ || res < 0 || static_cast<std::uint64_t>(res) != x.expect) {
            if (p != pieces_.end()) pieces_.erase(p);
            release(x.buf);
            if (!done_) fail(res < 0 ? errno_code(static_cast<int>(res)) : errno_code(EIO));
            return;
        }
        p->ready = true;
        deliver();
    }

    /// Verifies the stored CRC chunks of a piece.
    bool intact(const piece& p) const {
        const std::uint64_t bsize = s_.pool.buffer_size();
        const std::uint64_t start = p.index * bsize;
        const std::uint64_t len = std::min(bsize, entry_.value_len - start);
        for (std::uint64_t off = 0; off < len; off += storage::crc_chunk_size) {
            const auto chunk = (start + off) / storage::crc_chunk_size;
            const auto n = std::min<std::uint64_t>(storage::crc_chunk_size, len - off);
            if (chunk >= entry_.crcs.size() || crc32c(p.buf + off, n) != entry_.crcs[chunk])
                return false;
        }
        return true;
    }

    /// Pushes every piece that is ready, in offset order.
    void deliver() {
        const std::uint64_t bsize = s_.pool.buffer_size();
        while (host_ && !done_ && !pieces_.empty() && pieces_.front().ready) {
            const auto p = pieces_.front();
            if (!intact(p)) {
                s_.counters.checksum_errors.fetch_add(1, std::memory_order_relaxed);
                s_.engine.drop_corrupt(key_, entry_.version); // a miss from now on
                // Damaged stored bytes are a counted miss; once part of the value went out,
                // the request fails instead (the client discards what it got).
                return fail(make_error_code(head_out_ ? errc::checksum : errc::not_found));
            }
            pieces_.pop_front();
            const std::uint64_t pstart = p.index * bsize;
            const std::uint64_t from = std::max(pstart, range_off_);
            const std::uint64_t to = std::min(pstart + bsize, range_off_ + range_len_);
            if (!head_out_ && host_->reply_rides_payload()) {
                host_->announce_get(head());
                head_out_ = true; // with the push below: bytes after it are the client's
            }
            const auto tag = s_.tags.add(io{this->shared_from_this(), io_kind::push, p.buf, 0, 0});
            const protocol::payload_ref ref{id_, from - range_off_, to - from, range_len_};
            if (auto r = host_->push({p.buf + (from - pstart), to - from}, ref, tag); !r) {
                s_.tags.cancel(tag);
                release(p.buf);
                return fail(r.error());
            }
            ++pushing_;
            s_.counters.bytes_out.fetch_add(to - from, std::memory_order_relaxed);
            if (to == range_off_ + range_len_) {
                last_pushed_ = true;
                if (host_->reply_rides_payload()) host_->answered(id_);
            }
        }
    }

    void on_pushed(const io& x, std::int64_t res) {
        --pushing_;
        release(x.buf);
        if (res < 0) {
            if (!done_) fail(errno_code(static_cast<int>(res)));
            return;
        }
        if (last_pushed_ && pushing_ == 0 && !done_) {
            done_ = true;
            // One-sided paths: the client learns of the bytes once they are in its memory.
            if (host_ && !host_->reply_rides_payload()) host_->reply_get(head());
            return;
        }
        schedule();
    }

    void fail(std::error_code ec) {
        if (done_) return;
        done_ = true;
        if (host_) host_->fail_get(id_, ec, range_len_, head_out_);
        drop_ready();
    }

    /// Gives back the buffers of pieces read and not pushed (those being read come back at
    /// their completion).
    void drop_ready() {
        for (const auto& p : pieces_)
            if (p.ready) release(p.buf);
        std::erase_if(pieces_, [](const piece& p) { return p.ready; });
    }

    /// Unpins and forgets the read once nothing of it is in flight.
    void finish() {
        if (unpinned_ || !done_ || reading_ != 0 || pushing_ != 0 || !pieces_.empty()) return;
        unpinned_ = true;
        s_.engine.unpin(entry_.region);
        if (host_) host_->op_done(id_);
    }

    void release(std::byte* b) {
        s_.give_back(b);
        if (host_) host_->held_buffers(-1);
    }

    services& s_;
    op_host* host_;
    std::uint64_t id_;
    storage::index_entry entry_;
    std::string key_;
    std::uint64_t range_off_, range_len_;
    std::uint64_t next_piece_ = 0, end_piece_ = 0; // pieces to read [next, end)
    std::deque<piece> pieces_;                     // being read or ready, in piece order
    unsigned reading_ = 0, pushing_ = 0;
    bool head_out_ = false; // the reply head went out (rides the first push on stream paths)
    bool last_pushed_ = false, done_ = false, unpinned_ = false;
};

} // namespace memkv::detail::server
