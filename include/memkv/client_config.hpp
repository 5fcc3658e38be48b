// SPDX-License-Identifier: Apache-2.0
// memkv::client_config: what a client connects to and how; server lists from a servers file or
// the environment (MEMKV_SERVERS, MEMKV_SERVERS_FILE).
#pragma once

#include <memkv/auth/key_ring.hpp>
#include <memkv/concepts.hpp>
#include <memkv/error.hpp>
#include <memkv/protocol/limits.hpp>
#include <memkv/result.hpp>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace memkv {

/// Client configuration. Empty `servers` reads MEMKV_SERVERS or MEMKV_SERVERS_FILE
/// (servers_from_environment()); no `key` reads MEMKV_AUTH_KEY / MEMKV_AUTH_KEY_FILE (the first
/// entry is used).
struct client_config {
    /// Endpoints: "HOST:PORT", "[V6]:PORT" or "unix:/PATH" ("tcp://" may precede HOST). Their
    /// identities (docs/protocol.md §10: the endpoint without "tcp://") decide placement; the
    /// order does not. Every client of a cluster must use the same identities.
    std::vector<std::string> servers;
    std::optional<auth::key_entry> key;
    /// Prepended to every key (e.g. a model and layout fingerprint), so that two models sharing
    /// a cluster never read each other's blocks. Part of the namespaced key that is hashed.
    std::string key_prefix;
    std::chrono::milliseconds connect_timeout{2000};
    std::chrono::milliseconds request_timeout{10000};
    protocol::limits limits{};
    /// Verify the CRC32C of every payload frame received (GET). On by default.
    bool verify_checksums = true;
    /// Requests in flight per client; submission waits beyond it.
    std::size_t max_inflight = 8192;
    /// Payload bytes per frame this client sends.
    std::uint32_t chunk_size = protocol::default_chunk;
    /// The transport to reach servers with: "auto" (any the client has: the first whose
    /// endpoint syntax matches), "tcp", "unix" (later "shm", "rdma"). Empty: MEMKV_TRANSPORT,
    /// else "auto". client::create() refuses a name the client's transport does not have.
    std::string transport;

    /// Parses the text of a servers file: one endpoint per line ("HOST:PORT", "[V6]:PORT",
    /// "unix:/PATH"; "tcp://" may precede HOST and is dropped: the result holds identities).
    /// '#' starts a comment that runs to the end of the line; blank lines and surrounding blanks
    /// are ignored. Endpoints are checked for form only (names resolve when the client
    /// connects). A text without endpoints, or listing one twice, is refused. Errors are
    /// errc::invalid_argument; `why`, if given, receives "line N: ...".
    static result<std::vector<std::string>> parse_servers(std::string_view text,
                                                          std::string* why = nullptr);

    /// A default configuration with the servers of the servers file at `path` (parse_servers()).
    /// `why`, if given, receives "PATH: line N: ..." or "PATH: <system error>".
    static result<client_config> from_file(const std::string& path, std::string* why = nullptr);

    /// The servers named by the environment: MEMKV_SERVERS (comma-separated endpoints) or the
    /// servers file MEMKV_SERVERS_FILE; none if neither is set, errc::invalid_argument if both
    /// are. `why`, if given, receives a message naming the variable at fault.
    static result<std::vector<std::string>> servers_from_environment(std::string* why = nullptr);

    /// Checks the form of every endpoint in `servers` and replaces each by its identity (no
    /// "tcp://"); errc::invalid_argument, explained in `why`, for a bad or repeated endpoint or
    /// an empty list. client::create() applies it to every list it is given.
    static result<void> check_servers(std::vector<std::string>& servers,
                                      std::string* why = nullptr);

    /// The transport `transport` names (when empty and `use_environment`, MEMKV_TRANSPORT): a
    /// kind, or none for "auto" or nothing set. errc::invalid_argument, explained in `why`,
    /// for another name.
    result<std::optional<transport_kind>> transport_choice(bool use_environment,
                                                           std::string* why = nullptr) const;

    /// Largest servers file read (a guard against naming the wrong file).
    static constexpr std::size_t max_servers_file = 1u << 20;
};

namespace detail {

inline std::string_view trim_blanks(std::string_view s) noexcept {
    const auto b = s.find_first_not_of(" \t\r\n");
    if (b == std::string_view::npos) return {};
    return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

/// Why `e` is not an endpoint in the form parse_servers() documents; empty if it is.
inline std::string endpoint_form_error(std::string_view e) {
    if (e.find_first_of(" \t") != std::string_view::npos)
        return "one endpoint per line (found blanks inside)";
    if (e.starts_with("unix:")) return e.size() > 5 ? "" : "empty unix socket path";
    if (e.starts_with("tcp://")) e.remove_prefix(6);
    std::string_view host, port;
    if (e.starts_with('[')) {
        const auto close = e.find(']');
        if (close == std::string_view::npos || close + 1 >= e.size() || e[close + 1] != ':')
            return "expected [V6]:PORT";
        host = e.substr(1, close - 1);
        port = e.substr(close + 2);
    } else {
        const auto colon = e.rfind(':');
        if (colon == std::string_view::npos) return "expected HOST:PORT, [V6]:PORT or unix:/PATH";
        host = e.substr(0, colon);
        port = e.substr(colon + 1);
    }
    if (host.empty()) return "empty host";
    if (!e.starts_with('[') && host.find(':') != std::string_view::npos)
        return "expected HOST:PORT (an IPv6 address goes in brackets: [V6]:PORT)";
    const bool digits = !port.empty() && port.size() <= 5 &&
                        port.find_first_not_of("0123456789") == std::string_view::npos;
    const auto number = digits ? std::strtoul(std::string(port).c_str(), nullptr, 10) : 0;
    if (number < 1 || number > 65535) return "port must be a number from 1 to 65535";
    return {};
}

/// The placement identity of a well-formed endpoint: the endpoint without "tcp://".
inline std::string_view server_identity(std::string_view e) noexcept {
    if (e.starts_with("tcp://")) e.remove_prefix(6);
    return e;
}

/// errc::invalid_argument, explained in `why` if given.
inline std::error_code invalid_config(std::string* why, std::string message) {
    if (why) *why = std::move(message);
    return make_error_code(errc::invalid_argument);
}

} // namespace detail

inline result<std::vector<std::string>> client_config::parse_servers(std::string_view text,
                                                                     std::string* why) {
    std::vector<std::string> out;
    std::vector<std::size_t> lines; // of each endpoint, for duplicates
    for (std::size_t n = 1; !text.empty(); ++n) {
        const auto eol = text.find('\n');
        auto line = text.substr(0, eol);
        text.remove_prefix(eol == std::string_view::npos ? text.size() : eol + 1);
        line = detail::trim_blanks(line.substr(0, line.find('#')));
        if (line.empty()) continue;
        const auto where = "line " + std::to_string(n) + ": '" + std::string(line) + "': ";
        if (auto e = detail::endpoint_form_error(line); !e.empty())
            return detail::invalid_config(why, where + e);
        const auto id = detail::server_identity(line);
        for (std::size_t i = 0; i < out.size(); ++i)
            if (out[i] == id)
                return detail::invalid_config(why,
                                              where + "also on line " + std::to_string(lines[i]));
        out.emplace_back(id);
        lines.push_back(n);
    }
    if (out.empty()) return detail::invalid_config(why, "no servers listed");
    return out;
}

inline result<void> client_config::check_servers(std::vector<std::string>& servers,
                                                 std::string* why) {
    if (servers.empty()) return detail::invalid_config(why, "no servers listed");
    for (std::size_t i = 0; i < servers.size(); ++i) {
        const auto where = "server " + std::to_string(i + 1) + " '" + servers[i] + "': ";
        if (auto e = detail::endpoint_form_error(servers[i]); !e.empty())
            return detail::invalid_config(why, where + e);
        servers[i] = std::string(detail::server_identity(servers[i]));
        for (std::size_t j = 0; j < i; ++j)
            if (servers[j] == servers[i])
                return detail::invalid_config(why,
                                              where + "same server as " + std::to_string(j + 1));
    }
    return {};
}

inline result<client_config> client_config::from_file(const std::string& path, std::string* why) {
    std::FILE* f = std::fopen(path.c_str(), "re");
    if (!f) {
        const int err = errno;
        if (why) *why = path + ": " + std::strerror(err);
        return errno_code(err);
    }
    std::string text(max_servers_file + 1, '\0');
    const auto n = std::fread(text.data(), 1, text.size(), f);
    const int err = std::ferror(f) ? errno : 0;
    std::fclose(f);
    if (err) {
        if (why) *why = path + ": " + std::strerror(err);
        return errno_code(err);
    }
    if (n > max_servers_file)
        return detail::invalid_config(why, path + ": larger than 1 MiB, not a servers file");
    text.resize(n);
    client_config cfg;
    auto servers = parse_servers(text, why);
    if (!servers) {
        if (why) *why = path + ": " + *why;
        return servers.error();
    }
    cfg.servers = std::move(*servers);
    return cfg;
}

inline result<std::vector<std::string>> client_config::servers_from_environment(std::string* why) {
    const char* list = std::getenv("MEMKV_SERVERS");
    const char* file = std::getenv("MEMKV_SERVERS_FILE");
    const bool have_list = list != nullptr && *list != '\0';
    const bool have_file = file != nullptr && *file != '\0';
    if (have_list && have_file)
        return detail::invalid_config(why, "MEMKV_SERVERS and MEMKV_SERVERS_FILE are both set");
    std::vector<std::string> out;
    if (have_file) {
        auto cfg = from_file(file, why);
        if (!cfg) {
            if (why) *why = "MEMKV_SERVERS_FILE: " + *why;
            return cfg.error();
        }
        out = std::move(cfg->servers);
    }
    for (std::string_view s = have_list ? list : ""; !s.empty();) {
        const auto comma = s.find(',');
        if (auto part = detail::trim_blanks(s.substr(0, comma)); !part.empty())
            out.emplace_back(part);
        s.remove_prefix(comma == std::string_view::npos ? s.size() : comma + 1);
    }
    if (have_list) {
        if (auto r = check_servers(out, why); !r) {
            if (why) *why = "MEMKV_SERVERS: " + *why;
            return r.error();
        }
    }
    return out;
}

inline result<std::optional<transport_kind>>
client_config::transport_choice(bool use_environment, std::string* why) const {
    std::string_view name = transport;
    const char* env = use_environment ? std::getenv("MEMKV_TRANSPORT") : nullptr;
    if (name.empty() && env) name = env;
    if (name.empty() || name == "auto") return std::optional<transport_kind>();
    for (auto k : {transport_kind::tcp, transport_kind::unix_socket, transport_kind::shm,
                   transport_kind::rdma})
        if (name == transport_name(k)) return std::optional<transport_kind>(k);
    return detail::invalid_config(
        why, std::string(transport.empty() ? "MEMKV_TRANSPORT" : "transport") + ": '" +
                 std::string(name) + "' is none of auto, tcp, unix, shm, rdma");
}

} // namespace memkv
