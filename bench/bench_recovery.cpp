// SPDX-License-Identifier: Apache-2.0
// Recovery time and DRAM per index entry: fills one shard's engine with N small records in a
// real file, then rebuilds the index from it after a clean shutdown (summaries) and after a
// crash (no summaries: every region scanned). Prints one line per measurement.
//
//   bench_recovery [entries=1000000] [file=/var/tmp/memkv-recovery.bin] [value_bytes=4096]
#include <memkv/concepts.hpp>
#include <memkv/storage/engine.hpp>

#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

using namespace memkv;

/// The engine's metadata I/O with pread/pwrite on a file: synchronous reads for recovery, and
/// writes, flushes and discards done at once whose completions wait in done() for the caller
/// to hand back (engine::on_meta_io), as a shard would when its store completes them.
class file_io final : public storage::meta_reader, public storage::meta_submitter {
public:
    explicit file_io(int fd) : fd_(fd) {}
    result<void> read(std::uint64_t off, std::span<std::byte> b) override {
        return ::pread(fd_, b.data(), b.size(), static_cast<off_t>(off)) == ssize_t(b.size())
                   ? result<void>()
                   : result<void>(errno_code(errno ? errno : EIO));
    }
    result<void> write(std::uint64_t off, std::span<const std::byte> b) {
        return ::pwrite(fd_, b.data(), b.size(), static_cast<off_t>(off)) == ssize_t(b.size())
                   ? result<void>()
                   : result<void>(errno_code(errno ? errno : EIO));
    }
    result<void> write(std::uint64_t off, std::span<const std::byte> b,
                       std::uint64_t token) override {
        auto r = write(off, b);
        done_.push_back({token, r ? static_cast<std::int64_t>(b.size()) : -EIO});
        return {};
    }
    result<void> flush(std::uint64_t token) override {
        done_.push_back({token, ::fdatasync(fd_) == 0 ? 0 : -EIO});
        return {};
    }
    result<void> discard(std::uint64_t off, std::uint64_t len, std::uint64_t token) override {
        ::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                    static_cast<off_t>(len));
        done_.push_back({token, 0});
        return {};
    }
    /// Hands every completed metadata operation back to `e`.
    void complete(storage::engine& e) {
        while (!done_.empty()) {
            auto c = done_.front();
            done_.erase(done_.begin());
            e.on_meta_io(c.tag, c.res);
        }
    }

private:
    int fd_;
    std::vector<io_completion> done_;
};

/// Bytes allocated on the heap now (glibc).
std::size_t heap_bytes() {
    return ::mallinfo2().uordblks;
}

storage::engine make_engine(file_io& io, std::uint64_t length) {
    storage::engine::config c;
    c.base = 0;
    c.length = length;
    c.region_size = 128ull << 20;
    c.shard = 0;
    c.seed = 0x5eed;
    c.max_value = 64ull << 20;
    c.io = &io;
    auto e = storage::engine::create(c);
    if (!e) {
        std::fprintf(stderr, "engine: %s\n", e.error().message().c_str());
        std::exit(1);
    }
    return std::move(*e);
}

/// The CRCs of a value of `value` zero bytes: the sparse file reads such values back without
/// their being written, and recovery checks the CRCs of the values it scans.
std::vector<std::uint32_t> zero_crcs(std::uint64_t value) {
    std::vector<std::uint32_t> crcs;
    const std::vector<std::byte> zeros(storage::crc_chunk_size);
    for (std::uint64_t at = 0; at < value; at += storage::crc_chunk_size)
        crcs.push_back(
            crc32c(zeros.data(), std::min<std::uint64_t>(storage::crc_chunk_size, value - at)));
    return crcs;
}

/// Fills a fresh engine over the file with `n` records of `value` bytes (only their headers are
/// written) and leaves it as kill -9 would: the open region without its summary.
bool fill(file_io& io, std::uint64_t length, std::uint64_t n, std::uint64_t value) {
    auto e = make_engine(io, length);
    (void)e.recover(io); // a blank file: every region free
    storage::aligned_buffer hdr(storage::meta_block);
    const auto crcs = zero_crcs(value);
    const auto t0 = std::chrono::steady_clock::now();
    for (std::uint64_t i = 0; i < n; ++i) {
        storage::record_info info;
        info.tenant = "default";
        info.key = "prefix-hash-" + std::to_string(i * 2654435761u);
        info.value_len = value;
        info.crcs = crcs;
        const auto key = storage::index_key(
            info.tenant, std::as_bytes(std::span(info.key.data(), info.key.size())));
        auto t = e.reserve(key, value, false, storage::record_header_bytes(info));
        while (t && !*t) { // a region is being reclaimed: its metadata I/O is done
            io.complete(e);
            t = e.reserve(key, value, false, storage::record_header_bytes(info));
        }
        if (!t) {
            std::fprintf(stderr, "reserve %llu: %s\n", static_cast<unsigned long long>(i),
                         t.error().message().c_str());
            return false;
        }
        auto& ticket = **t;
        io.complete(e); // the region's open header, if a region was opened
        info.version = ticket.version;
        e.header_block(ticket, info, hdr.block());
        // Only the header is written: the value's zeros are the file's hole.
        if (!io.write(ticket.header_offset, hdr.span())) return false;
        if (!e.commit(std::move(ticket), std::move(info))) return false;
        io.complete(e);
    }
    std::printf("fill: %.2f s\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return true;
}

/// Recovers the file with a cold page cache and prints the time and the index's DRAM; after
/// `crash` (the open region scanned) or after a clean shutdown (summaries only, made here by
/// recovering once and sealing). False when recovery fails or misses entries.
bool measure(file_io& io, int fd, std::uint64_t length, std::uint64_t n, bool crash) {
    if (!crash) {
        auto e = make_engine(io, length);
        if (!e.recover(io)) return false;
        e.seal_all();
        io.complete(e);
        if (e.meta_busy()) return false;
    }
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); // a cold page cache
    const auto heap0 = heap_bytes();
    auto e = make_engine(io, length);
    auto rs = e.recover(io);
    if (!rs) {
        std::fprintf(stderr, "recover: %s\n", rs.error().message().c_str());
        return false;
    }
    const auto heap1 = heap_bytes();
    std::printf("recovery after %s: %llu entries in %.2f s (%.2f s per million), %llu regions "
                "from summaries, %llu scanned, %llu corrupt; index DRAM %.0f bytes/entry\n",
                crash ? "kill -9 (open region scanned)" : "a clean shutdown (summaries only)",
                static_cast<unsigned long long>(rs->entries), rs->seconds,
                rs->seconds * 1e6 / double(std::max<std::uint64_t>(1, rs->entries)),
                static_cast<unsigned long long>(rs->regions_summarised),
                static_cast<unsigned long long>(rs->regions_scanned),
                static_cast<unsigned long long>(rs->corrupt_records),
                double(heap1 - heap0) / double(std::max<std::uint64_t>(1, rs->entries)));
    if (rs->entries == n) return true;
    std::fprintf(stderr, "expected %llu entries\n", static_cast<unsigned long long>(n));
    return false;
}

} // namespace

int main(int argc, char** argv) {
    const std::uint64_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 0) : 1000000;
    const std::string path = argc > 2 ? argv[2] : "/var/tmp/memkv-recovery.bin";
    const std::uint64_t value = argc > 3 ? std::strtoull(argv[3], nullptr, 0) : 4096;
    const std::uint64_t record = storage::meta_block + (value + 4095) / 4096 * 4096;
    // Room for every record plus summaries and two spare regions.
    const std::uint64_t length = ((n * (record + 160)) / (128ull << 20) + 3) * (128ull << 20);
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(length)) != 0) {
        std::perror(path.c_str());
        return 1;
    }
    file_io io(fd);
    std::printf("entries %llu, value %llu B, file %s (%.1f GiB sparse)\n",
                static_cast<unsigned long long>(n), static_cast<unsigned long long>(value),
                path.c_str(), double(length) / (1ull << 30));
    if (!fill(io, length, n, value)) return 1;
    for (const bool crash : {true, false})
        if (!measure(io, fd, length, n, crash)) return 1;
    ::close(fd);
    ::unlink(path.c_str());
    return 0;
}
