// SPDX-License-Identifier: Apache-2.0
// Tests of the client's server lists: servers files (client_config::parse_servers, from_file)
// and the environment (MEMKV_SERVERS, MEMKV_SERVERS_FILE).
#include "support/catch.hpp"
#include "support/temp_env.hpp"

#include <memkv/client_config.hpp>
#include <memkv/memkv.hpp>

#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <unistd.h>
#include <vector>

using memkv::client_config;
using memkv::errc;
using servers = std::vector<std::string>;

using memkv::test::env_guard;
using memkv::test::temp_file;

namespace {

/// The message parse_servers() gives for `text`; fails the test if it accepts it.
std::string refusal(std::string_view text) {
    std::string why;
    auto r = client_config::parse_servers(text, &why);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error() == errc::invalid_argument);
    return why;
}

} // namespace

TEST_CASE("A servers file lists one endpoint per line, in order, with comments and blank lines",
          "[unit][client_config]") {
    const auto r = client_config::parse_servers("# the cache cluster\n"
                                                "10.0.0.1:9900\n"
                                                "\n"
                                                "  storage-2.example:9900   # rack B\n"
                                                "\t[fd00::3]:9900\r\n"
                                                "tcp://10.0.0.4:1\n"
                                                "unix:/run/memkv.sock\n"
                                                "   # indented comment\n"
                                                "10.0.0.5:65535");
    REQUIRE(r.has_value());
    CHECK(*r == servers{"10.0.0.1:9900", "storage-2.example:9900", "[fd00::3]:9900", "10.0.0.4:1",
                        "unix:/run/memkv.sock", "10.0.0.5:65535"});
}

TEST_CASE("A servers file's bad lines are refused with their line number",
          "[unit][client_config]") {
    CHECK(refusal("a:1\n\nb:0\n") == "line 3: 'b:0': port must be a number from 1 to 65535");
    CHECK(refusal("a:65536") == "line 1: 'a:65536': port must be a number from 1 to 65535");
    CHECK(refusal("a:http") == "line 1: 'a:http': port must be a number from 1 to 65535");
    CHECK(refusal("a:") == "line 1: 'a:': port must be a number from 1 to 65535");
    CHECK(refusal("# x\nlocalhost\n") ==
          "line 2: 'localhost': expected HOST:PORT, [V6]:PORT or unix:/PATH");
    CHECK(refusal(":9900") == "line 1: ':9900': empty host");
    CHECK(refusal("fd00::3:9900") == "line 1: 'fd00::3:9900': expected HOST:PORT (an IPv6 "
                                     "address goes in brackets: [V6]:PORT)");
    CHECK(refusal("[::1]9900") == "line 1: '[::1]9900': expected [V6]:PORT");
    CHECK(refusal("unix:") == "line 1: 'unix:': empty unix socket path");
    CHECK(refusal("a:1 b:2") == "line 1: 'a:1 b:2': one endpoint per line (found blanks inside)");
    CHECK(refusal("a:1\nb:2\na:1 # again\n") == "line 3: 'a:1': also on line 1");
    CHECK(refusal("") == "no servers listed");
    CHECK(refusal("# nothing\n\n   \n") == "no servers listed");
}

TEST_CASE("A servers file is read from disk; a missing one names the file and the error",
          "[unit][client_config]") {
    SECTION("a good file") {
        temp_file f("# two servers\n127.0.0.1:9900\n127.0.0.1:9901\n");
        auto cfg = client_config::from_file(f.path());
        REQUIRE(cfg.has_value());
        CHECK(cfg->servers == servers{"127.0.0.1:9900", "127.0.0.1:9901"});
        CHECK(cfg->key_prefix.empty()); // everything else is the default
    }
    SECTION("a bad line") {
        temp_file f("127.0.0.1:9900\n127.0.0.1:99999\n");
        std::string why;
        auto cfg = client_config::from_file(f.path(), &why);
        REQUIRE_FALSE(cfg.has_value());
        CHECK(cfg.error() == errc::invalid_argument);
        CHECK(why ==
              f.path() + ": line 2: '127.0.0.1:99999': port must be a number from 1 to " + "65535");
    }
    SECTION("a missing file") {
        std::string why;
        auto cfg = client_config::from_file("/nonexistent/memkv-servers", &why);
        REQUIRE_FALSE(cfg.has_value());
        CHECK(cfg.error() == std::errc::no_such_file_or_directory);
        CHECK(why == "/nonexistent/memkv-servers: No such file or directory");
    }
    SECTION("a directory") {
        std::string why;
        auto cfg = client_config::from_file("/", &why);
        REQUIRE_FALSE(cfg.has_value());
        CHECK(why.starts_with("/: "));
    }
}

TEST_CASE("The environment names servers by MEMKV_SERVERS or MEMKV_SERVERS_FILE, not both",
          "[unit][client_config]") {
    temp_file f("10.0.0.1:9900\n10.0.0.2:9900\n");
    std::string why;
    SECTION("neither") {
        env_guard a("MEMKV_SERVERS", nullptr), b("MEMKV_SERVERS_FILE", nullptr);
        auto r = client_config::servers_from_environment(&why);
        REQUIRE(r.has_value());
        CHECK(r->empty());
    }
    SECTION("MEMKV_SERVERS, comma-separated, blanks around commas ignored") {
        env_guard a("MEMKV_SERVERS", "10.0.0.1:9900, 10.0.0.2:9900,,"), b("MEMKV_SERVERS_FILE", "");
        auto r = client_config::servers_from_environment(&why);
        REQUIRE(r.has_value());
        CHECK(*r == servers{"10.0.0.1:9900", "10.0.0.2:9900"});
    }
    SECTION("a bad MEMKV_SERVERS") {
        env_guard a("MEMKV_SERVERS", "10.0.0.1:9900,10.0.0.1"), b("MEMKV_SERVERS_FILE", nullptr);
        REQUIRE_FALSE(client_config::servers_from_environment(&why).has_value());
        CHECK(why == "MEMKV_SERVERS: server 2 '10.0.0.1': expected HOST:PORT, [V6]:PORT or "
                     "unix:/PATH");
    }
    SECTION("MEMKV_SERVERS_FILE") {
        env_guard a("MEMKV_SERVERS", nullptr), b("MEMKV_SERVERS_FILE", f.path().c_str());
        auto r = client_config::servers_from_environment(&why);
        REQUIRE(r.has_value());
        CHECK(*r == servers{"10.0.0.1:9900", "10.0.0.2:9900"});
    }
    SECTION("a bad MEMKV_SERVERS_FILE") {
        env_guard a("MEMKV_SERVERS", nullptr), b("MEMKV_SERVERS_FILE", "/nonexistent/servers");
        REQUIRE_FALSE(client_config::servers_from_environment(&why).has_value());
        CHECK(why == "MEMKV_SERVERS_FILE: /nonexistent/servers: No such file or directory");
    }
    SECTION("both") {
        env_guard a("MEMKV_SERVERS", "10.0.0.1:9900"), b("MEMKV_SERVERS_FILE", f.path().c_str());
        auto r = client_config::servers_from_environment(&why);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error() == errc::invalid_argument);
        CHECK(why == "MEMKV_SERVERS and MEMKV_SERVERS_FILE are both set");
    }
}

TEST_CASE("Every server list is reduced to placement identities and checked for repeats",
          "[unit][client_config]") {
    // "tcp://" is not part of a server's identity (docs/protocol.md §10): both spellings of
    // one server must place keys alike, and are the same server twice.
    servers list{"tcp://10.0.0.1:9900", "[fd00::1]:9900", "unix:/run/memkv.sock"};
    REQUIRE(client_config::check_servers(list).has_value());
    CHECK(list == servers{"10.0.0.1:9900", "[fd00::1]:9900", "unix:/run/memkv.sock"});

    std::string why;
    servers twice{"10.0.0.1:9900", "tcp://10.0.0.1:9900"};
    CHECK(client_config::check_servers(twice, &why).error() == errc::invalid_argument);
    CHECK(why == "server 2 'tcp://10.0.0.1:9900': same server as 1");
    CHECK(refusal("10.0.0.1:9900\ntcp://10.0.0.1:9900\n") ==
          "line 2: 'tcp://10.0.0.1:9900': also on line 1");

    servers bad{"10.0.0.1:9900", "host:0"};
    CHECK_FALSE(client_config::check_servers(bad, &why).has_value());
    CHECK(why == "server 2 'host:0': port must be a number from 1 to 65535");
    servers none;
    CHECK_FALSE(client_config::check_servers(none, &why).has_value());
    CHECK(why == "no servers listed");

    // The client applies it to the list it is given.
    memkv::client_config cfg;
    cfg.servers = {"127.0.0.1:1", "tcp://127.0.0.1:1"};
    CHECK(memkv::default_client::create(cfg).error() == errc::invalid_argument);
}
