// SPDX-License-Identifier: Apache-2.0
// The kill -9 test: a real memkv-server process is SIGKILLed at random moments while a client
// runs puts, overwrites and deletes of self-describing values; after every restart each key must
// be exactly what the acknowledged operations left (or, for an operation in flight at the kill,
// its old or new state), and nothing may return garbage or another key's bytes.
//
//   crash_test --server PATH [--mode file|loop] [--cycles N] [--seed S] [--dir DIR]
//
// Exit 0: every check held. 1: a check failed (the seed to replay is printed). 77: the mode is
// not possible here (no loop devices, not root).
#include <memkv/memkv.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using memkv::errc;

struct options {
    std::string server;
    std::string mode = "file";
    std::string dir = "/var/tmp";
    int cycles = 20;
    std::uint64_t seed = 0;
    std::uint64_t capacity_mib = 512; // of the store; the data written stays below half of it
};

pid_t g_server = -1; // killed by fail(): std::exit runs no destructors

[[noreturn]] void fail(const std::string& what, std::uint64_t seed) {
    if (g_server > 0) ::kill(g_server, SIGKILL);
    std::fprintf(stderr, "crash_test: FAILED: %s (replay with --seed %llu)\n", what.c_str(),
                 static_cast<unsigned long long>(seed));
    std::exit(1);
}

/// A value that names its key and version and is otherwise a pattern of both.
std::vector<std::byte> make_value(const std::string& key, std::uint64_t version, std::size_t size) {
    std::vector<std::byte> v(size);
    std::mt19937_64 g(std::hash<std::string>{}(key)*31 + version);
    for (auto& b : v)
        b = std::byte(g());
    const std::string tag = key + "#" + std::to_string(version) + "#";
    std::memcpy(v.data(), tag.data(), std::min(size, tag.size()));
    return v;
}

std::optional<std::uint64_t> version_of(const std::string& key, const std::vector<std::byte>& v) {
    const std::string s(reinterpret_cast<const char*>(v.data()),
                        std::min<std::size_t>(64, v.size()));
    if (s.rfind(key + "#", 0) != 0) return std::nullopt;
    const auto rest = s.substr(key.size() + 1);
    const auto version = std::strtoull(rest.c_str(), nullptr, 10);
    if (make_value(key, version, v.size()) != v) return std::nullopt;
    return version;
}

/// What a key may hold: its confirmed state (a version, or 0 for absent) and the states of
/// operations whose outcome is unknown (in flight at a kill).
struct key_state {
    std::uint64_t confirmed = 0;
    std::set<std::uint64_t> possible; // besides `confirmed`
    bool busy = false;                // an operation in flight
};

class server_process {
public:
    server_process(const options& o, std::vector<std::string> store_args)
        : opt_(o), store_args_(std::move(store_args)) {}
    ~server_process() { kill9(); }

    std::string start(std::uint64_t seed) {
        const auto port_file = opt_.dir + "/crash-port-" + std::to_string(::getpid());
        ::unlink(port_file.c_str());
        pid_ = ::fork();
        if (pid_ == 0) {
            std::vector<std::string> args = {opt_.server, "--listen",    "127.0.0.1:0",
                                             "--shards",  "2",           "--port-file",
                                             port_file,   "--max-value", "1M"};
            args.insert(args.end(), store_args_.begin(), store_args_.end());
            std::vector<char*> argv;
            for (auto& a : args)
                argv.push_back(a.data());
            argv.push_back(nullptr);
            const int null = ::open("/dev/null", O_WRONLY);
            if (!std::getenv("MEMKV_CRASH_VERBOSE")) ::dup2(null, 2);
            ::execv(argv[0], argv.data());
            std::_Exit(127);
        }
        g_server = pid_;
        for (int i = 0; i < 300; ++i) {
            std::ifstream f(port_file);
            std::string ep;
            if (f >> ep && !ep.empty()) {
                ::unlink(port_file.c_str());
                return ep;
            }
            int status;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                fail("memkv-server exited at start (run with MEMKV_CRASH_VERBOSE=1)", seed);
            }
            std::this_thread::sleep_for(20ms);
        }
        fail("memkv-server did not start within 6 s", seed);
    }

    void kill9() {
        if (pid_ <= 0) return;
        ::kill(pid_, SIGKILL);
        int status;
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
        g_server = -1;
    }

private:
    const options& opt_;
    std::vector<std::string> store_args_;
    pid_t pid_ = -1;
};

/// Runs the workload against `ep` until `stop`; records outcomes in `keys`.
/// Writes at most `budget` bytes (records, headers included) as fast as it can, so that the
/// store's log never wraps (an evicted value would be a legitimate miss, which this test must
/// not confuse with loss). `spent` tells the killer how far it got.
void workload(memkv::default_client& c, std::map<std::string, key_state>& keys, std::mutex& m,
              std::atomic<bool>& stop, std::atomic<std::uint64_t>& next_version,
              std::atomic<int>& inflight, std::uint64_t seed, std::uint64_t budget,
              std::atomic<std::uint64_t>& spent) {
    std::mt19937_64 rng(seed);
    std::vector<std::string> names;
    for (auto& [k, s] : keys)
        names.push_back(k);
    constexpr int depth = 24;
    struct slot {
        memkv::operation op;
        std::vector<std::byte> value;
        std::uint64_t version = 0;
    };
    while (!stop) {
        if (inflight.load() >= depth || spent.load() >= budget) {
            std::this_thread::sleep_for(200us);
            continue;
        }
        auto s = std::make_shared<slot>();
        std::string key;
        {
            std::lock_guard lock(m);
            key = names[rng() % names.size()];
            auto& st = keys[key];
            if (st.busy || !st.possible.empty()) continue;
            st.busy = true;
            const bool del = st.confirmed != 0 && rng() % 5 == 0;
            s->op.key = key;
            if (del) {
                s->op.kind = memkv::op_kind::del;
            } else {
                s->version = next_version++;
                s->value = make_value(key, s->version, 4096 + rng() % (60 << 10));
                s->op.kind = memkv::op_kind::put;
                s->op.value = s->value;
            }
            spent += 4096 + (s->value.size() + 4095) / 4096 * 4096;
        }
        ++inflight;
        auto r = c.submit({&s->op, 1}, [s, &keys, &m, &inflight](std::span<memkv::operation>) {
            std::lock_guard lock(m);
            auto& st = keys[s->op.key];
            st.busy = false;
            const bool ok =
                !s->op.status || (s->op.kind == memkv::op_kind::del &&
                                  s->op.status == memkv::make_error_code(errc::not_found));
            if (ok)
                st.confirmed = s->version; // 0 for a delete
            else
                st.possible.insert(s->version);
            --inflight;
        });
        if (!r) {
            std::lock_guard lock(m);
            keys[key].busy = false;
            --inflight;
        }
    }
}

} // namespace

int main(int argc, char** argv) {
    options o;
    o.seed =
        static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) fail("missing value for " + a, o.seed);
            return argv[++i];
        };
        if (a == "--server")
            o.server = next();
        else if (a == "--mode")
            o.mode = next();
        else if (a == "--cycles")
            o.cycles = std::stoi(next());
        else if (a == "--seed")
            o.seed = std::stoull(next());
        else if (a == "--dir")
            o.dir = next();
        else if (a == "--capacity-mib")
            o.capacity_mib = std::stoull(next());
        else if (a == "--help") {
            std::puts("crash_test --server PATH [--mode file|loop] [--cycles N] [--seed S] "
                      "[--dir DIR] [--capacity-mib N]\n"
                      "(for long runs give a capacity of about 2 MiB per cycle or more)");
            return 0;
        } else
            fail("unknown argument " + a, o.seed);
    }
    if (o.server.empty()) fail("--server is required", o.seed);
    std::printf("crash_test: mode %s, %d cycles, seed %llu\n", o.mode.c_str(), o.cycles,
                static_cast<unsigned long long>(o.seed));

    const auto file = o.dir + "/memkv-crash-" + std::to_string(::getpid()) + ".img";
    std::vector<std::string> store_args;
    std::string loop;
    const std::uint64_t capacity = o.capacity_mib << 20;
    const std::string cap = std::to_string(o.capacity_mib) + "M";
    if (o.mode == "file") {
        store_args = {"--store", "file", "--path", file, "--capacity", cap};
    } else if (o.mode == "loop") {
        if (::geteuid() != 0 || ::access("/dev/loop-control", F_OK) != 0) {
            std::puts("crash_test: loop devices need root and /dev/loop-control: skipped");
            return 77;
        }
        const auto cmd = "truncate -s " + cap + " " + file +
                         " && losetup --find --show --direct-io=on " + file + " 2>/dev/null";
        FILE* p = ::popen(cmd.c_str(), "r");
        char buf[256] = {};
        if (!p || !std::fgets(buf, sizeof(buf), p)) {
            if (p) ::pclose(p);
            std::puts("crash_test: cannot create a loop device: skipped");
            return 77;
        }
        ::pclose(p);
        loop = buf;
        loop.erase(loop.find_last_not_of("\n") + 1);
        store_args = {"--store", "block", "--device", loop, "--capacity", cap};
    } else {
        fail("unknown mode " + o.mode, o.seed);
    }
    struct cleanup {
        std::string file, loop;
        ~cleanup() {
            if (!loop.empty()) std::system(("losetup -d " + loop).c_str());
            ::unlink(file.c_str());
        }
    } cleanup{file, loop};

    std::mt19937_64 rng(o.seed);
    std::map<std::string, key_state> keys;
    for (int i = 0; i < 300; ++i)
        keys["crash-key-" + std::to_string(i)];
    std::mutex m;
    std::atomic<std::uint64_t> next_version{1};
    // Half of the data area over all cycles: the log never wraps, nothing is evicted.
    const std::uint64_t budget = (capacity - (4u << 20)) / 2 / std::uint64_t(o.cycles);
    server_process srv(o, store_args);
    int killed_in_flight = 0;
    std::uint64_t checked = 0, hits = 0;
    for (int cycle = 0; cycle < o.cycles; ++cycle) {
        const auto ep = srv.start(o.seed);
        memkv::client_config cc;
        cc.servers = {ep};
        cc.request_timeout = 5s;
        auto created = memkv::default_client::create(cc);
        if (!created) fail("client: " + created.error().message(), o.seed);
        std::optional<memkv::default_client> c(std::move(*created)); // reset() after the kill

        // Verify the state the previous kill left.
        {
            std::lock_guard lock(m);
            for (auto& [key, st] : keys) {
                auto g = c->get(key);
                std::uint64_t got = 0;
                if (g && *g) {
                    const auto v = version_of(key, **g);
                    if (!v)
                        fail("cycle " + std::to_string(cycle) + ": " + key +
                                 " returned bytes that are not one of its values",
                             o.seed);
                    got = *v;
                    ++hits;
                } else if (!g) {
                    fail("cycle " + std::to_string(cycle) + ": get " + key + ": " +
                             g.error().message(),
                         o.seed);
                }
                if (got != st.confirmed && !st.possible.count(got))
                    fail("cycle " + std::to_string(cycle) + ": " + key + " holds version " +
                             std::to_string(got) + ", expected " + std::to_string(st.confirmed) +
                             (st.possible.empty() ? "" : " or an in-flight version"),
                         o.seed);
                st.confirmed = got; // the outcome is known now
                st.possible.clear();
                ++checked;
            }
        }

        // Run the workload and kill the server at a random moment.
        std::atomic<bool> stop{false};
        std::atomic<int> inflight{0};
        std::atomic<std::uint64_t> spent{0};
        std::thread w(workload, std::ref(*c), std::ref(keys), std::ref(m), std::ref(stop),
                      std::ref(next_version), std::ref(inflight), rng(), budget, std::ref(spent));
        // Kill at a random point of the cycle's writing (10% to 95% of its budget), or after
        // 3 s if it is slower than that.
        const auto target = budget / 100 * (10 + rng() % 86);
        const auto give_up = std::chrono::steady_clock::now() + 3s;
        while (spent.load() < target && std::chrono::steady_clock::now() < give_up)
            std::this_thread::sleep_for(100us);
        const int at_kill = inflight.load();
        srv.kill9();
        if (at_kill > 0) ++killed_in_flight;
        stop = true;
        w.join();
        // Operations still in flight fail (connection closed): their outcome is unknown.
        for (int i = 0; i < 500 && inflight.load() > 0; ++i)
            std::this_thread::sleep_for(10ms);
        c.reset();
        std::printf("cycle %d: killed with %d operations in flight\n", cycle, at_kill);
        std::fflush(stdout);
    }
    std::printf("crash_test: %d cycles, %d killed with writes in flight, %llu keys checked "
                "(%llu hits): all held\n",
                o.cycles, killed_in_flight, static_cast<unsigned long long>(checked),
                static_cast<unsigned long long>(hits));
    if (killed_in_flight * 2 < o.cycles)
        fail("fewer than half the kills had writes in flight", o.seed);
    return 0;
}
