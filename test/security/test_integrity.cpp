// SPDX-License-Identifier: Apache-2.0
// What the wire's integrity checks do end to end, against a live server with authentication:
// a put whose payload fails its CRC32C stores nothing; a GET reply whose payload bytes or MACed
// header bytes were changed in transit (by a proxy between client and server) never reaches the
// caller as a success; a request for a key of another shard (put, get, del, exists) is refused
// with wrong_shard and changes nothing.
#include "security/raw_connection.hpp"
#include "security/suite_env.hpp"
#include "support/catch.hpp"
#include "support/round_trip_checks.hpp"
#include "support/server_fixture.hpp"

#include <memkv/memkv.hpp>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <list>
#include <mutex>
#include <optional>
#include <thread>

using namespace memkv;
using namespace memkv::test::security;
using memkv::test::mismatch;
using memkv::test::pattern;
using memkv::test::server_fixture;
using std::chrono::milliseconds;

namespace {

constexpr std::uint32_t shards = 2;

/// A TCP proxy on 127.0.0.1 in front of `upstream` that can flip one bit of what the server
/// sends: arm(k) flips the lowest bit of the k-th next byte the server sends on any connection.
class tamper_proxy {
public:
    explicit tamper_proxy(std::string upstream) : upstream_(std::move(upstream)) {
        listen_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(listen_);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(listen_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
        REQUIRE(::listen(listen_.get(), 16) == 0);
        socklen_t len = sizeof(a);
        REQUIRE(::getsockname(listen_.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0);
        endpoint_ = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
        acceptor_ = std::thread([this] { accept_loop(); });
    }
    ~tamper_proxy() {
        stop_ = true;
        ::shutdown(listen_.get(), SHUT_RDWR);
        acceptor_.join();
        for (auto& t : pumps_)
            t.join();
    }
    tamper_proxy(const tamper_proxy&) = delete;
    tamper_proxy& operator=(const tamper_proxy&) = delete;

    const std::string& endpoint() const { return endpoint_; }
    void arm(std::int64_t k) {
        std::lock_guard lock(mutex_);
        flip_in_ = k;
    }
    bool flipped() {
        std::lock_guard lock(mutex_);
        return flip_in_ < 0;
    }
    /// Client connections accepted so far.
    std::size_t accepted() const { return accepted_.load(); }

private:
    void accept_loop() {
        while (!stop_) {
            detail::unique_fd client(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
            if (!client) continue;
            ++accepted_;
            auto addr = detail::parse_inet_address(upstream_);
            auto server = detail::connect_stream(*addr, milliseconds(2000));
            if (!server) continue;
            const int s = server->fd();
            ::fcntl(s, F_SETFL, ::fcntl(s, F_GETFL) & ~O_NONBLOCK);
            streams_.push_back(std::move(*server));
            pumps_.emplace_back([this, c = std::move(client), s]() mutable { pump(c.get(), s); });
        }
    }

    /// Copies both ways until either side closes, then closes both.
    void pump(int client, int server) {
        std::vector<std::byte> buf(1 << 16);
        pollfd p[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
        while (!stop_) {
            if (::poll(p, 2, 100) <= 0) continue;
            for (int i = 0; i < 2; ++i) {
                if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
                const ssize_t n = ::read(p[i].fd, buf.data(), buf.size());
                if (n <= 0) return finish(client, server);
                if (i == 1) tamper({buf.data(), static_cast<std::size_t>(n)});
                const int to = i == 0 ? server : client;
                for (ssize_t off = 0; off < n;) {
                    const ssize_t w = ::send(to, buf.data() + off,
                                             static_cast<std::size_t>(n - off), MSG_NOSIGNAL);
                    if (w <= 0) return finish(client, server);
                    off += w;
                }
            }
        }
        finish(client, server);
    }
    void tamper(std::span<std::byte> data) {
        std::lock_guard lock(mutex_);
        if (flip_in_ < 0) return;
        if (flip_in_ < static_cast<std::int64_t>(data.size())) {
            data[static_cast<std::size_t>(flip_in_)] ^= std::byte{1};
            flip_in_ = -1;
        } else {
            flip_in_ -= static_cast<std::int64_t>(data.size());
        }
    }
    static void finish(int client, int server) {
        ::shutdown(client, SHUT_RDWR);
        ::shutdown(server, SHUT_RDWR);
    }

    std::string upstream_, endpoint_;
    detail::unique_fd listen_;
    std::atomic<bool> stop_{false};
    std::atomic<std::size_t> accepted_{0};
    std::thread acceptor_;
    std::list<std::thread> pumps_;             // acceptor thread only, joined at destruction
    std::list<detail::socket_stream> streams_; // upstream sockets, closed at destruction
    std::mutex mutex_;
    std::int64_t flip_in_ = -1;
};

server_config authenticated_config(const auth::key_entry& key) {
    auto cfg = memkv::test::make_config(shards);
    cfg.keys = make_ring({key});
    return cfg;
}

/// The reply to request `id`; fails the test if none comes.
raw_connection::frame_in reply_to(raw_connection& c, std::uint64_t id) {
    auto r = c.read_frame();
    REQUIRE(r);
    REQUIRE(r->h.is_reply());
    REQUIRE(r->h.request_id == id);
    return *r;
}

std::uint32_t status(errc e) {
    return static_cast<std::uint32_t>(e);
}

/// True if `r` is a miss (not an error).
bool miss(const result<std::optional<std::vector<std::byte>>>& r) {
    return r && !*r;
}

} // namespace

TEST_CASE("A put whose payload fails its CRC32C is refused with checksum and stores nothing",
          "[security][integrity]") {
    const auto key = make_key(7, "acme", 0x5a);
    server_fixture fx(authenticated_config(key));
    client_config cc;
    cc.key = key;
    auto valid = fx.client(cc);
    const std::string k = owned_key(1, shards, "crc");
    const auto value = pattern(3, 4096);

    auto c = raw_connection::connect(fx.tcp_endpoint);
    c.open_session(&key, 1);
    const auto before = fx.server->counters(1).checksum_errors.load();
    const auto id = c.next_id();
    auto h = header(protocol::opcode::put, id, static_cast<std::uint32_t>(k.size()));
    h.value_len = value.size();
    h.body_len = static_cast<std::uint32_t>(k.size());
    h.payload_len = static_cast<std::uint32_t>(value.size());
    h.checksum = crc32c(value) ^ 1u; // MACed like the rest of the header: only the CRC is wrong
    REQUIRE(c.send(c.frame(h, bytes_of(k), value, false)));
    CHECK(reply_to(c, id).h.status() == status(errc::checksum));
    CHECK(fx.server->counters(1).checksum_errors.load() == before + 1);
    CHECK(miss(valid->get(k)));

    // The connection stays usable (docs/protocol.md §9): the same put with the right CRC works.
    const auto id2 = c.next_id();
    h.request_id = id2;
    REQUIRE(c.send(c.frame(h, bytes_of(k), value)));
    CHECK(reply_to(c, id2).h.status() == 0);
    auto got = valid->get(k);
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    CHECK(mismatch(**got, value) == "");
}

TEST_CASE("Requests for another shard's key are refused with wrong_shard and change nothing",
          "[security][integrity]") {
    const auto key = make_key(7, "acme", 0x5a);
    server_fixture fx(authenticated_config(key));
    client_config cc;
    cc.key = key;
    auto valid = fx.client(cc);
    const std::string absent = owned_key(1, shards, "absent");
    const std::string present = owned_key(1, shards, "present");
    const auto value = pattern(4, 1000);
    REQUIRE(valid->put(present, value).has_value());

    auto c = raw_connection::connect(fx.tcp_endpoint);
    c.open_session(&key, 0); // shard 0 owns neither key
    auto refused = [&](protocol::frame_header h, std::span<const std::byte> body,
                       std::span<const std::byte> payload = {}) {
        REQUIRE(c.send(c.frame(h, body, payload)));
        const auto r = reply_to(c, h.request_id);
        CHECK(r.h.status() == status(errc::wrong_shard));
        CHECK(r.body.empty());
        CHECK(r.payload.empty());
    };
    auto put =
        header(protocol::opcode::put, c.next_id(), static_cast<std::uint32_t>(absent.size()));
    put.value_len = value.size();
    refused(put, bytes_of(absent), value);
    refused(header(protocol::opcode::del, c.next_id(), static_cast<std::uint32_t>(present.size())),
            bytes_of(present));
    refused(header(protocol::opcode::get, c.next_id(), static_cast<std::uint32_t>(present.size())),
            bytes_of(present));
    const std::span<const std::byte> keys[] = {bytes_of(present)};
    refused(header(protocol::opcode::exists, c.next_id(), 1),
            protocol::encode_exists_request(keys));
    CHECK(fx.server->counters(0).entries.load() == 0); // no second copy on the wrong shard

    // Nothing changed: the absent key is still absent, the present one still there.
    CHECK(miss(valid->get(absent)));
    auto got = valid->get(present);
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    CHECK(mismatch(**got, value) == "");
}

TEST_CASE("A GET reply changed in transit never reaches the caller as a success",
          "[security][integrity]") {
    const auto key = make_key(7, "acme", 0x5a);
    server_fixture fx(authenticated_config(key));
    tamper_proxy proxy(fx.tcp_endpoint);
    client_config cc;
    cc.key = key;
    cc.servers = {proxy.endpoint()};
    cc.request_timeout = milliseconds(3000);
    auto c = fx.client(cc);
    const std::string k = "tampered";
    const auto value = pattern(5, (1u << 20) + 123);
    REQUIRE(c->put(k, value).has_value());
    auto stored = c->get(k);
    REQUIRE(stored.has_value());
    REQUIRE(stored->has_value());

    SECTION("a payload byte: the CRC32C check fails the GET with checksum") {
        // 100,000 bytes into the reply: inside the first data chunk (1 MiB), past any header.
        proxy.arm(100'000);
        auto got = c->get(k);
        CHECK(proxy.flipped());
        REQUIRE_FALSE(got.has_value());
        CHECK(got.error() == errc::checksum);
        // The stream itself is intact (§9): the next GET on the same connection is right.
        got = c->get(k);
        REQUIRE(got.has_value());
        REQUIRE(got->has_value());
        CHECK(mismatch(**got, value) == "");
    }
    SECTION("a header byte: the MAC check fails, the connection is dropped, a new one works") {
        const auto connections = proxy.accepted();
        proxy.arm(10); // the reply's request id
        const auto t0 = std::chrono::steady_clock::now();
        auto got = c->get(k);
        CHECK(proxy.flipped());
        REQUIRE_FALSE(got.has_value());
        INFO(got.error().message());
        // Refused at once as a failed MAC (checked before anything else), not left to time out.
        CHECK(got.error() == errc::unauthenticated);
        CHECK(std::chrono::steady_clock::now() - t0 < milliseconds(2000));
        // The client reconnects (backoff at most about 500 ms) and reads the right bytes.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        do {
            got = c->get(k);
        } while (!got && std::chrono::steady_clock::now() < deadline);
        REQUIRE(got.has_value());
        REQUIRE(got->has_value());
        CHECK(mismatch(**got, value) == "");
        CHECK(proxy.accepted() > connections); // the client reconnected
    }
}
