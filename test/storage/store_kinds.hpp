// SPDX-License-Identifier: Apache-2.0
// The persistent store kinds a server test runs over, behind one interface so that a test body
// is written once (TEMPLATE_TEST_CASE over file_kind and block_kind):
//  - file_kind: a file in a fresh directory under $MEMKV_TEST_DIR (default /var/tmp);
//  - block_kind: a loop device (losetup --direct-io=on, root) over a backing file there.
// Each owns its file or device and removes it on destruction, whatever happened in between.
#pragma once

#include "support/loop_device.hpp"

#include <memkv/memkv.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>

namespace memkv::test {

/// Bytes the filesystem has allocated to `path` (st_blocks * 512), and its size.
struct allocation {
    std::uint64_t allocated = 0, size = 0;
};
inline allocation allocation_of(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return {};
    return {static_cast<std::uint64_t>(st.st_blocks) * 512, static_cast<std::uint64_t>(st.st_size)};
}

/// A file_store in a fresh directory.
class file_kind {
public:
    using store_type = file_store;
    using server_type = file_server;
    static constexpr const char* name = "file_store";

    /// A store of `capacity` bytes (the file is created and preallocated by file_store, so
    /// every hole in it afterwards was punched by a discard). `why` says what is missing when
    /// the result is empty.
    static std::optional<file_kind> make(std::uint64_t capacity, std::string& why) {
        std::string tmpl = test_dir_base() + "/memkv-persist-XXXXXX";
        if (::mkdtemp(tmpl.data()) == nullptr) {
            why = "cannot create a directory under " + test_dir_base();
            return std::nullopt;
        }
        file_kind k;
        k.dir_ = tmpl;
        k.capacity_ = capacity;
        return k;
    }
    file_kind(file_kind&& o) noexcept : dir_(std::exchange(o.dir_, {})), capacity_(o.capacity_) {}
    file_kind& operator=(file_kind&&) = delete;
    ~file_kind() {
        std::error_code ec;
        if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
    }

    server_type::store_config store_config() const {
        file_store::config c;
        c.path = dir_ + "/data";
        c.capacity = capacity_;
        return c;
    }
    /// The file whose holes show the store's discards.
    std::string backing_file() const { return dir_ + "/data"; }
    std::string describe() const { return backing_file(); }

private:
    file_kind() = default;
    std::string dir_;
    std::uint64_t capacity_ = 0;
};

/// A block_store on a loop device with direct I/O, over a preallocated backing file: a discard
/// of the device punches a hole in that file, and nothing else does.
class block_kind {
public:
    using store_type = block_store;
    using server_type = block_server;
    static constexpr const char* name = "block_store";

    static std::optional<block_kind> make(std::uint64_t capacity, std::string& why) {
        auto loop = loop_device::create(capacity, true, why);
        if (!loop) return std::nullopt;
        return block_kind(std::move(*loop));
    }

    server_type::store_config store_config() const {
        block_store::config c;
        c.devices = {loop_.path()};
#if !defined(MEMKV_HAS_BLKID)
        c.format = true; // without libblkid every device is refused unless formatting
#endif
        return c;
    }
    /// The loop device's backing file: the device's discards punch holes in it.
    std::string backing_file() const {
        return loop_.backing_file();
    }
    std::string describe() const {
        return loop_.path() + " over " + loop_.backing_file();
    }

private:
    explicit block_kind(loop_device loop) : loop_(std::move(loop)) {}
    loop_device loop_;
};

} // namespace memkv::test
