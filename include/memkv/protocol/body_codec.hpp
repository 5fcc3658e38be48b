// SPDX-License-Identifier: Apache-2.0
// body_reader and body_writer: sequential little-endian cursors over encoded bytes.
#pragma once

#include <memkv/protocol/wire.hpp>

#include <algorithm>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace memkv::protocol::detail {

/// Bounds-checked little-endian cursor over received bytes (a frame body, an on-drive block).
class body_reader {
public:
    explicit body_reader(std::span<const std::byte> b) noexcept : b_(b) {}
    /// Bytes not yet consumed.
    std::size_t remaining() const noexcept { return b_.size() - pos_; }
    /// Reads a u8/u16/u32/u64; false (and nothing consumed) if too few bytes remain.
    bool u8(std::uint8_t& v) noexcept {
        if (remaining() < 1) return false;
        v = std::to_integer<std::uint8_t>(b_[pos_]);
        pos_ += 1;
        return true;
    }
    bool u16(std::uint16_t& v) noexcept {
        if (remaining() < 2) return false;
        v = load_le16(b_.data() + pos_);
        pos_ += 2;
        return true;
    }
    bool u32(std::uint32_t& v) noexcept {
        if (remaining() < 4) return false;
        v = load_le32(b_.data() + pos_);
        pos_ += 4;
        return true;
    }
    bool u64(std::uint64_t& v) noexcept {
        if (remaining() < 8) return false;
        v = load_le64(b_.data() + pos_);
        pos_ += 8;
        return true;
    }
    /// Takes a view of the next `n` bytes; false (and nothing consumed) if fewer remain.
    bool bytes(std::size_t n, std::span<const std::byte>& out) noexcept {
        if (remaining() < n) return false;
        out = b_.subspan(pos_, n);
        pos_ += n;
        return true;
    }
    /// Passes over `n` bytes (reserved ones); false (and nothing consumed) if fewer remain.
    bool skip(std::size_t n) noexcept {
        if (remaining() < n) return false;
        pos_ += n;
        return true;
    }

private:
    std::span<const std::byte> b_;
    std::size_t pos_ = 0;
};

/// Appending little-endian writer over a buffer of the final size: a pre-sized vector (which
/// must not be resized while the writer is in use) or a fixed span (an on-drive block). Writing
/// past the end is a precondition violation (asserted in debug builds).
class body_writer {
public:
    explicit body_writer(std::vector<std::byte>& out) noexcept : out_(out) {}
    explicit body_writer(std::span<std::byte> out) noexcept : out_(out) {}
    /// Appends a u8/u16/u32/u64.
    void u8(std::uint8_t v) noexcept {
        assert(room(1));
        out_[pos_++] = std::byte{v};
    }
    void u16(std::uint16_t v) noexcept {
        assert(room(2));
        store_le16(out_.data() + pos_, v);
        pos_ += 2;
    }
    void u32(std::uint32_t v) noexcept {
        assert(room(4));
        store_le32(out_.data() + pos_, v);
        pos_ += 4;
    }
    void u64(std::uint64_t v) noexcept {
        assert(room(8));
        store_le64(out_.data() + pos_, v);
        pos_ += 8;
    }
    /// Appends `b`.
    void bytes(std::span<const std::byte> b) noexcept {
        assert(room(b.size()));
        std::copy(b.begin(), b.end(), out_.begin() + static_cast<std::ptrdiff_t>(pos_));
        pos_ += b.size();
    }
    /// Leaves `n` bytes as they are (already filled in, or zeroed beforehand).
    void skip(std::size_t n) noexcept {
        assert(room(n));
        pos_ += n;
    }
    /// Bytes written (or skipped) so far.
    std::size_t size() const noexcept { return pos_; }
    /// The bytes written (or skipped) so far: what a checksum that follows them covers.
    std::span<const std::byte> written() const noexcept { return out_.first(pos_); }

private:
    bool room(std::size_t n) const noexcept { return n <= out_.size() - pos_; }

    std::span<std::byte> out_;
    std::size_t pos_ = 0;
};

} // namespace memkv::protocol::detail
