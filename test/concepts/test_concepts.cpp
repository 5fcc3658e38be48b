// SPDX-License-Identifier: Apache-2.0
// The transport and store concepts accept the real policies and reject non-conforming types.
#include "support/catch.hpp"
#include "support/fault_store.hpp"

#include <memkv/memkv.hpp>

namespace {

// A store missing poll(): not a store.
struct store_without_poll {
    struct config {};
    static memkv::result<store_without_poll> create(const config&) { return store_without_poll{}; }
    std::uint32_t block_size() const { return 4096; }
    std::uint64_t capacity() const { return 0; }
    memkv::result<void> read(std::uint64_t, std::span<std::byte>, std::uint64_t) { return {}; }
    memkv::result<void> write(std::uint64_t, std::span<const std::byte>, std::uint64_t) {
        return {};
    }
    memkv::result<void> flush(std::uint64_t) { return {}; }
    memkv::result<void> discard(std::uint64_t, std::uint64_t, std::uint64_t) { return {}; }
    int notify_fd() const { return -1; }
};

// The same with poll() but a create() that returns the store by value, not a result: rejected.
struct store_with_throwing_create : store_without_poll {
    static store_with_throwing_create create(const config&) { return {}; }
    std::size_t poll(std::span<memkv::io_completion>) { return 0; }
};

// A conforming store, to show the rules above are the only difference.
struct minimal_store : store_without_poll {
    static memkv::result<minimal_store> create(const config&) { return minimal_store{}; }
    std::size_t poll(std::span<memkv::io_completion>) { return 0; }
};

// A transport whose stream cannot write: not a transport.
struct transport_without_write {
    static constexpr bool payload_inline = true;
    static constexpr memkv::transport_kind kind = memkv::transport_kind::tcp;
    using endpoint = std::string;
    struct stream {
        int fd() const { return -1; }
        memkv::transport_kind kind() const { return memkv::transport_kind::tcp; }
        std::string peer() const { return {}; }
        memkv::result<std::size_t> read_some(std::span<std::byte>) { return std::size_t{0}; }
        memkv::result<std::size_t> readv_some(std::span<const iovec>) { return std::size_t{0}; }
        void close() {}
    };
    struct listener {
        int fd() const { return -1; }
        memkv::result<stream> accept() { return stream{}; }
        std::string local_endpoint() const { return {}; }
    };
    static memkv::result<endpoint> parse(std::string_view s) { return std::string(s); }
    static bool is_loopback(const endpoint&) { return true; }
    static std::string to_string(const endpoint& e) { return e; }
    static memkv::result<listener> listen(const endpoint&) { return listener{}; }
    static memkv::result<stream> connect(const endpoint&, std::chrono::milliseconds) {
        return stream{};
    }
};

} // namespace

TEST_CASE("the real stores satisfy the store concept", "[concepts][store]") {
    STATIC_REQUIRE(memkv::store<memkv::memory_store>);
    STATIC_REQUIRE(memkv::store<minimal_store>);
#if defined(MEMKV_HAS_URING)
    STATIC_REQUIRE(memkv::store<memkv::file_store>);
    STATIC_REQUIRE(memkv::store<memkv::block_store>);
    STATIC_REQUIRE(memkv::store<memkv::test::fault_store<memkv::file_store>>);
#endif
}

namespace {
struct untrimmed_store : minimal_store {
    static constexpr bool trim_by_default = false;
};
} // namespace

TEST_CASE("a store is trimmed by default unless it declares trim_by_default false, as "
          "file_store does and fault_store forwards",
          "[concepts][store]") {
    STATIC_REQUIRE(memkv::trim_by_default<memkv::memory_store>);
    STATIC_REQUIRE(memkv::trim_by_default<minimal_store>);
    STATIC_REQUIRE(!memkv::trim_by_default<untrimmed_store>);
#if defined(MEMKV_HAS_URING)
    STATIC_REQUIRE(!memkv::trim_by_default<memkv::file_store>); // docs/decisions.md
    STATIC_REQUIRE(memkv::trim_by_default<memkv::block_store>);
    STATIC_REQUIRE(!memkv::trim_by_default<memkv::test::fault_store<memkv::file_store>>);
#endif
}

TEST_CASE("types missing a store operation or with a throwing factory are not stores",
          "[concepts][store]") {
    STATIC_REQUIRE(!memkv::store<store_without_poll>);
    STATIC_REQUIRE(!memkv::store<store_with_throwing_create>);
    STATIC_REQUIRE(!memkv::store<int>);
    STATIC_REQUIRE(!memkv::store<memkv::tcp_transport>);
}

TEST_CASE("the real transports and their sets satisfy the transport concept",
          "[concepts][transport]") {
    STATIC_REQUIRE(memkv::transport<memkv::tcp_transport>);
    STATIC_REQUIRE(memkv::transport<memkv::unix_transport>);
    STATIC_REQUIRE(memkv::transport<memkv::transport_set<memkv::tcp_transport>>);
    STATIC_REQUIRE(memkv::transport<memkv::stream_transports>);
}

TEST_CASE("a transport whose stream cannot write, or a store, is not a transport",
          "[concepts][transport]") {
    STATIC_REQUIRE(!memkv::transport<transport_without_write>);
    STATIC_REQUIRE(!memkv::transport<memkv::memory_store>);
    STATIC_REQUIRE(!memkv::transport<int>);
}

TEST_CASE("transport_set parses each member's endpoints with that member",
          "[concepts][transport]") {
    using set = memkv::stream_transports;
    auto tcp = set::parse("127.0.0.1:9900");
    REQUIRE(tcp);
    CHECK(tcp->index() == 0);
    auto un = set::parse("unix:/tmp/memkv.sock");
    REQUIRE(un);
    CHECK(un->index() == 1);
    CHECK(set::is_loopback(*tcp));
    CHECK(set::is_loopback(*un));
    CHECK(!set::parse("no-port-here"));
    CHECK(!memkv::tcp_transport::parse("unix:/tmp/x"));
    CHECK(!memkv::unix_transport::parse("127.0.0.1:1"));
    auto remote = memkv::tcp_transport::parse("10.1.2.3:9900");
    REQUIRE(remote);
    CHECK(!memkv::tcp_transport::is_loopback(*remote));
}
