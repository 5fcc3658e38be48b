// SPDX-License-Identifier: Apache-2.0
// memkv-cli: stores, loads, checks and deletes values on memkv servers from the command line.
#include "size_option.hpp"

#include <memkv/memkv.hpp>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#ifndef MEMKV_VERSION
#define MEMKV_VERSION "unknown"
#endif

using memkv::examples::human_size;
using memkv::examples::size_value;

namespace {

/// Exit statuses (listed in --help).
enum exit_status : int {
    exit_ok = 0,     ///< done; every key asked about was present
    exit_miss = 1,   ///< get missed, or a key of exists/del was absent
    exit_usage = 2,  ///< bad usage or input: flags, keys, sizes, local files, auth key text
    exit_server = 3, ///< the server failed or could not be reached or authenticated to
};

constexpr const char* program = "memkv-cli";

constexpr const char* footer =
    R"(Servers: --servers or MEMKV_SERVERS, comma-separated HOST:PORT, [V6]:PORT or unix:/PATH;
or --servers-file or MEMKV_SERVERS_FILE, a file with one endpoint per line ('#' comments).
Auth: --auth-key-file PATH (its first key), else MEMKV_AUTH_KEY ("HEX64", "ID:HEX64" or
"ID:TENANT:HEX64") or the file named by MEMKV_AUTH_KEY_FILE; no key = no authentication.
Sizes accept the suffixes K, M, G (powers of 1024).

Exit status:
  0  success
  1  miss: get found no value, or a key given to exists or del was absent
  2  bad usage or input: invalid flag, key or size, unreadable input file, bad auth key text
  3  server or connection error: unreachable, authentication refused, timeout, server failure)";

struct global_options {
    std::vector<std::string> servers;
    std::string servers_file;
    std::string prefix;
    std::uint32_t timeout_ms = 10000;
    std::string auth_key_file;
    std::uint64_t max_value = 64ull << 20;
};

struct put_args {
    std::string key, file = "-", meta;
    bool if_absent = false, durable = false;
    std::uint32_t ttl = 0;
};

struct get_args {
    std::string key, output;
    std::uint64_t offset = 0, length = 0;
    bool meta = false;
};

template <class... A>
void error(fmt::format_string<A...> f, A&&... a) {
    fmt::print(stderr, "{}: error: {}\n", program, fmt::format(f, std::forward<A>(a)...));
}

/// The exit status for a failed operation.
int status_for(std::error_code ec) {
    if (ec == memkv::errc::not_found) return exit_miss;
    if (ec == memkv::errc::invalid_argument || ec == memkv::errc::too_large) return exit_usage;
    return exit_server;
}

/// Explains an error, with a hint for the common causes.
std::string explain(std::error_code ec) {
    auto m = ec.message();
    if (ec == memkv::errc::unauthenticated || ec == memkv::errc::closed ||
        ec == memkv::errc::protocol)
        m += " (wrong or missing auth key? check MEMKV_AUTH_KEY, MEMKV_AUTH_KEY_FILE or "
             "--auth-key-file)";
    else if (ec == memkv::errc::unavailable)
        m += " (not running there, unreachable, or refusing connections?)";
    else if (ec == memkv::errc::too_large)
        m += " (over the server's or this client's --max-value?)";
    else if (ec == memkv::errc::invalid_argument)
        m += " (empty or too long key, or a range outside the value?)";
    return m;
}

/// Reads the whole of `path` ("-" = stdin), refusing more than `max` bytes.
std::optional<std::vector<std::byte>> read_input(const std::string& path, std::uint64_t max) {
    const bool is_stdin = path == "-";
    const char* name = is_stdin ? "stdin" : path.c_str();
    const int fd = is_stdin ? STDIN_FILENO : ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        error("cannot open {}: {}", path, std::strerror(errno));
        return std::nullopt;
    }
    struct closer {
        int fd;
        bool own;
        ~closer() {
            if (own) ::close(fd);
        }
    } guard{fd, !is_stdin};
    std::vector<std::byte> data;
    struct stat st {};
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        const auto size = static_cast<std::uint64_t>(st.st_size);
        if (size > max) {
            error("{} is {} bytes ({}), over the value size limit of {} (see --max-value)", name,
                  size, human_size(size), human_size(max));
            return std::nullopt;
        }
        data.reserve(size);
    }
    std::vector<std::byte> chunk(1u << 20);
    for (;;) {
        const auto n = ::read(fd, chunk.data(), chunk.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            error("cannot read {}: {}", name, std::strerror(errno));
            return std::nullopt;
        }
        if (n == 0) break;
        if (data.size() + static_cast<std::uint64_t>(n) > max) {
            error("{} holds more than {}, the value size limit (see --max-value)", name,
                  human_size(max));
            return std::nullopt;
        }
        data.insert(data.end(), chunk.begin(), chunk.begin() + n);
    }
    return data;
}

/// Writes all of `data` to `fd`.
bool write_all(int fd, std::span<const std::byte> data) {
    while (!data.empty()) {
        const auto n = ::write(fd, data.data(), data.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        data = data.subspan(static_cast<std::size_t>(n));
    }
    return true;
}

/// Metadata as text when printable, else as hex.
std::string show_meta(std::span<const std::byte> meta) {
    const bool text = std::all_of(meta.begin(), meta.end(), [](std::byte b) {
        const auto c = static_cast<unsigned char>(b);
        return std::isprint(c) || c == '\t';
    });
    std::string out;
    if (text) {
        for (auto b : meta)
            out.push_back(static_cast<char>(b));
        return out;
    }
    out = "hex:";
    for (auto b : meta)
        out += fmt::format("{:02x}", static_cast<unsigned>(b));
    return out;
}

bool check_key(const global_options& g, const std::string& key) {
    const memkv::protocol::limits lim{};
    if (key.empty()) {
        error("empty key");
        return false;
    }
    if (g.prefix.size() + key.size() > lim.max_key) {
        error("key '{}' is {} bytes with the prefix, over the limit of {}", key,
              g.prefix.size() + key.size(), lim.max_key);
        return false;
    }
    return true;
}

/// Checks a put's key and metadata and reads its value (before connecting, so that input
/// errors show even when no server is reachable).
std::optional<std::vector<std::byte>> prepare_put(const global_options& g, const put_args& a) {
    if (!check_key(g, a.key)) return std::nullopt;
    const memkv::protocol::limits lim{};
    if (a.meta.size() > lim.max_meta) {
        error("--meta is {} bytes, over the limit of {}", a.meta.size(), lim.max_meta);
        return std::nullopt;
    }
    if (a.file == "-" && ::isatty(STDIN_FILENO))
        fmt::print(stderr, "{}: reading the value of {} from the terminal; end it with Ctrl-D\n",
                   program, a.key);
    return read_input(a.file, g.max_value);
}

int do_put(memkv::default_client& c, const put_args& a, std::span<const std::byte> value) {
    memkv::put_options po;
    po.meta = std::as_bytes(std::span(a.meta.data(), a.meta.size()));
    po.if_absent = a.if_absent;
    po.durable = a.durable;
    po.ttl_seconds = a.ttl;
    if (auto r = c.put(a.key, value, po); !r) {
        error("put {}: {}", a.key, explain(r.error()));
        // A put never misses: anything but bad input is the server's failure.
        const int rc = status_for(r.error());
        return rc == exit_miss ? exit_server : rc;
    }
    return exit_ok;
}

int do_get(memkv::default_client& c, const global_options& g, const get_args& a) {
    if (!check_key(g, a.key)) return exit_usage;
    memkv::operation op;
    op.kind = memkv::op_kind::get;
    op.key = a.key;
    op.offset = a.offset;
    op.length = a.length;
    if (auto r = c.run({&op, 1}); !r) {
        error("get {}: {}", a.key, explain(r.error()));
        return exit_server;
    }
    if (op.status == memkv::errc::not_found) {
        fmt::print(stderr, "miss\n");
        return exit_miss;
    }
    if (op.status) {
        error("get {}: {}", a.key, explain(op.status));
        return status_for(op.status);
    }
    if (a.meta) {
        fmt::print(stderr, "meta: {}\n", show_meta(op.meta_out));
        fmt::print(stderr, "value size: {}, returned: {} bytes from offset {}\n", op.value_size,
                   op.data.size(), a.offset);
    }
    int fd = STDOUT_FILENO;
    if (!a.output.empty() && a.output != "-") {
        fd = ::open(a.output.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) {
            error("cannot open {} for writing: {}", a.output, std::strerror(errno));
            return exit_usage;
        }
    }
    const bool ok = write_all(fd, op.data);
    const int saved = errno;
    const bool closed = fd == STDOUT_FILENO || ::close(fd) == 0;
    if (!ok || !closed) {
        error("cannot write {}: {}", a.output.empty() ? "stdout" : a.output,
              std::strerror(ok ? errno : saved));
        return exit_usage;
    }
    return exit_ok;
}

int do_exists(memkv::default_client& c, const global_options& g,
              const std::vector<std::string>& keys) {
    for (const auto& k : keys)
        if (!check_key(g, k)) return exit_usage;
    std::vector<memkv::operation> ops(keys.size());
    for (std::size_t i = 0; i < keys.size(); ++i) {
        ops[i].kind = memkv::op_kind::exists;
        ops[i].key = keys[i];
    }
    if (auto r = c.run(ops); !r) {
        error("exists: {}", explain(r.error()));
        return exit_server;
    }
    int rc = exit_ok;
    for (const auto& op : ops) {
        if (op.status) {
            error("exists {}: {}", op.key, explain(op.status));
            rc = std::max(rc, status_for(op.status));
        } else if (op.exists) {
            fmt::print("{} present {}\n", op.key, op.size);
        } else {
            fmt::print("{} absent\n", op.key);
            rc = std::max<int>(rc, exit_miss);
        }
    }
    return rc;
}

int do_del(memkv::default_client& c, const global_options& g,
           const std::vector<std::string>& keys) {
    for (const auto& k : keys)
        if (!check_key(g, k)) return exit_usage;
    std::vector<memkv::operation> ops(keys.size());
    for (std::size_t i = 0; i < keys.size(); ++i) {
        ops[i].kind = memkv::op_kind::del;
        ops[i].key = keys[i];
    }
    if (auto r = c.run(ops); !r) {
        error("del: {}", explain(r.error()));
        return exit_server;
    }
    int rc = exit_ok;
    for (const auto& op : ops) {
        if (!op.status) {
            fmt::print("{} deleted\n", op.key);
        } else if (op.status == memkv::errc::not_found) {
            fmt::print("{} absent\n", op.key);
            rc = std::max<int>(rc, exit_miss);
        } else {
            error("del {}: {}", op.key, explain(op.status));
            rc = std::max(rc, status_for(op.status));
        }
    }
    return rc;
}

/// The "client:" section of stats: what this client saw of each server (connected now,
/// operations, errors, timeouts, reconnection attempts, reply latency percentiles), one
/// "client.serverI.NAME VALUE" line each, I being the index in --servers.
void print_client_stats(const memkv::default_client& c) {
    fmt::print("client:\n");
    const auto all = c.server_stats();
    for (std::size_t i = 0; i < all.size(); ++i) {
        const auto& s = all[i];
        const auto p = fmt::format("client.server{}.", i);
        fmt::print("{}endpoint {}\n", p, s.endpoint);
        fmt::print("{}up {}\n", p, s.up ? 1 : 0);
        fmt::print("{}requests {}\n", p, s.requests);
        fmt::print("{}errors {}\n", p, s.errors);
        fmt::print("{}timeouts {}\n", p, s.timeouts);
        fmt::print("{}reconnects {}\n", p, s.reconnects);
        fmt::print("{}p50_us {}\n", p, s.p50_us);
        fmt::print("{}p99_us {}\n", p, s.p99_us);
        fmt::print("{}p999_us {}\n", p, s.p999_us);
        fmt::print("{}max_us {}\n", p, s.max_us);
    }
}

/// Prints every server's counters and the client's view of each server. Exits exit_server when
/// a server did not answer (the others' counters are printed all the same).
int do_stats(memkv::default_client& c) {
    auto s = c.stats();
    if (!s) {
        error("stats: no server answered: {}", explain(s.error()));
        print_client_stats(c); // shows which server is down
        return exit_server;
    }
    std::sort(s->begin(), s->end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    std::vector<std::size_t> silent;
    for (const auto& e : *s) {
        fmt::print("{} {}\n", e.name, e.value);
        // "serverI.up 0": server I did not answer.
        const auto dot = e.name.find('.');
        if (e.value == 0 && dot != std::string::npos && e.name.starts_with("server") &&
            e.name.substr(dot) == ".up")
            silent.push_back(std::stoul(e.name.substr(6, dot - 6)));
    }
    print_client_stats(c);
    const auto servers = c.server_stats();
    for (auto i : silent)
        error("stats: server {} ({}) did not answer; some or all of its counters are missing", i,
              i < servers.size() ? servers[i].endpoint : "?");
    return silent.empty() ? exit_ok : exit_server;
}

int do_ping(memkv::default_client& c) {
    const auto t0 = std::chrono::steady_clock::now();
    if (auto r = c.ping(); !r) {
        error("ping: {}", explain(r.error()));
        return exit_server;
    }
    const std::chrono::duration<double, std::milli> dt = std::chrono::steady_clock::now() - t0;
    fmt::print("pong: {} server{}, {:.2f} ms\n", c.server_count(), c.server_count() == 1 ? "" : "s",
               dt.count());
    return exit_ok;
}

/// The client of the global options; none (with the exit status in `rc`) when it cannot be
/// made.
std::optional<memkv::default_client> connect(const global_options& g, int& rc) {
    memkv::client_config cfg;
    cfg.servers = g.servers;
    if (!g.servers_file.empty()) {
        if (!cfg.servers.empty()) {
            error(
                "give --servers (MEMKV_SERVERS) or --servers-file (MEMKV_SERVERS_FILE), not both");
            rc = exit_usage;
            return std::nullopt;
        }
        std::string why;
        auto file = memkv::client_config::from_file(g.servers_file, &why);
        if (!file) {
            error("--servers-file {}", why);
            rc = exit_usage;
            return std::nullopt;
        }
        cfg.servers = std::move(file->servers);
    }
    if (cfg.servers.empty()) {
        error("no server given: use --servers HOST:PORT[,...] or --servers-file FILE (or set "
              "MEMKV_SERVERS or MEMKV_SERVERS_FILE)");
        rc = exit_usage;
        return std::nullopt;
    }
    cfg.key_prefix = g.prefix;
    cfg.request_timeout = std::chrono::milliseconds(g.timeout_ms);
    cfg.connect_timeout = std::min(cfg.connect_timeout, cfg.request_timeout);
    cfg.limits.max_value = g.max_value;
    // Read the key here (the client would read the environment itself) to explain errors.
    std::string why;
    if (!g.auth_key_file.empty()) {
        auto ring = memkv::auth::key_ring::from_file(g.auth_key_file, &why);
        if (!ring) {
            error("--auth-key-file: {}",
                  why.empty() ? g.auth_key_file + ": " + ring.error().message() : why);
            rc = exit_usage;
            return std::nullopt;
        }
        if (ring->empty()) {
            error("--auth-key-file {}: no key in the file", g.auth_key_file);
            rc = exit_usage;
            return std::nullopt;
        }
        cfg.key = ring->entries().front();
    } else {
        auto ring = memkv::auth::key_ring::from_environment(&why);
        if (!ring) {
            // The ring's message names the variable (or the file) at fault.
            error("{}", why.empty()
                            ? "MEMKV_AUTH_KEY / MEMKV_AUTH_KEY_FILE: " + ring.error().message()
                            : why);
            rc = exit_usage;
            return std::nullopt;
        }
        if (!ring->empty()) cfg.key = ring->entries().front();
    }
    auto c = memkv::default_client::create(cfg);
    if (!c) {
        std::string list;
        for (const auto& s : cfg.servers)
            list += (list.empty() ? "" : ",") + s;
        error("cannot connect to {}: {}", list, explain(c.error()));
        rc = c.error() == memkv::errc::invalid_argument ? exit_usage : exit_server;
        return std::nullopt;
    }
    return std::move(*c);
}

/// The options every command takes: servers, namespace, timeout, key, value cap.
void add_global_options(CLI::App& app, global_options& g) {
    const auto size = size_value();
    auto endpoint = CLI::Validator(
        [](std::string& s) -> std::string {
            if (memkv::stream_transports::create()->parse(s)) return {};
            return fmt::format("'{}' is not a server (expected HOST:PORT, [V6]:PORT or "
                               "unix:/PATH)",
                               s);
        },
        "", "endpoint");
    app.add_option("--servers", g.servers, "Servers, comma-separated")
        ->envname("MEMKV_SERVERS")
        ->delimiter(',')
        ->allow_extra_args(false)
        ->type_name("HOST:PORT[,...]")
        ->check(endpoint);
    app.add_option("--servers-file", g.servers_file,
                   "File listing the servers, one HOST:PORT per line ('#' comments)")
        ->envname("MEMKV_SERVERS_FILE")
        ->type_name("FILE");
    app.add_option("--prefix", g.prefix, "Namespace prefix prepended to every key")
        ->type_name("STR");
    app.add_option("--timeout", g.timeout_ms, "Request timeout in milliseconds")
        ->type_name("MS")
        ->default_str("10000")
        ->check(CLI::Range(1u, 3600u * 1000u).description(""));
    app.add_option("--auth-key-file", g.auth_key_file,
                   "Key file (\"ID TENANT HEX64\" lines); its first key is used")
        ->type_name("PATH");
    app.add_option("--max-value", g.max_value, "Largest value to send or accept")
        ->transform(size)
        ->type_name("SIZE")
        ->default_str("64M");
}

/// The commands and their arguments.
struct commands {
    put_args pa;
    get_args ga;
    std::vector<std::string> exists_keys, del_keys;
    CLI::App *put = nullptr, *get = nullptr, *exists = nullptr, *del = nullptr, *stats = nullptr,
             *ping = nullptr;
};

/// Declares the commands (subcommands) into `c`.
void add_commands(CLI::App& app, commands& c) {
    const auto size = size_value();
    c.put = app.add_subcommand("put", "Store a value read from FILE or stdin");
    c.put->add_option("KEY", c.pa.key, "Key")->required();
    c.put->add_option("FILE", c.pa.file, "File to store, or - for stdin")->default_str("-");
    c.put->add_option("--meta", c.pa.meta, "Metadata stored with the value (up to 256 bytes)")
        ->type_name("STR");
    c.put->add_flag("--if-absent", c.pa.if_absent, "Do nothing if the key exists (still exit 0)");
    c.put->add_flag("--durable", c.pa.durable, "Acknowledge only after the store flushed");
    c.put->add_option("--ttl", c.pa.ttl, "Expire after this many seconds (0 = never)")
        ->type_name("SECONDS");

    c.get = app.add_subcommand("get", "Load a value to stdout or a file (miss: exit 1)");
    c.get->add_option("KEY", c.ga.key, "Key")->required();
    c.get->add_option("-o,--output", c.ga.output, "Write the value to FILE instead of stdout")
        ->type_name("FILE");
    c.get->add_option("--offset", c.ga.offset, "First byte of the range to read")
        ->transform(size)
        ->type_name("SIZE");
    c.get->add_option("--length", c.ga.length, "Bytes to read from --offset (0 = to the end)")
        ->transform(size)
        ->type_name("SIZE");
    c.get->add_flag("--meta", c.ga.meta, "Print the metadata and sizes to stderr");

    c.exists = app.add_subcommand("exists", "Print \"KEY present SIZE\" or \"KEY absent\" per key");
    c.exists->add_option("KEY", c.exists_keys, "Keys")->required();

    c.del = app.add_subcommand("del", "Delete keys; print \"KEY deleted\" or \"KEY absent\"");
    c.del->add_option("KEY", c.del_keys, "Keys")->required();

    c.stats = app.add_subcommand("stats", "Print the servers' counters, \"name value\" "
                                          "per line, sorted (serverI.up 0: server I did not "
                                          "answer, exit status 3), then a \"client:\" "
                                          "section: this client's view of each server");
    c.ping = app.add_subcommand("ping", "Check that every server answers");
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"memkv-cli: store, load, check and delete values on memkv servers.", program};
    app.set_version_flag("--version", std::string(program) + " " + MEMKV_VERSION);
    app.footer(footer);
    app.require_subcommand(1);
    app.get_formatter()->column_width(30);

    global_options g;
    add_global_options(app, g);
    commands c;
    add_commands(app, c);
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        fmt::print(stderr, "{}: error: {}\nRun with --help for more information.\n", program,
                   e.what());
        return exit_usage;
    }

    std::optional<std::vector<std::byte>> value;
    if (*c.put && !(value = prepare_put(g, c.pa))) return exit_usage;
    int rc = exit_ok;
    auto client = connect(g, rc);
    if (!client) return rc;
    if (*c.put) return do_put(*client, c.pa, *value);
    if (*c.get) return do_get(*client, g, c.ga);
    if (*c.exists) return do_exists(*client, g, c.exists_keys);
    if (*c.del) return do_del(*client, g, c.del_keys);
    if (*c.stats) return do_stats(*client);
    if (*c.ping) return do_ping(*client);
    return exit_usage;
}
