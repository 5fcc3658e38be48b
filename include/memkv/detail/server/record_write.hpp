// SPDX-License-Identifier: Apache-2.0
// record_write<Store>: the machine that writes one record, a PUT's value or a DEL's tombstone.
#pragma once

#include <memkv/checksum.hpp>
#include <memkv/detail/server/op_host.hpp>
#include <memkv/detail/server/shard_services.hpp>
#include <memkv/protocol/frame.hpp>

#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

namespace memkv::detail::server {

/// Writes one record. A PUT's value is pulled through the connection's data path piece by piece
/// (a piece is one pool buffer, several whole CRC chunks), each piece is checksummed and written
/// as soon as it is in, in whatever order the pieces arrive; the header block goes out once the
/// last piece is in (beside the value's last writes: one device round trip), or with the value
/// in one write when the value fits one buffer. A DEL writes a tombstone header. When every
/// write completed, the region's open header is on the store and (durable PUTs, every DEL) the
/// store is flushed, the record is published and acknowledged.
///
/// Events: start(), retry() (space, buffers or readiness came), on_io() (a pull, write or flush
/// completed), detach() (the connection closed: nothing is committed, the reservation is given
/// back once nothing is in flight).
///
/// Failures: a refused reservation is answered at once (the value skipped); a failed pull or
/// write fails the record; a header that may have landed is zeroed before the failure is
/// answered, so that no restart finds a record whose PUT was refused.
template <store Store>
class record_write final : public waiting_op,
                           public std::enable_shared_from_this<record_write<Store>> {
public:
    using services = shard_services<Store>;
    using io = op_io<record_write>;

    /// A PUT (`op` put: info holds tenant, key, meta, flags, value_len, expiry) or a DEL (`op`
    /// del: info holds tenant and key). `wire_flags` are the request's (if_absent, durable).
    record_write(services& s, op_host& host, std::uint64_t id, protocol::opcode op,
                 storage::record_info info, std::uint16_t wire_flags)
        : s_(s), host_(&host), id_(id), op_(op), flags_(wire_flags), info_(std::move(info)) {
        const auto bsize = s_.pool.buffer_size();
        pieces_ = (info_.value_len + bsize - 1) / bsize;
        info_.crcs.assign(storage::crc_chunks(info_.value_len), 0);
    }

    std::uint64_t id() const noexcept { return id_; }
    std::uint64_t value_len() const noexcept { return info_.value_len; }
    /// Whether value bytes are still expected from the client.
    bool receiving() const noexcept { return !finished_ && !failed_ && pulled_ < pieces_; }
    bool finished() const noexcept { return finished_; }

    /// Reserves the record's space and starts pulling its value.
    void start() {
        auto self = this->shared_from_this();
        reserve();
        advance(); // a write refused at once fails it with nothing in flight
    }

    void retry() override {
        auto self = this->shared_from_this();
        if (finished_) return;
        if (!ticket_)
            reserve();
        else
            arm();
        advance();
    }

    /// A pull, write or flush of this record completed with `res` (bytes or -errno).
    void on_io(const io& x, std::int64_t res) {
        auto self = this->shared_from_this();
        if (res >= 0 && x.kind != io_kind::pull && static_cast<std::uint64_t>(res) != x.expect)
            res = -EIO; // stores complete whole operations (store concept rule 2)
        if (x.kind == io_kind::pull)
            on_pulled(x, res);
        else
            on_written(x, res);
        advance();
    }

    /// The client's stream has reached value byte `end` (pulls_on_demand paths): pulls are
    /// armed up to there as buffers allow.
    void want(std::uint64_t end) {
        auto self = this->shared_from_this();
        wanted_ = std::max(wanted_, end);
        if (ticket_) arm();
        advance();
    }

    /// The connection is gone.
    void detach() {
        auto self = this->shared_from_this();
        host_ = nullptr;
        fail(make_error_code(errc::closed));
        if (!ticket_) finished_ = true; // never reserved: nothing to give back
        advance();
    }

private:
    bool tombstone() const noexcept { return op_ == protocol::opcode::del; }

    void reserve() {
        auto& e = s_.engine;
        const auto key = storage::index_key(info_.tenant, as_bytes(info_.key));
        // The header's size is known now: CRCs are 4 bytes per chunk of the value.
        const auto header_bytes = storage::record_header_bytes(info_);
        auto t = tombstone()
                     ? e.reserve_tombstone(key, header_bytes, s_.now_ms())
                     : e.reserve(key, info_.value_len, (flags_ & protocol::flags::if_absent) != 0,
                                 header_bytes, s_.now_ms());
        if (!t) return refuse(t.error());
        if (!*t) return s_.waiters.add(this->shared_from_this()); // space is being made
        ticket_ = std::move(**t);
        info_.version = ticket_->version;
        if (tombstone()) info_.flags = storage::record_flags::tombstone;
        if (pieces_ == 0) return write_header();
        arm();
    }

    /// Answers a PUT or DEL that cannot be stored; a PUT's value is not wanted.
    void refuse(std::error_code ec) {
        if (ec == make_error_code(errc::exists))
            s_.counters.put_if_absent_hits.fetch_add(1, std::memory_order_relaxed);
        finished_ = true;
        if (!host_) return;
        if (info_.value_len > 0) host_->skip({id_, 0, info_.value_len, info_.value_len});
        host_->reply(op_, id_, ec);
        host_->op_done(id_);
    }

    /// Pulls the next pieces as buffers and the connection's cap allow: up to two at a time
    /// (a frame of a stream path straddles at most two buffers), and on a pulls_on_demand path
    /// only those the stream has reached.
    void arm() {
        const auto bsize = s_.pool.buffer_size();
        while (host_ && !failed_ && armed_ < pieces_ && pulling_ < pull_window &&
               (!host_->pulls_on_demand() || armed_ * bsize < wanted_)) {
            if (!host_->may_hold_buffer()) return s_.waiters.add(this->shared_from_this());
            std::byte* b = s_.pool.acquire();
            if (!b) return s_.waiters.add(this->shared_from_this());
            host_->held_buffers(1);
            const auto k = armed_++;
            const auto off = k * bsize;
            const auto len = std::min<std::uint64_t>(bsize, info_.value_len - off);
            const auto tag = s_.tags.add(io{this->shared_from_this(), io_kind::pull, b, len, k});
            if (auto r = host_->pull({id_, off, len, info_.value_len}, {b, len}, tag); !r) {
                s_.tags.cancel(tag);
                release(b);
                return fail(r.error());
            }
            ++pulling_;
        }
    }

    void on_pulled(const io& x, std::int64_t res) {
        --pulling_;
        if (res < 0 || failed_) {
            if (res == -EBADMSG) {
                s_.counters.checksum_errors.fetch_add(1, std::memory_order_relaxed);
                fail(make_error_code(errc::checksum));
            } else if (res < 0) {
                fail(make_error_code(errc::closed));
            }
            return release(x.buf);
        }
        ++pulled_;
        const auto bsize = s_.pool.buffer_size();
        const auto off = x.piece * bsize;
        // The piece holds whole CRC chunks (buffers are chunk multiples) but the value's last.
        for (std::uint64_t at = 0; at < x.expect; at += storage::crc_chunk_size) {
            const auto n = std::min<std::uint64_t>(storage::crc_chunk_size, x.expect - at);
            info_.crcs[(off + at) / storage::crc_chunk_size] = crc32c(x.buf + at, n);
        }
        write_piece(x);
        if (pulled_ == pieces_ && !header_written_ && !failed_) write_header();
        arm();
    }

    /// Writes a piece padded to the block size; a value that fits one buffer goes out with its
    /// header (built in the buffer's headroom, right before the value) in one write.
    void write_piece(const io& x) {
        const std::uint32_t bs = s_.store.block_size();
        const std::size_t len = (x.expect + bs - 1) / bs * bs;
        std::memset(x.buf + x.expect, 0, len - x.expect);
        const bool whole = pieces_ == 1 && s_.pool.headroom() >= storage::meta_block &&
                           ticket_->header_offset + storage::meta_block == ticket_->value_offset;
        std::span<const std::byte> out(x.buf, len);
        std::uint64_t at = ticket_->value_offset + x.piece * s_.pool.buffer_size();
        if (whole) {
            std::byte* h = x.buf - storage::meta_block;
            s_.engine.header_block(
                *ticket_, info_, std::span<std::byte, storage::meta_block>(h, storage::meta_block));
            out = {h, storage::meta_block + len};
            at = ticket_->header_offset;
            header_written_ = true;
        }
        if (auto ec = submit_write(at, out, x.buf)) {
            if (whole) header_written_ = false; // it never went out
            release(x.buf);
            fail(ec);
        }
    }

    /// Writes the header block once every byte of the value is in (its CRCs are complete then).
    void write_header() {
        header_ = std::make_unique<storage::aligned_buffer>(storage::meta_block);
        s_.engine.header_block(*ticket_, info_, header_->block());
        header_written_ = true;
        if (auto ec = submit_write(ticket_->header_offset, header_->span(), nullptr)) {
            header_written_ = false;
            fail(ec);
        }
    }

    /// Submits one store write of the record (from pool buffer `buf`, returned at completion,
    /// if any). Returns the submission error, if any.
    std::error_code submit_write(std::uint64_t offset, std::span<const std::byte> bytes,
                                 std::byte* buf) {
        const auto tag =
            s_.tags.add(io{this->shared_from_this(), io_kind::store_write, buf, bytes.size(), 0});
        if (auto r = s_.store.write(offset, bytes, tag); !r) {
            s_.tags.cancel(tag);
            return r.error();
        }
        s_.counters.bytes_written.fetch_add(bytes.size(), std::memory_order_relaxed);
        ++writes_;
        return {};
    }

    void on_written(const io& x, std::int64_t res) {
        --writes_;
        if (x.kind == io_kind::store_flush) flushed_ = true;
        if (x.buf) release(x.buf);
        if (res < 0) fail(errno_code(static_cast<int>(res)));
    }

    void fail(std::error_code ec) {
        if (failed_ || finished_) return;
        failed_ = ec;
        // The rest of the value will not be pulled.
        if (host_ && armed_ < pieces_) {
            const auto off = armed_ * s_.pool.buffer_size();
            host_->skip({id_, off, info_.value_len - off, info_.value_len});
        }
        armed_ = pieces_;
    }

    /// Moves the record on once nothing of it is in flight: value and header written ->
    /// region ready -> flush (durable PUTs, every DEL) -> publish and acknowledge; or, failed:
    /// header zeroed if it may have landed -> reservation given back -> error answered.
    void advance() {
        if (finished_ || writes_ != 0 || pulling_ != 0 || !ticket_) return;
        if (failed_) return abandon();
        if (pulled_ < pieces_ || !header_written_) return; // value still arriving
        switch (s_.engine.readiness(*ticket_)) {
        case storage::region_readiness::pending:
            return s_.waiters.add(this->shared_from_this());
        case storage::region_readiness::failed:
            fail(errno_code(EIO));
            return abandon();
        case storage::region_readiness::ready:
            break;
        }
        const bool durable = tombstone() || (flags_ & protocol::flags::durable);
        if (durable && !flushed_) {
            const auto tag =
                s_.tags.add(io{this->shared_from_this(), io_kind::store_flush, nullptr, 0, 0});
            if (auto r = s_.store.flush(tag); !r) {
                s_.tags.cancel(tag);
                fail(r.error());
                return abandon();
            }
            ++writes_;
            return;
        }
        finished_ = true;
        const auto bytes = info_.value_len;
        auto r = s_.engine.commit(std::move(*ticket_), std::move(info_));
        if (r && !tombstone()) s_.counters.bytes_in.fetch_add(bytes, std::memory_order_relaxed);
        finish(r ? std::error_code{} : r.error());
    }

    void abandon() {
        if (header_written_ && !header_voided_) {
            // The header went out beside the value; if it landed, a restart would find the
            // record of a request answered with an error. Zero it first (best effort: on error
            // the value's chunk CRCs, checked at recovery, are what is left).
            header_voided_ = true;
            header_ = std::make_unique<storage::aligned_buffer>(storage::meta_block);
            if (!submit_write(ticket_->header_offset, header_->span(), nullptr)) return;
        }
        finished_ = true;
        s_.engine.abort(std::move(*ticket_));
        finish(failed_);
    }

    void finish(std::error_code status) {
        if (!host_) return;
        host_->reply(op_, id_, status);
        host_->op_done(id_);
    }

    void release(std::byte* b) {
        s_.give_back(b);
        if (host_) host_->held_buffers(-1);
    }

    static std::span<const std::byte> as_bytes(const std::string& s) noexcept {
        return std::as_bytes(std::span(s.data(), s.size()));
    }

    static constexpr unsigned pull_window = 2;

    services& s_;
    op_host* host_;
    std::uint64_t id_;
    protocol::opcode op_;
    std::uint16_t flags_;
    storage::record_info info_;
    std::optional<storage::put_ticket> ticket_;
    std::unique_ptr<storage::aligned_buffer> header_;
    std::uint64_t pieces_ = 0, armed_ = 0, pulled_ = 0;
    std::uint64_t wanted_ = 0; // pulls_on_demand: value bytes the stream has reached
    unsigned pulling_ = 0, writes_ = 0;
    std::error_code failed_;
    bool header_written_ = false, header_voided_ = false, flushed_ = false, finished_ = false;
};

} // namespace memkv::detail::server
