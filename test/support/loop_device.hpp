// SPDX-License-Identifier: Apache-2.0
// Scratch files and loop devices for the store tests: the scratch directory base, running a shell
// command, and a loop device (losetup --direct-io=on, root) over a backing file there, detached
// and removed on destruction whatever happened in between.
#pragma once

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

namespace memkv::test {

/// Where tests put their files: $MEMKV_TEST_DIR, default /var/tmp.
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

/// A loop device with direct I/O over a backing file of `size` bytes under test_dir_base().
class loop_device {
public:
    /// `preallocate`: allocate the backing file's blocks (so that the device's discards show
    /// as holes in it); otherwise it is sparse. On failure `why` says what was missing.
    static std::optional<loop_device> create(std::uint64_t size, bool preallocate,
                                             std::string& why) {
        if (::geteuid() != 0 || ::access("/dev/loop-control", F_OK) != 0) {
            why = "loop devices need root and /dev/loop-control";
            return std::nullopt;
        }
        loop_device d;
        d.file_ = test_dir_base() + "/memkv-loop-XXXXXX";
        const int fd = ::mkstemp(d.file_.data());
        if (fd < 0) {
            d.file_.clear();
            why = "cannot create a backing file under " + test_dir_base();
            return std::nullopt;
        }
        const bool sized = (preallocate && ::fallocate(fd, 0, 0, static_cast<off_t>(size)) == 0) ||
                           ::ftruncate(fd, static_cast<off_t>(size)) == 0;
        ::close(fd);
        if (!sized) {
            why = "cannot size the backing file " + d.file_;
            return std::nullopt;
        }
        auto [dev, rc] =
            run_command("losetup --find --show --direct-io=on '" + d.file_ + "' 2>/dev/null");
        if (rc != 0 || dev.rfind("/dev/", 0) != 0) {
            why = "cannot create a loop device (losetup)";
            return std::nullopt;
        }
        d.dev_ = dev;
        return d;
    }
    loop_device(loop_device&& o) noexcept
        : file_(std::exchange(o.file_, {})), dev_(std::exchange(o.dev_, {})) {}
    loop_device& operator=(loop_device&&) = delete;
    ~loop_device() {
        if (!dev_.empty()) (void)run_command("losetup -d " + dev_ + " 2>/dev/null");
        if (!file_.empty()) ::unlink(file_.c_str());
    }
    /// The device node (/dev/loopN).
    const std::string& path() const { return dev_; }
    const std::string& backing_file() const { return file_; }

private:
    loop_device() = default;
    std::string file_;
    std::string dev_;
};

} // namespace memkv::test
