// SPDX-License-Identifier: Apache-2.0
// A network partition: one memkv-server runs in its own network namespace, reached over a veth
// pair (a private /30 in 10.250.0.0/16 that exists only between the two ends, both on this
// machine), another on loopback as the control. Under load the veth is taken down for 5 s:
// requests to the partitioned server fail with errc::unavailable (a PUT on the wire: timed_out)
// within the request timeout, the loopback server does not notice, and once the link is up
// again requests to the partitioned server succeed within 2 s.
//
// Needs root (CAP_NET_ADMIN) and the ip tool: where a network namespace cannot be created the
// test exits 77 (skipped) before Catch2 starts.
#include "support/catch.hpp"
#include "support/seed.hpp"

#include "failover/load.hpp"
#include "failover/server_process.hpp"

#include <memkv/memkv.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifndef MEMKV_SERVER_BINARY
#error "MEMKV_SERVER_BINARY must name the memkv-server executable"
#endif

extern char** environ;

namespace {

using namespace std::chrono_literals;
namespace fo = memkv::test::failover;
using fo::clock;
using client_t = memkv::default_client;

constexpr auto request_timeout = 1000ms;
constexpr double deadline_ms = 1000.0 + 100.0;

/// Runs a command (no shell), its output discarded; its exit status (-1 if it did not run).
int run(const std::vector<std::string>& args, bool quiet = true) {
    std::vector<char*> argv;
    std::vector<std::string> copy = args;
    for (auto& a : copy)
        argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (quiet) {
        posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
    }
    pid_t pid = -1;
    const int e = ::posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (e != 0) return -1;
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/// Output of `ip netns list`, one name per line (the first word).
std::vector<std::string> netns_list() {
    std::vector<std::string> out;
    const auto file = fo::work_dir() + "/netns-list";
    const std::string cmd = "ip netns list > " + file + " 2>/dev/null";
    if (std::system(cmd.c_str()) != 0) return out;
    std::ifstream f(file);
    std::string line;
    while (std::getline(f, line)) {
        std::istringstream words(line);
        std::string name;
        if (words >> name) out.push_back(name);
    }
    std::filesystem::remove(file);
    return out;
}

/// Deletes namespaces left by earlier runs of this test that died before cleaning up
/// ("memkv-a-PID" whose PID no longer runs). Their veth pairs go with them.
void remove_stale_namespaces() {
    const std::string prefix = "memkv-a-";
    for (const auto& name : netns_list()) {
        if (name.rfind(prefix, 0) != 0) continue;
        const auto pid = std::atoi(name.c_str() + prefix.size());
        if (pid > 0 && pid != ::getpid() && ::kill(pid, 0) != 0 && errno == ESRCH)
            run({"ip", "netns", "del", name});
    }
}

/// Skips the whole test binary (exit 77) where network namespaces cannot be created: no ip
/// tool, no privilege, or a kernel without them. Runs before main().
const bool namespaces_work = [] {
    const auto probe = "memkv-probe-" + std::to_string(::getpid());
    const bool added = run({"ip", "netns", "add", probe}) == 0;
    // A veth pair inside the probe namespace (it goes with it): needs CAP_NET_ADMIN too.
    const bool veth = added && run({"ip", "-n", probe, "link", "add", "mkvp", "type", "veth",
                                    "peer", "name", "mkvq"}) == 0;
    if (added) run({"ip", "netns", "del", probe});
    if (!veth) {
        std::fprintf(stderr, "test_partition: cannot create a network namespace and a veth pair "
                             "(needs root and the ip tool): skipped\n");
        std::exit(77);
    }
    return true;
}();

/// A namespace with one end of a veth pair, the other end in this (the root) namespace, each
/// with an address of a private /30. Everything is removed by the destructor.
class partition_net {
public:
    partition_net() {
        remove_stale_namespaces();
        const auto pid = ::getpid();
        ns_ = "memkv-a-" + std::to_string(pid);
        outer_ = "mkva" + std::to_string(pid);
        inner_ = "mkvb" + std::to_string(pid);
        // A /30 of 10.250.0.0/16 chosen by the PID, so that concurrent runs do not collide.
        const unsigned idx = static_cast<unsigned>(pid) % (256u * 64u);
        const auto base = "10.250." + std::to_string(idx / 64) + ".";
        outer_addr_ = base + std::to_string((idx % 64) * 4 + 1);
        inner_addr_ = base + std::to_string((idx % 64) * 4 + 2);
        ok_ = step({"ip", "netns", "add", ns_}) &&
              step({"ip", "link", "add", outer_, "type", "veth", "peer", "name", inner_}) &&
              step({"ip", "link", "set", inner_, "netns", ns_}) &&
              step({"ip", "addr", "add", outer_addr_ + "/30", "dev", outer_}) &&
              step({"ip", "link", "set", outer_, "up"}) &&
              step({"ip", "-n", ns_, "addr", "add", inner_addr_ + "/30", "dev", inner_}) &&
              step({"ip", "-n", ns_, "link", "set", inner_, "up"}) &&
              step({"ip", "-n", ns_, "link", "set", "lo", "up"});
    }
    ~partition_net() {
        run({"ip", "link", "del", outer_});
        run({"ip", "netns", "del", ns_});
    }
    partition_net(const partition_net&) = delete;
    partition_net& operator=(const partition_net&) = delete;

    bool ok() const noexcept { return ok_; }
    const std::string& failed_step() const noexcept { return failed_; }
    const std::string& ns() const noexcept { return ns_; }
    const std::string& inner_addr() const noexcept { return inner_addr_; }
    const std::string& outer_addr() const noexcept { return outer_addr_; }
    const std::string& outer() const noexcept { return outer_; }
    /// Takes this namespace's end of the veth pair down or up.
    bool set_link(bool up) { return run({"ip", "link", "set", outer_, up ? "up" : "down"}) == 0; }

private:
    bool step(const std::vector<std::string>& args) {
        if (run(args) == 0) return true;
        for (const auto& a : args)
            failed_ += a + " ";
        return false;
    }

    std::string ns_, outer_, inner_, outer_addr_, inner_addr_, failed_;
    bool ok_ = false;
};

/// A random 32-byte key as 64 hex digits, for MEMKV_AUTH_KEY.
std::string random_key_hex() {
    std::random_device rd;
    std::string hex;
    const char* digits = "0123456789abcdef";
    for (int i = 0; i < 64; ++i)
        hex.push_back(digits[rd() % 16]);
    return hex;
}

/// Statuses of requests to `server` completing in [from, to), as "name=count" text.
std::string statuses(const std::vector<fo::record>& rs, std::uint32_t server,
                     clock::time_point from, clock::time_point to) {
    std::map<std::string, std::size_t> n;
    for (const auto& r : rs)
        if (r.server == server && r.completed >= from && r.completed < to)
            ++n[std::string(r.put ? "put " : "get ") + (r.status ? r.status.message() : "ok")];
    std::string out;
    for (const auto& [k, v] : n)
        out += (out.empty() ? "" : ", ") + k + "=" + std::to_string(v);
    return out;
}

} // namespace

TEST_CASE("A partitioned server's requests fail within the timeout, the others do not notice, and "
          "it serves again soon after the partition heals",
          "[failover][partition]") {
    REQUIRE(namespaces_work);
    partition_net net;
    INFO("failed: " << net.failed_step());
    REQUIRE(net.ok());
    std::printf("partition: namespace %s, %s (here, %s) <-> %s (there)\n", net.ns().c_str(),
                net.outer_addr().c_str(), net.outer().c_str(), net.inner_addr().c_str());

    // A non-loopback listener needs a key; the client uses the same one (from the environment).
    ::setenv("MEMKV_AUTH_KEY", random_key_hex().c_str(), 1);
    const std::vector<std::string> args = {"--shards", "2", "--capacity", "512M"};
    fo::server_process loopback("loopback", MEMKV_SERVER_BINARY, args);
    fo::server_process remote("partitioned", MEMKV_SERVER_BINARY, args,
                              {"ip", "netns", "exec", net.ns()});
    if (!loopback.start("127.0.0.1:0")) FAIL("loopback server: " << loopback.log_tail());
    if (!remote.start(net.inner_addr() + ":0")) FAIL("partitioned server: " << remote.log_tail());

    memkv::client_config cc;
    cc.servers = {loopback.endpoint(), remote.endpoint()};
    cc.request_timeout = request_timeout;
    cc.connect_timeout = 500ms;
    auto created = client_t::create(cc);
    REQUIRE(created);
    std::optional<client_t> owner(std::move(*created)); // destroyed before the servers stop
    auto& client = *owner;
    const auto stats0 = client.server_stats();
    REQUIRE(stats0[0].up);
    REQUIRE(stats0[1].up);

    const auto keys =
        fo::key_set::make(client, 64, 4u << 10, 64u << 10, memkv::test::seed() & 0xffffff);
    REQUIRE_FALSE(keys.write(client));
    fo::load<client_t>::options lo;
    lo.get_slots_per_server = 24;
    lo.put_slots_per_server = 8;
    fo::load<client_t> load(client, keys, lo);
    load.start();

    std::this_thread::sleep_for(3s);
    const auto in_flight = load.in_flight();
    REQUIRE(net.set_link(false));
    const auto t_down = clock::now();
    std::this_thread::sleep_for(5s);
    const auto t_relink = clock::now(); // the link is down until at least here
    const bool relinked = net.set_link(true);
    const auto t_up = clock::now();
    std::this_thread::sleep_for(3s);
    const auto t_end = clock::now();
    load.stop();

    const auto rs = load.records();
    const auto buffers = load.report();
    // The loopback server (0) and the partitioned one (1).
    const auto before = fo::window(rs, 0, t_down - 2s, t_down);
    const auto live = fo::window(rs, 0, t_down, t_up);
    // Every request to the partitioned server in flight at the partition or sent during it.
    const auto cut = fo::window(rs, 1, t_down - request_timeout, t_up, deadline_ms);
    // A request sent during the cut cannot succeed while the link is down. One sent in its last
    // second may succeed once the link is back (a reconnection or a retransmission lands before
    // its timeout): that is counted apart, and allowed.
    std::size_t cut_ok = 0, cut_ok_after_heal = 0, cut_wrong_status = 0;
    for (const auto& r : rs) {
        if (r.server != 1 || r.submitted < t_down || r.submitted >= t_up) continue;
        if (!r.status)
            ++(r.completed < t_relink ? cut_ok : cut_ok_after_heal);
        else if (!(r.status == memkv::errc::unavailable ||
                   (r.put && r.status == memkv::errc::timed_out)))
            ++cut_wrong_status;
    }
    std::optional<clock::time_point> back;
    for (const auto& r : rs)
        if (r.server == 1 && r.submitted >= t_up && !r.status)
            if (!back || r.completed < *back) back = r.completed;
    const auto healed = fo::window(rs, 1, t_up + 2s, t_end);
    const auto stats = client.server_stats();

    std::printf("partition: %zu requests, %zu in flight before the partition\n", rs.size(),
                in_flight);
    std::printf("  loopback before:    %zu requests, %.4f%% ok, p99 %.2f ms\n", before.count,
                100 * before.success_ratio(), before.p99);
    std::printf("  loopback during:    %zu requests, %.4f%% ok, p99 %.2f ms, max %.2f ms\n",
                live.count, 100 * live.success_ratio(), live.p99, live.max);
    std::printf("  partitioned during: %zu requests (incl. in flight at the cut), max %.2f ms, "
                "%zu over %.0f ms; sent during the cut: %zu succeeded during it, %zu after the "
                "link came up, %zu with another status than unavailable (timed_out for puts)\n",
                cut.count, cut.max, cut.over_deadline, deadline_ms, cut_ok, cut_ok_after_heal,
                cut_wrong_status);
    std::printf("    statuses: %s\n", statuses(rs, 1, t_down, t_up).c_str());
    std::printf("  healed: first success %.0f ms after the link came up; from up + 2 s: %zu "
                "requests, %.4f%% ok\n",
                back ? fo::ms_between(t_up, *back) : -1.0, healed.count,
                100 * healed.success_ratio());
    std::printf("  buffers: %llu hits verified, %llu wrong, %llu canaries damaged, %llu of %llu "
                "failed GET buffers written after completion\n",
                static_cast<unsigned long long>(buffers.verified_hits),
                static_cast<unsigned long long>(buffers.wrong_bytes),
                static_cast<unsigned long long>(buffers.canary_damage),
                static_cast<unsigned long long>(buffers.written_after),
                static_cast<unsigned long long>(buffers.failed_checked));
    for (const auto& s : stats)
        std::printf("  %s up=%d requests=%llu errors=%llu timeouts=%llu reconnects=%llu\n",
                    s.endpoint.c_str(), s.up ? 1 : 0, static_cast<unsigned long long>(s.requests),
                    static_cast<unsigned long long>(s.errors),
                    static_cast<unsigned long long>(s.timeouts),
                    static_cast<unsigned long long>(s.reconnects));
    std::fflush(stdout);

    CHECK(relinked);
    CHECK(in_flight >= 48);
    CHECK(before.count > 0);
    CHECK(live.count > 0);
    CHECK(live.success_ratio() >= 0.999);
    CHECK(cut.count > 0);
    CHECK(cut.over_deadline == 0);
    CHECK(cut_ok == 0);
    CHECK(cut_wrong_status == 0);
    REQUIRE(back);
    CHECK(fo::ms_between(t_up, *back) <= 2000.0);
    CHECK(healed.count > 0);
    CHECK(healed.success_ratio() >= 0.999);
    CHECK(buffers.wrong_bytes == 0);
    CHECK(buffers.canary_damage == 0);
    CHECK(buffers.written_after == 0);
    CHECK(stats[1].reconnects > 0);
    CHECK(stats[0].errors == 0);

    owner.reset();
    CHECK(remote.terminate() == 0);
    CHECK(loopback.terminate() == 0);
}
