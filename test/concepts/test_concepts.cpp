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
    static constexpr memkv::transport_kind kind = memkv::transport_kind::tcp;
    using endpoint = std::string;
    struct config {};
    struct stream {
        int fd() const { return -1; }
        memkv::transport_kind kind() const { return memkv::transport_kind::tcp; }
        bool carries(memkv::transport_kind k) const { return k == kind(); }
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
    static memkv::result<transport_without_write> create(const config&) {
        return transport_without_write{};
    }
    memkv::result<endpoint> parse(std::string_view s) const { return std::string(s); }
    bool is_loopback(const endpoint&) const { return true; }
    std::string to_string(const endpoint& e) const { return e; }
    memkv::result<listener> listen(const endpoint&) { return listener{}; }
    memkv::result<stream> connect(const endpoint&, std::chrono::milliseconds) { return stream{}; }
};

// The same with a writing stream: a transport, to show the rule above is the only difference.
struct minimal_transport : transport_without_write {
    struct stream : transport_without_write::stream {
        memkv::result<std::size_t> writev_some(std::span<const iovec>) { return std::size_t{0}; }
    };
    struct listener {
        int fd() const { return -1; }
        memkv::result<stream> accept() { return stream{}; }
        std::string local_endpoint() const { return {}; }
    };
    static memkv::result<minimal_transport> create(const config&) { return minimal_transport{}; }
    memkv::result<listener> listen(const endpoint&) { return listener{}; }
    memkv::result<stream> connect(const endpoint&, std::chrono::milliseconds) { return stream{}; }
};

// A transport of static functions without an instance (the shape before issue 11): rejected.
struct transport_without_instance {
    static constexpr memkv::transport_kind kind = memkv::transport_kind::tcp;
    using endpoint = std::string;
    using stream = minimal_transport::stream;
    using listener = minimal_transport::listener;
    struct config {};
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

TEST_CASE("a transport whose stream cannot write, one without an instance, or a store, is not "
          "a transport",
          "[concepts][transport]") {
    STATIC_REQUIRE(memkv::transport<minimal_transport>);
    STATIC_REQUIRE(!memkv::transport<transport_without_write>);
    STATIC_REQUIRE(!memkv::transport<transport_without_instance>);
    STATIC_REQUIRE(!memkv::transport<memkv::memory_store>);
    STATIC_REQUIRE(!memkv::transport<int>);
}

TEST_CASE("transport_set parses each member's endpoints with that member, or only with the one "
          "its configuration names",
          "[concepts][transport]") {
    using set = memkv::stream_transports;
    auto any = set::create({});
    REQUIRE(any);
    auto tcp = any->parse("127.0.0.1:9900");
    REQUIRE(tcp);
    CHECK(tcp->index() == 0);
    auto un = any->parse("unix:/tmp/memkv.sock");
    REQUIRE(un);
    CHECK(un->index() == 1);
    CHECK(any->is_loopback(*tcp));
    CHECK(any->is_loopback(*un));
    CHECK(!any->parse("no-port-here"));
    set::config only_unix;
    only_unix.only = memkv::transport_kind::unix_socket;
    auto unix_only = set::create(only_unix);
    REQUIRE(unix_only);
    CHECK(!unix_only->parse("127.0.0.1:9900"));
    CHECK(unix_only->parse("unix:/tmp/memkv.sock"));
    set::config only_shm;
    only_shm.only = memkv::transport_kind::shm; // not a member
    CHECK(set::create(only_shm).error() == memkv::errc::invalid_argument);
    auto t = memkv::tcp_transport::create({});
    auto u = memkv::unix_transport::create({});
    REQUIRE(t);
    REQUIRE(u);
    CHECK(!t->parse("unix:/tmp/x"));
    CHECK(!u->parse("127.0.0.1:1"));
    auto remote = t->parse("10.1.2.3:9900");
    REQUIRE(remote);
    CHECK(!t->is_loopback(*remote));
}
