// SPDX-License-Identifier: Apache-2.0
// memkv-server: runs a memkv server (TCP and Unix sockets, DRAM store) configured by flags,
// MEMKV_* environment variables and a config file; SIGTERM/SIGINT stop it cleanly, SIGHUP
// re-reads the key sources.
#include "size_option.hpp"

#include <memkv/memkv.hpp>
#include <memkv/storage/format.hpp>

#include <CLI/CLI.hpp>
#include <fmt/chrono.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <istream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#ifndef MEMKV_VERSION
#define MEMKV_VERSION "unknown"
#endif

using memkv::examples::human_size;
using memkv::examples::size_value;

namespace {

/// Exit statuses (listed in --help).
enum exit_status : int {
    exit_ok = 0,      ///< stopped by SIGTERM/SIGINT after a clean shutdown
    exit_runtime = 1, ///< could not start or run (cannot listen, out of memory, port file)
    exit_usage = 2,   ///< bad flags, config file, environment or keys; insecure listener refused
};

constexpr const char* program = "memkv-server";
/// Regions are multiples of the engine's metadata block, and hold 3 of them besides a value.
constexpr std::uint64_t meta_block = memkv::storage::meta_block;

/// One log line in the library's format: "2024-01-02T03:04:05Z level message".
template <class... A>
void log(const char* level, fmt::format_string<A...> f, A&&... a) {
    const auto now = std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now());
    const auto line = fmt::format("{:%Y-%m-%dT%H:%M:%S}Z {} {}\n", now, level,
                                  fmt::format(f, std::forward<A>(a)...));
    std::fputs(line.c_str(), stderr);
}

std::string trim(std::string_view s) {
    const auto b = s.find_first_not_of(" \t\r\n");
    if (b == std::string_view::npos) return {};
    const auto e = s.find_last_not_of(" \t\r\n");
    return std::string(s.substr(b, e - b + 1));
}

std::string unquote(std::string s) {
    if (s.size() >= 2 && (s.front() == '"' || s.front() == '\'') && s.back() == s.front())
        return s.substr(1, s.size() - 2);
    return s;
}

/// Reads --config files: one setting per line, either YAML-style "key: value" or TOML-style
/// "key = value". A value is a scalar (optionally quoted) or a list "[a, b]"; a YAML block list
/// ("key:" followed by "- item" lines) works too. '#' starts a comment, a leading "---" is
/// ignored, keys are the long flag names ('_' may stand for '-'). Nothing else of YAML or TOML
/// (nesting, sections, multi-line strings) is accepted.
///
/// A setting whose MEMKV_* variable is set is skipped, so that the precedence is flag, then
/// environment, then config file (CLI11 alone would let the file override the environment).
class flat_config : public CLI::ConfigBase {
public:
    /// `keys` maps each accepted key to its environment variable (empty if it has none).
    explicit flat_config(std::map<std::string, std::string> keys) : keys_(std::move(keys)) {}

    std::vector<CLI::ConfigItem> from_config(std::istream& in) const override {
        std::vector<CLI::ConfigItem> out;
        std::set<std::string> seen;
        std::string line;
        int lineno = 0, open_line = 0;
        CLI::ConfigItem open; // a YAML block list whose "- item" lines are being read
        bool open_skip = false;
        auto fail = [](int n, const std::string& what) {
            return CLI::ConfigError(fmt::format("config file, line {}: {}", n, what));
        };
        auto close = [&] {
            if (open.name.empty()) return;
            if (open.inputs.empty())
                throw fail(open_line, fmt::format("'{}' has no value", open.name));
            if (!open_skip) out.push_back(std::move(open));
            open = {};
        };
        while (std::getline(in, line)) {
            ++lineno;
            const auto text = trim(strip_comment(line));
            if (text.empty() || (lineno == 1 && text == "---")) continue;
            if (text.front() == '-' && (text.size() == 1 || text[1] == ' ')) {
                if (open.name.empty()) throw fail(lineno, "list item without a key above it");
                const auto item = unquote(trim(text.substr(1)));
                if (item.empty()) throw fail(lineno, "empty list item");
                open.inputs.push_back(item);
                continue;
            }
            close();
            const auto sep = text.find_first_of(":=");
            if (sep == std::string::npos)
                throw fail(lineno,
                           fmt::format("expected 'key: value' or 'key = value', got '{}'", text));
            auto key = unquote(trim(text.substr(0, sep)));
            std::replace(key.begin(), key.end(), '_', '-');
            const auto k = keys_.find(key);
            if (k == keys_.end()) throw fail(lineno, fmt::format("unknown key '{}'", key));
            if (!seen.insert(key).second) throw fail(lineno, fmt::format("'{}' is set twice", key));
            const char* env = k->second.empty() ? nullptr : std::getenv(k->second.c_str());
            const bool skip = env != nullptr && *env != '\0';
            CLI::ConfigItem item;
            item.name = key;
            const auto value = trim(text.substr(sep + 1));
            if (value.empty()) { // a YAML block list follows
                open = std::move(item);
                open_line = lineno;
                open_skip = skip;
                continue;
            }
            if (value.front() == '[' && value.back() == ']') {
                for (auto part : CLI::detail::split(value.substr(1, value.size() - 2), ','))
                    if (auto v = unquote(trim(part)); !v.empty()) item.inputs.push_back(v);
                if (item.inputs.empty()) throw fail(lineno, fmt::format("'{}' is empty", key));
            } else {
                item.inputs.push_back(unquote(value));
            }
            if (!skip) out.push_back(std::move(item));
        }
        close();
        return out;
    }

private:
    /// `line` up to a '#' that is outside quotes.
    static std::string strip_comment(const std::string& line) {
        char quote = 0;
        for (std::size_t i = 0; i < line.size(); ++i) {
            const char c = line[i];
            if (quote) {
                if (c == quote) quote = 0;
            } else if (c == '"' || c == '\'') {
                quote = c;
            } else if (c == '#') {
                return line.substr(0, i);
            }
        }
        return line;
    }

    std::map<std::string, std::string> keys_;
};

/// The key ring of MEMKV_AUTH_KEY, MEMKV_AUTH_KEY_FILE and --auth-key-file together. A
/// --auth-key-file naming the same file as MEMKV_AUTH_KEY_FILE is read once.
memkv::result<std::shared_ptr<const memkv::auth::key_ring>> load_keys(const std::string& file,
                                                                      std::string& why) {
    auto ring = memkv::auth::key_ring::from_environment(&why);
    if (!ring) {
        // The ring's message names the variable (or the file) at fault.
        if (why.empty()) why = "MEMKV_AUTH_KEY / MEMKV_AUTH_KEY_FILE: " + ring.error().message();
        return ring.error();
    }
    if (!file.empty()) {
        const char* env_file = std::getenv("MEMKV_AUTH_KEY_FILE");
        std::error_code ec;
        const bool same = env_file != nullptr && *env_file != '\0' &&
                          (file == env_file || std::filesystem::equivalent(file, env_file, ec));
        if (!same) {
            std::string file_why;
            auto extra = memkv::auth::key_ring::from_file(file, &file_why);
            if (!extra) {
                why = "--auth-key-file: " +
                      (file_why.empty() ? file + ": " + extra.error().message() : file_why);
                return extra.error();
            }
            for (const auto& e : extra->entries()) {
                if (auto r = ring->add(e); !r) {
                    why = fmt::format("--auth-key-file {}: key id {} is also in MEMKV_AUTH_KEY or "
                                      "MEMKV_AUTH_KEY_FILE",
                                      file, e.id);
                    return r.error();
                }
            }
        }
    }
    return std::make_shared<const memkv::auth::key_ring>(std::move(*ring));
}

/// "keys: 2 entries, tenants: a,b" or "none (loopback only)".
std::string describe_keys(const memkv::auth::key_ring& ring) {
    if (ring.empty()) return "none (loopback only)";
    std::set<std::string> tenants;
    for (const auto& e : ring.entries())
        tenants.insert(e.tenant);
    return fmt::format("keys: {} {}, tenants: {}", ring.size(),
                       ring.size() == 1 ? "entry" : "entries", fmt::join(tenants, ","));
}

/// Writes `text` to `path` through a temporary file and rename(), so that a reader never sees
/// a partial file.
bool write_atomically(const std::string& path, const std::string& text, std::string& why) {
    const auto tmp = fmt::format("{}.tmp.{}", path, ::getpid());
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f || !(f << text) || !f.flush()) {
            why = fmt::format("cannot write {}: {}", tmp, std::strerror(errno));
            std::remove(tmp.c_str());
            return false;
        }
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        why = fmt::format("cannot rename {} to {}: {}", tmp, path, std::strerror(errno));
        std::remove(tmp.c_str());
        return false;
    }
    return true;
}

/// The files this process created and removes at shutdown, unless another process has
/// replaced them meanwhile (a second server on the same socket path or port file).
class owned_files {
public:
    /// Records the socket files of the Unix-socket endpoints (not abstract ones).
    void add_sockets(const std::vector<std::string>& endpoints) {
        for (const auto& ep : endpoints) {
            if (ep.rfind("unix:", 0) != 0 || ep.size() <= 5 || ep[5] == '@') continue;
            struct stat st {};
            const auto path = ep.substr(5);
            if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode))
                sockets_.push_back({path, st.st_dev, st.st_ino});
        }
    }
    /// Records the port file and the text written to it.
    void add_port_file(std::string path, std::string text) {
        port_file_ = std::move(path);
        port_text_ = std::move(text);
    }
    /// Removes the sockets that are still the ones bound here, and the port file if it still
    /// holds what was written.
    void remove() {
        for (const auto& s : sockets_) {
            struct stat st {};
            if (::lstat(s.path.c_str(), &st) == 0 && st.st_dev == s.dev && st.st_ino == s.ino)
                ::unlink(s.path.c_str());
        }
        if (!port_file_.empty()) {
            std::ifstream f(port_file_, std::ios::binary);
            const std::string text{std::istreambuf_iterator<char>(f), {}};
            if (f && text == port_text_) std::remove(port_file_.c_str());
        }
    }

private:
    struct socket_file {
        std::string path;
        dev_t dev;
        ino_t ino;
    };
    std::vector<socket_file> sockets_;
    std::string port_file_, port_text_;
};

/// --trim's values.
const std::map<std::string, memkv::trim_mode, std::less<>> trim_modes{
    {"auto", memkv::trim_mode::by_store},
    {"on", memkv::trim_mode::on},
    {"off", memkv::trim_mode::off},
};

/// Everything the flags, environment and config file set.
struct options {
    std::vector<std::string> listen{"127.0.0.1:9900"};
    std::uint32_t shards = 0; // 0 = automatic
    std::string store = "memory";
    std::string path;                 // file store
    std::vector<std::string> devices; // block store
    bool format = false;
    bool reshard = false;
    bool wipe_on_incompatible = false;
    std::uint64_t capacity = 1ull << 30;
    std::uint64_t max_value = 64ull << 20;
    std::uint64_t region_size = 0; // 0 = 2 * max_value
    std::size_t buffers = 64;
    bool pin_cpus = false;
    bool no_fixed_buffers = false;
    std::string trim = "auto";
    std::string auth_key_file;
    std::string port_file;
};

constexpr const char* footer =
    R"(Sizes accept the suffixes K, M, G, T (powers of 1024; KiB, MiB, GiB also work).

Precedence: command-line flag, then environment variable, then config file, then default.

Config file (--config or MEMKV_CONFIG): one setting per line, keys are the long flag names,
in YAML style "key: value" or TOML style "key = value"; lists as [a, b] ('#' comments):
    listen: [127.0.0.1:9900, unix:/run/memkv.sock]
    shards: 4
    capacity: 8G
    auth-key-file: /etc/memkv/keys

Authentication: keys come from MEMKV_AUTH_KEY ("HEX64", "ID:HEX64" or "ID:TENANT:HEX64"),
the key file named by MEMKV_AUTH_KEY_FILE and --auth-key-file ("ID TENANT HEX64" per line),
all together. Without any key the server listens on loopback addresses and Unix sockets only.

Signals: SIGTERM or SIGINT stop the server cleanly and print a summary of its counters;
SIGHUP reloads the key ring from the same sources: new connections use it at once,
established ones keep their sessions (rotation without downtime).

Exit status:
  0  stopped cleanly by SIGTERM or SIGINT (also --help, --version)
  1  could not start or run: cannot listen, out of memory, cannot write the port file
  2  bad usage: invalid flag, variable, config file or key; non-loopback listener without a key)";

struct totals {
    std::uint64_t requests = 0, puts = 0, gets = 0, hits = 0, misses = 0, bytes_in = 0,
                  bytes_out = 0;
};

template <class Server>
totals sum_counters(const Server& srv) {
    totals t;
    auto v = [](const memkv::shard_counters::counter& c) {
        return c.load(std::memory_order_relaxed);
    };
    for (std::uint32_t i = 0; i < srv.shard_count(); ++i) {
        const auto& c = srv.counters(i);
        t.requests += v(c.requests);
        t.puts += v(c.puts);
        t.gets += v(c.gets);
        t.hits += v(c.hits);
        t.misses += v(c.misses);
        t.bytes_in += v(c.bytes_in);
        t.bytes_out += v(c.bytes_out);
    }
    return t;
}

template <class Server>
int serve(const options& o, const memkv::server_config& cfg, typename Server::store_config scfg,
          std::uint64_t per_shard);

/// How the store is cut: the region size, the shard count and the bytes of each shard.
struct store_layout {
    std::uint64_t region = 0;
    std::uint32_t shards = 0;
    std::uint64_t per_shard = 0;
};

/// The layout the options ask for; none (the reason printed) when it cannot hold a value or two
/// regions per shard.
std::optional<store_layout> layout_of(const options& o) {
    const std::uint64_t region_asked = o.region_size ? o.region_size : 2 * o.max_value;
    const std::uint64_t region = (region_asked + meta_block - 1) / meta_block * meta_block;
    if (region < o.max_value + 3 * meta_block) {
        fmt::print(stderr,
                   "{}: error: --region-size ({}) must be at least --max-value ({}) + {}: a "
                   "value is stored whole in one region, with its headers\n",
                   program, human_size(region), human_size(o.max_value),
                   human_size(3 * meta_block));
        return std::nullopt;
    }
    // Each shard's part of the store must hold two regions (one open for writes, one to
    // reclaim into); a persistent store also keeps its superblock area.
    const bool persistent = o.store != "memory";
    const std::uint64_t usable = persistent && o.capacity > memkv::storage::data_offset
                                     ? o.capacity - memkv::storage::data_offset
                                     : (persistent ? 0 : o.capacity);
    const std::uint64_t max_shards = usable / (2 * region);
    if (max_shards == 0) {
        fmt::print(stderr,
                   "{}: error: --capacity {} is less than 2 regions of {} (the region size is "
                   "2 x --max-value unless --region-size is given): raise --capacity or lower "
                   "--max-value\n",
                   program, human_size(o.capacity), human_size(region));
        return std::nullopt;
    }
    std::uint32_t shards = o.shards;
    if (shards == 0) {
        shards = std::max(1u, std::thread::hardware_concurrency());
        shards = static_cast<std::uint32_t>(std::min<std::uint64_t>(shards, max_shards));
    } else if (shards > max_shards) {
        fmt::print(stderr,
                   "{}: error: --capacity {} over {} shards leaves {} per shard, less than 2 "
                   "regions of {}: use at most {} shards, or raise --capacity\n",
                   program, human_size(o.capacity), shards, human_size(o.capacity / shards),
                   human_size(region), max_shards);
        return std::nullopt;
    }
    return store_layout{region, shards, usable / shards};
}

int run(const options& o) {
    const auto layout = layout_of(o);
    if (!layout) return exit_usage;
    const auto shards = layout->shards;
    const auto region = layout->region;
    const auto per_shard = layout->per_shard;

    std::string why;
    auto keys = load_keys(o.auth_key_file, why);
    if (!keys) {
        fmt::print(stderr, "{}: error: {}\n", program, why);
        return exit_usage;
    }

    memkv::server_config cfg;
    cfg.listen = o.listen;
    cfg.shards = shards;
    cfg.pin_cpus = o.pin_cpus;
    cfg.register_buffers = !o.no_fixed_buffers;
    cfg.trim = trim_modes.find(o.trim)->second; // checked by the option
    cfg.keys = *keys;
    cfg.limits.max_value = o.max_value;
    cfg.region_size = region;
    cfg.buffers_per_shard = o.buffers;
    cfg.reshard = o.reshard;
    cfg.wipe_on_incompatible = o.wipe_on_incompatible;
    if (o.store == "file") {
#if !defined(MEMKV_HAS_URING)
        fmt::print(stderr, "{}: error: this build has no io_uring: no file store\n", program);
        return exit_usage;
#else
        if (o.path.empty()) {
            fmt::print(stderr, "{}: error: --store file needs --path FILE\n", program);
            return exit_usage;
        }
        memkv::file_store::config scfg;
        scfg.path = o.path;
        scfg.capacity = o.capacity;
        return serve<memkv::file_server>(o, cfg, scfg, per_shard);
#endif
    }
    if (o.store == "block") {
#if !defined(MEMKV_HAS_URING)
        fmt::print(stderr, "{}: error: this build has no io_uring: no block store\n", program);
        return exit_usage;
#else
        if (o.devices.empty()) {
            fmt::print(stderr, "{}: error: --store block needs --device DEV\n", program);
            return exit_usage;
        }
        memkv::block_store::config scfg;
        scfg.devices = o.devices;
        scfg.format = o.format;
        return serve<memkv::block_server>(o, cfg, scfg, per_shard);
#endif
    }
    memkv::memory_store::config scfg;
    scfg.capacity = o.capacity;
    return serve<memkv::memory_server>(o, cfg, scfg, per_shard);
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread before any other exists (every server
/// thread inherits the mask and only sigwait() sees them) and ignores SIGPIPE. Returns the set.
std::optional<sigset_t> block_signals() {
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGHUP);
    if (int e = ::pthread_sigmask(SIG_BLOCK, &signals, nullptr); e != 0) {
        fmt::print(stderr, "{}: error: cannot block signals: {}\n", program, std::strerror(e));
        return std::nullopt;
    }
    std::signal(SIGPIPE, SIG_IGN);
    return signals;
}

/// Explains why the server could not start and returns the exit status.
int start_failure(std::error_code ec) {
    // start() has logged which endpoint failed and why.
    if (ec == memkv::errc::unauthenticated)
        fmt::print(stderr,
                   "{}: error: refusing a non-loopback listener without an auth key: set "
                   "MEMKV_AUTH_KEY, MEMKV_AUTH_KEY_FILE or --auth-key-file, or listen on "
                   "127.0.0.1, [::1] or unix:/PATH\n",
                   program);
    else
        fmt::print(stderr, "{}: error: cannot start: {}\n", program, ec.message());
    const bool usage = ec == memkv::errc::unauthenticated || ec == memkv::errc::invalid_argument;
    return usage ? exit_usage : exit_runtime;
}

/// The start-up banner: endpoints, shards, store, buffers, I/O mode, auth.
template <class Server>
void log_banner(const Server& srv, const options& o, std::uint64_t per_shard) {
    log("info", "{} {} started (pid {})", program, MEMKV_VERSION, ::getpid());
    for (const auto& ep : srv.endpoints())
        log("info", "listening on {}", ep);
    log("info", "shards: {}{}", srv.shard_count(), o.pin_cpus ? " (pinned to CPUs)" : "");
    log("info", "store: {}{}, capacity {} ({} per shard), max value {}", o.store,
        o.path.empty() ? std::string() : " " + o.path, human_size(o.capacity),
        human_size(per_shard), human_size(o.max_value));
    log("info", "region size: {}", human_size(srv.config().region_size));
    log("info", "buffers: {} x {} per shard, {}", srv.config().buffers_per_shard,
        human_size(srv.config().buffer_size),
        srv.hugepages() ? "hugepage-backed" : "not hugepage-backed (regular pages)");
    if (o.store != "memory")
        log("info", "I/O: io_uring, {}, fixed buffers {}, TRIM on eviction {}{}",
            srv.counters(0).store_direct_io.load() ? "O_DIRECT" : "buffered (no O_DIRECT)",
            srv.counters(0).buffers_registered.load() ? "yes" : "no",
            srv.config().trim == memkv::trim_mode::on ? "yes" : "no",
            o.trim == "auto" ? " (the store's default; --trim on|off)" : "");
    log("info", "auth: {}", describe_keys(*srv.config().keys));
}

/// Waits for SIGTERM or SIGINT; a SIGHUP meanwhile reloads the key ring.
template <class Server>
void wait_for_shutdown(Server& srv, const options& o, const sigset_t& signals) {
    for (;;) {
        int sig = 0;
        if (::sigwait(&signals, &sig) != 0) continue;
        if (sig != SIGHUP) {
            log("info", "{}: shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
            return;
        }
        std::string why;
        auto again = load_keys(o.auth_key_file, why);
        if (!again) {
            log("warn", "SIGHUP: cannot read the key sources ({}); still using {}", why,
                describe_keys(*srv.keys()));
        } else if (auto r = srv.reload_keys(*again); !r) {
            log("warn",
                "SIGHUP: refusing an empty key ring while listening beyond loopback; still using "
                "{}",
                describe_keys(*srv.keys()));
        } else {
            log("info", "SIGHUP: reloaded the key ring: {}", describe_keys(**again));
        }
    }
}

/// Creates, starts and runs a server until SIGTERM/SIGINT; SIGHUP reloads the keys.
template <class Server>
int serve(const options& o, const memkv::server_config& cfg, typename Server::store_config scfg,
          std::uint64_t per_shard) {
    const auto signals = block_signals();
    if (!signals) return exit_runtime;
    auto created = Server::create(cfg, scfg);
    if (!created) {
        fmt::print(stderr,
                   "{}: error: cannot create the server ({} shards, a {} {} store ({} per shard) "
                   "and {} buffers of {} each): {}\n",
                   program, cfg.shards, human_size(o.capacity), o.store, human_size(per_shard),
                   cfg.buffers_per_shard, human_size(cfg.buffer_size), created.error().message());
        const auto e = created.error();
        return e == memkv::errc::invalid_argument || e == memkv::errc::rejected ? exit_usage
                                                                                : exit_runtime;
    }
    auto& srv = *created;
    if (auto r = srv.start(); !r) return start_failure(r.error());
    log_banner(srv, o, per_shard);

    owned_files files;
    files.add_sockets(srv.endpoints());
    if (!o.port_file.empty()) {
        const auto text = srv.endpoints().front() + "\n";
        std::string why;
        if (!write_atomically(o.port_file, text, why)) {
            log("error", "port file: {}", why);
            srv.stop();
            files.remove();
            return exit_runtime;
        }
        files.add_port_file(o.port_file, text);
        log("info", "wrote {} to {}", srv.endpoints().front(), o.port_file);
    }
    wait_for_shutdown(srv, o, *signals);
    srv.stop();
    files.remove();
    const auto t = sum_counters(srv);
    log("info",
        "stopped: requests {}, puts {}, gets {} (hits {}, misses {}), bytes in {}, bytes out {}, "
        "handshake failures {}",
        t.requests, t.puts, t.gets, t.hits, t.misses, t.bytes_in, t.bytes_out,
        srv.handshake_failures());
    return exit_ok;
}

/// A validator refusing 0.
CLI::Validator nonzero() {
    return CLI::Validator(
        [](std::string& s) {
            return s.find_first_not_of("0 \t") == std::string::npos ? std::string("must not be 0")
                                                                    : std::string();
        },
        "", "");
}

/// The options that say where the server listens and what it stores in.
void add_store_options(CLI::App& app, options& o) {
    app.add_option("--listen", o.listen,
                   "Endpoint to listen on, repeatable or comma-separated: HOST:PORT, [V6]:PORT "
                   "or unix:/PATH (port 0 picks a free port)")
        ->envname("MEMKV_LISTEN")
        ->delimiter(',')
        ->allow_extra_args(false)
        ->type_name("ENDPOINT")
        ->default_str("127.0.0.1:9900")
        ->check([](const std::string& s) -> std::string {
            if (memkv::stream_transports::create()->parse(s)) return {};
            return fmt::format("'{}' is not an endpoint (expected HOST:PORT, [V6]:PORT or "
                               "unix:/PATH)",
                               s);
        });
    app.add_option("--shards", o.shards,
                   "Shards (one thread and one store each); default: one per CPU, at most "
                   "capacity / (2 x region size)")
        ->envname("MEMKV_SHARDS")
        ->type_name("N")
        ->check(CLI::Range(1u, 4096u).description(""));
    app.add_option("--store", o.store,
                   "Store kind: 'memory' (DRAM, lost at exit) or 'file' (a preallocated file, "
                   "--path; survives restarts and crashes)")
        ->envname("MEMKV_STORE")
        ->type_name("KIND")
        ->default_str("memory")
        ->check([](const std::string& s) -> std::string {
            if (s == "memory" || s == "file" || s == "block") return {};
            return fmt::format("unknown store '{}': use 'memory', 'file' or 'block'", s);
        });
    app.add_option("--path", o.path,
                   "File of the file store (created and preallocated to --capacity if needed)")
        ->envname("MEMKV_PATH")
        ->type_name("FILE");
    app.add_option("--device", o.devices,
                   "Raw block device of the block store (repeatable: JBOF); owned exclusively")
        ->envname("MEMKV_DEVICES")
        ->delimiter(',')
        ->type_name("DEV");
    app.add_flag("--format", o.format,
                 "Block store: take devices that carry a filesystem or another signature")
        ->envname("MEMKV_FORMAT");
    app.add_flag("--reshard", o.reshard,
                 "Wipe and reformat a store formatted for another shard count")
        ->envname("MEMKV_RESHARD");
    app.add_flag("--wipe-on-incompatible", o.wipe_on_incompatible,
                 "Wipe and reformat a store whose superblock is damaged or of an unknown format")
        ->envname("MEMKV_WIPE_ON_INCOMPATIBLE");
}

/// The options that size and tune the server, and say where its keys and port file are.
void add_tuning_options(CLI::App& app, options& o) {
    const auto size = size_value();
    app.add_option("--capacity", o.capacity,
                   "Bytes of the store (memory, or the file's size), split between the shards")
        ->envname("MEMKV_CAPACITY")
        ->transform(size)
        ->check(nonzero())
        ->type_name("SIZE")
        ->default_str("1G");
    app.add_option("--max-value", o.max_value, "Largest value accepted")
        ->envname("MEMKV_MAX_VALUE")
        ->transform(size)
        ->check(nonzero())
        ->type_name("SIZE")
        ->default_str("64M");
    app.add_option("--region-size", o.region_size,
                   "Bytes per region of the storage engine (default: 2 x --max-value)")
        ->envname("MEMKV_REGION_SIZE")
        ->transform(size)
        ->check(nonzero())
        ->type_name("SIZE");
    app.add_option("--buffers", o.buffers, "Bounce buffers (1 MiB each) per shard")
        ->envname("MEMKV_BUFFERS")
        ->type_name("N")
        ->default_str("64")
        ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 16).description(""));
    app.add_flag("--no-fixed-buffers", o.no_fixed_buffers,
                 "Do not register the buffers with io_uring as fixed buffers (file and block "
                 "stores; for comparison)")
        ->envname("MEMKV_NO_FIXED_BUFFERS");
    app.add_option("--trim", o.trim,
                   "TRIM regions reclaimed by eviction: 'on', 'off' or 'auto' (on for block "
                   "stores: BLKDISCARD; off for file stores, where a punched hole halves the "
                   "writes that refill it on ext4)")
        ->envname("MEMKV_TRIM")
        ->type_name("MODE")
        ->default_str("auto")
        ->check([](const std::string& s) -> std::string {
            if (trim_modes.contains(s)) return {};
            return fmt::format("unknown TRIM mode '{}': use 'auto', 'on' or 'off'", s);
        });
    app.add_flag("--pin-cpus", o.pin_cpus, "Pin shard i to CPU i (modulo the CPU count)")
        ->envname("MEMKV_PIN_CPUS");
    app.add_option("--auth-key-file", o.auth_key_file,
                   "Key file (\"ID TENANT HEX64\" per line), added to MEMKV_AUTH_KEY and the "
                   "file of MEMKV_AUTH_KEY_FILE")
        ->envname("MEMKV_AUTH_KEY_FILE")
        ->type_name("PATH");
    app.add_option("--port-file", o.port_file,
                   "After start, write the first endpoint listened on (e.g. 127.0.0.1:41234) "
                   "and a newline to PATH, atomically; removed at shutdown")
        ->envname("MEMKV_PORT_FILE")
        ->type_name("PATH");
}

/// --config (MEMKV_CONFIG): the flat config file of every option above. CLI11 reads it before
/// it looks at the environment, so MEMKV_CONFIG is applied here (as the default, and required
/// to exist when set). Returns MEMKV_CONFIG, or null.
const char* add_config_option(CLI::App& app) {
    const char* env_config = std::getenv("MEMKV_CONFIG");
    const bool have_env_config = env_config != nullptr && *env_config != '\0';
    app.set_config("--config", have_env_config ? env_config : "",
                   "Config file: 'key: value' or 'key = value' lines (see below)", have_env_config)
        ->envname("MEMKV_CONFIG")
        ->type_name("PATH");
    std::map<std::string, std::string> config_keys;
    for (const auto* opt : app.get_options()) {
        if (opt->get_configurable() && !opt->get_lnames().empty())
            config_keys[opt->get_lnames().front()] = opt->get_envname();
    }
    config_keys.erase("help");
    config_keys.erase("version");
    app.config_formatter(std::make_shared<flat_config>(std::move(config_keys)));
    return have_env_config ? env_config : nullptr;
}

/// Parses the command line; an exit status when the program must exit now (help, version, a
/// bad option or config file), none to go on.
std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv,
                                      const char* env_config) {
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::FileError& e) {
        fmt::print(stderr, "{}: error: --config: {}\n", program, e.what());
        return exit_usage;
    } catch (const CLI::ConfigError& e) {
        // flat_config's messages start with "config file, line N": name the file.
        std::string what = e.what();
        const auto* opt = app.get_config_ptr();
        const auto path = opt != nullptr && opt->count() > 0 ? opt->as<std::string>()
                          : env_config != nullptr            ? std::string(env_config)
                                                             : std::string();
        if (!path.empty() && what.rfind("config file,", 0) == 0)
            what.replace(0, 12, "config file " + path + ",");
        fmt::print(stderr, "{}: error: {}\n", program, what);
        return exit_usage;
    } catch (const CLI::ParseError& e) {
        fmt::print(stderr, "{}: error: {}\nRun with --help for more information.\n", program,
                   e.what());
        return exit_usage;
    }
    return std::nullopt;
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"memkv-server: a KV-cache store for LLM inference (TCP and Unix sockets, DRAM "
                 "store).",
                 program};
    app.set_version_flag("--version", std::string(program) + " " + MEMKV_VERSION);
    app.footer(footer);
    app.get_formatter()->column_width(34);

    options o;
    add_store_options(app, o);
    add_tuning_options(app, o);
    const char* env_config = add_config_option(app);
    if (auto exit_now = parse_command_line(app, argc, argv, env_config)) return *exit_now;
    // Set for an older memkv-server: ignoring it would silently turn TRIM back on.
    if (std::getenv("MEMKV_NO_TRIM") != nullptr) {
        fmt::print(stderr, "{}: error: MEMKV_NO_TRIM is no longer read: use MEMKV_TRIM=off\n",
                   program);
        return exit_usage;
    }
    try {
        return run(o);
    } catch (const std::exception& e) {
        fmt::print(stderr, "{}: error: {}\n", program, e.what());
        return exit_runtime;
    }
}
