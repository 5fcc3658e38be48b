// SPDX-License-Identifier: Apache-2.0
// The persistent store kinds a server test runs over, behind one interface so that a test body
// is written once (TEMPLATE_TEST_CASE over file_kind and block_kind):
//  - file_kind: a file in a fresh directory under $MEMKV_TEST_DIR (default /var/tmp);
//  - block_kind: a loop device (losetup --direct-io=on, root) over a backing file there.
// Each owns its file or device and removes it on destruction, whatever happened in between.
#pragma once

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

inline std::string test_dir_base() {
    const char* base = std::getenv("MEMKV_TEST_DIR");
    return base && *base ? base : "/var/tmp";
}

/// Runs a shell command; returns its stdout (trailing newlines removed) and exit status.
inline std::pair<std::string, int> run_command(const std::string& cmd) {
    std::string out;
    FILE* f = ::popen(cmd.c_str(), "r");
    if (f == nullptr) return {"", -1};
    char buf[256];
    while (std::fgets(buf, sizeof buf, f) != nullptr)
        out += buf;
    const int st = ::pclose(f);
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r'))
        out.pop_back();
    return {out, WIFEXITED(st) ? WEXITSTATUS(st) : -1};
}

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
    using server_type = block_server;
    static constexpr const char* name = "block_store";

    static std::optional<block_kind> make(std::uint64_t capacity, std::string& why) {
        if (::geteuid() != 0 || ::access("/dev/loop-control", F_OK) != 0) {
            why = "loop devices need root and /dev/loop-control";
            return std::nullopt;
        }
        block_kind k;
        k.file_ = test_dir_base() + "/memkv-persist-loop-XXXXXX";
        const int fd = ::mkstemp(k.file_.data());
        if (fd < 0) {
            k.file_.clear();
            why = "cannot create a backing file under " + test_dir_base();
            return std::nullopt;
        }
        const bool sized = ::fallocate(fd, 0, 0, static_cast<off_t>(capacity)) == 0 ||
                           ::ftruncate(fd, static_cast<off_t>(capacity)) == 0;
        ::close(fd);
        if (!sized) {
            why = "cannot size the backing file " + k.file_;
            return std::nullopt;
        }
        auto [dev, rc] =
            run_command("losetup --find --show --direct-io=on '" + k.file_ + "' 2>/dev/null");
        if (rc != 0 || dev.rfind("/dev/", 0) != 0) {
            why = "cannot create a loop device (losetup)";
            return std::nullopt;
        }
        k.dev_ = dev;
        return k;
    }
    block_kind(block_kind&& o) noexcept
        : file_(std::exchange(o.file_, {})), dev_(std::exchange(o.dev_, {})) {}
    block_kind& operator=(block_kind&&) = delete;
    ~block_kind() {
        if (!dev_.empty()) (void)run_command("losetup -d " + dev_ + " 2>/dev/null");
        if (!file_.empty()) ::unlink(file_.c_str());
    }

    server_type::store_config store_config() const {
        block_store::config c;
        c.devices = {dev_};
#if !defined(MEMKV_HAS_BLKID)
        c.format = true; // without libblkid every device is refused unless formatting
#endif
        return c;
    }
    /// The loop device's backing file: the device's discards punch holes in it.
    std::string backing_file() const {
        return file_;
    }
    std::string describe() const {
        return dev_ + " over " + file_;
    }

private:
    block_kind() = default;
    std::string file_;
    std::string dev_;
};

} // namespace memkv::test
