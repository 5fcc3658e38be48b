// SPDX-License-Identifier: Apache-2.0
// Helpers of the multi-process failover tests: a memkv-server child process (fork + exec, port
// file, SIGKILL / SIGSTOP / SIGCONT / restart on the same port), the client process's descriptor
// and thread counts, and latency percentiles.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace memkv::test::failover {

using clock = std::chrono::steady_clock;

/// Milliseconds between two time points, as a double.
inline double ms_between(clock::time_point a, clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
}

/// Open descriptors of this process (entries of /proc/self/fd; the directory's own descriptor
/// is counted every time, so counts compare exactly).
inline std::size_t open_fds() {
    std::size_t n = 0;
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
        ++n;
    return n;
}

/// Threads of this process ("Threads:" of /proc/self/status).
inline std::size_t thread_count() {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("Threads:", 0) == 0) return std::stoul(line.substr(8));
    return 0;
}

/// The q-quantile (0..1) of `v` (nearest rank; 0 for an empty set). Sorts `v`.
inline double quantile(std::vector<double>& v, double q) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const auto rank = static_cast<std::size_t>(q * static_cast<double>(v.size()));
    return v[std::min(rank, v.size() - 1)];
}

/// Raises the scheduling priority of the calling thread and of this process's autogroup (with
/// sched_autogroup_enabled, CPU time is first shared between sessions, so that a nice value
/// alone does not count against other sessions' work) for its lifetime; threads and processes
/// created meanwhile inherit it. Best effort: without CAP_SYS_NICE nothing changes.
class priority_boost {
public:
    explicit priority_boost(int nice_value) {
        errno = 0;
        const int old = ::getpriority(PRIO_PROCESS, tid());
        if (errno == 0 && ::setpriority(PRIO_PROCESS, tid(), nice_value) == 0) old_nice_ = old;
        if (auto group = autogroup_nice(); group && write_autogroup(nice_value)) old_group_ = group;
    }
    ~priority_boost() {
        if (old_group_) write_autogroup(*old_group_);
        if (old_nice_) ::setpriority(PRIO_PROCESS, tid(), *old_nice_);
    }
    priority_boost(const priority_boost&) = delete;
    priority_boost& operator=(const priority_boost&) = delete;
    /// Whether the thread's nice value was changed.
    bool active() const noexcept { return old_nice_.has_value(); }
    /// Whether the autogroup's nice value was changed.
    bool group_active() const noexcept { return old_group_.has_value(); }

private:
    static id_t tid() noexcept { return static_cast<id_t>(::syscall(SYS_gettid)); }
    /// The nice value of this process's autogroup ("/autogroup-N nice V"), if there is one.
    static std::optional<int> autogroup_nice() {
        std::ifstream f("/proc/self/autogroup");
        std::string name, word;
        int v = 0;
        if (f >> name >> word >> v && word == "nice") return v;
        return std::nullopt;
    }
    static bool write_autogroup(int v) {
        std::ofstream f("/proc/self/autogroup");
        f << v << std::flush;
        return static_cast<bool>(f);
    }
    std::optional<int> old_nice_, old_group_;
};

/// A directory for the servers' logs and port files, removed when the process exits unless
/// MEMKV_KEEP_LOGS is set (failures print the logs that matter).
inline const std::string& work_dir() {
    // Never destroyed: the exit handler below runs after static destructors registered later.
    static const std::string* dir = [] {
        auto d = std::filesystem::temp_directory_path() /
                 ("memkv-failover-" + std::to_string(::getpid()));
        std::filesystem::create_directories(d);
        auto* path = new std::string(d.string());
        if (!std::getenv("MEMKV_KEEP_LOGS"))
            std::atexit([] {
                std::error_code ec;
                std::filesystem::remove_all(work_dir(), ec);
            });
        return path;
    }();
    return *dir;
}

/// A memkv-server child process. Its stdout and stderr go to a log file in work_dir(); it gets
/// SIGKILL if this process dies (PR_SET_PDEATHSIG, armed by the thread that starts it, which
/// must therefore live as long as the server: the tests start servers from the main thread).
class server_process {
public:
    /// `prefix` runs before the binary (e.g. {"ip", "netns", "exec", "NS"}); `args` follow it.
    server_process(std::string name, std::string binary, std::vector<std::string> args,
                   std::vector<std::string> prefix = {})
        : name_(std::move(name)), binary_(std::move(binary)), args_(std::move(args)),
          prefix_(std::move(prefix)) {
        port_file_ = work_dir() + "/" + name_ + ".port";
        log_ = work_dir() + "/" + name_ + ".log";
    }
    server_process(const server_process&) = delete;
    server_process& operator=(const server_process&) = delete;
    ~server_process() { kill_now(); }

    /// Starts the server listening on `listen` (e.g. "127.0.0.1:0") and waits until its port
    /// file names the endpoint (up to `patience`). False if it exited or never wrote it.
    bool start(const std::string& listen,
               std::chrono::milliseconds patience = std::chrono::milliseconds(5000)) {
        kill_now();
        ::unlink(port_file_.c_str());
        std::vector<std::string> argv = prefix_;
        argv.push_back(binary_);
        for (const auto& a :
             {std::string("--listen"), listen, std::string("--port-file"), port_file_})
            argv.push_back(a);
        argv.insert(argv.end(), args_.begin(), args_.end());
        std::vector<char*> cargv;
        for (auto& a : argv)
            cargv.push_back(a.data());
        cargv.push_back(nullptr);
        const pid_t parent = ::getpid();
        // Everything the child needs is prepared above: after fork() it only makes
        // async-signal-safe calls.
        const pid_t pid = ::fork();
        if (pid < 0) return false;
        if (pid == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent) ::_exit(126);
            const int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
            if (fd >= 0) {
                ::dup2(fd, STDOUT_FILENO);
                ::dup2(fd, STDERR_FILENO);
            }
            ::execvp(cargv[0], cargv.data());
            ::_exit(127);
        }
        pid_ = pid;
        const auto until = clock::now() + patience;
        while (clock::now() < until) {
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                return false;
            }
            std::ifstream f(port_file_);
            std::string text;
            if (f && std::getline(f, text) && !text.empty()) {
                endpoint_ = text;
                port_ = endpoint_.substr(endpoint_.rfind(':') + 1);
                started_at_ = clock::now();
                return true;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        kill_now();
        return false;
    }

    /// Restarts a killed server on the same port: retried while the port is still taken (for
    /// up to `patience` in all).
    bool restart(std::chrono::milliseconds patience = std::chrono::milliseconds(5000)) {
        const auto until = clock::now() + patience;
        const auto host = endpoint_.substr(0, endpoint_.rfind(':'));
        while (clock::now() < until) {
            if (start(host + ":" + port_,
                      std::chrono::duration_cast<std::chrono::milliseconds>(until - clock::now())))
                return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        return false;
    }

    void signal(int sig) const {
        if (pid_ > 0) ::kill(pid_, sig);
    }

    /// SIGSTOP, then waits (up to 1 s) until every thread of the server is stopped: kill()
    /// returns before a running thread has stopped. False if they did not all stop.
    bool stop() const {
        signal(SIGSTOP);
        const auto until = clock::now() + std::chrono::seconds(1);
        while (clock::now() < until) {
            if (all_threads_in_state('T')) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        return false;
    }

    /// SIGKILL and reap.
    void kill_now() {
        if (pid_ <= 0) return;
        ::kill(pid_, SIGKILL); // kills a stopped process too (a SIGCONT first would let it run)
        int status = 0;
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
    }

    /// SIGTERM, then SIGKILL if it has not exited within `patience`. The exit status, or -1.
    int terminate(std::chrono::milliseconds patience = std::chrono::milliseconds(5000)) {
        if (pid_ <= 0) return -1;
        ::kill(pid_, SIGCONT);
        ::kill(pid_, SIGTERM);
        const auto until = clock::now() + patience;
        int status = 0;
        while (clock::now() < until) {
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        kill_now();
        return -1;
    }

    /// The last `bytes` of the server's log (for failure reports).
    std::string log_tail(std::size_t bytes = 2000) const {
        std::ifstream f(log_, std::ios::binary);
        std::string text{std::istreambuf_iterator<char>(f), {}};
        return text.size() > bytes ? text.substr(text.size() - bytes) : text;
    }

    const std::string& endpoint() const noexcept { return endpoint_; }
    const std::string& name() const noexcept { return name_; }
    pid_t pid() const noexcept { return pid_; }
    /// When the last start() saw the port file (the server was then accepting connections).
    clock::time_point started_at() const noexcept { return started_at_; }

private:
    /// Whether every thread in /proc/PID/task is in `state` (the letter after the command).
    bool all_threads_in_state(char state) const {
        if (pid_ <= 0) return false;
        std::error_code ec;
        std::size_t n = 0;
        const auto dir = "/proc/" + std::to_string(pid_) + "/task";
        for (auto it = std::filesystem::directory_iterator(dir, ec);
             !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
            std::ifstream f(it->path() / "stat");
            std::string text{std::istreambuf_iterator<char>(f), {}};
            const auto close = text.rfind(')');
            if (close == std::string::npos || close + 2 >= text.size()) return false;
            if (text[close + 2] != state) return false;
            ++n;
        }
        return !ec && n > 0;
    }

    std::string name_, binary_;
    std::vector<std::string> args_, prefix_;
    std::string port_file_, log_;
    std::string endpoint_, port_;
    pid_t pid_ = -1;
    clock::time_point started_at_{};
};

} // namespace memkv::test::failover
