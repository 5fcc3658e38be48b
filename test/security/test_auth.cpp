// SPDX-License-Identifier: Apache-2.0
// Authentication against a live server (DESIGN.md §6, docs/protocol.md §3-§4.3, reliability.md
// "auth"): missing, wrong and unknown keys; the server's answers do not tell an unknown key id
// from a wrong secret; every header, MAC and body bit flipped after authentication; replay on
// the same and on a new connection (frames and handshake); key rotation; tenant isolation; and
// the refusal of a non-loopback listener without keys.
#include "security/raw_connection.hpp"
#include "security/suite_env.hpp"
#include "support/catch.hpp"
#include "support/seed.hpp"
#include "support/server_fixture.hpp"

#include <memkv/memkv.hpp>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

using namespace memkv;
using namespace memkv::test::security;
using protocol::opcode;

namespace {

constexpr double close_limit_ms = 1000;

constexpr std::uint8_t op(opcode o) {
    return static_cast<std::uint8_t>(o);
}

/// A 2-shard server with two tenants: key 1 -> tenant "a", key 2 -> tenant "b".
struct auth_env {
    static constexpr std::uint32_t shards = 2;
    auth::key_entry ka = make_key(1, "a", 0x11);
    auth::key_entry kb = make_key(2, "b", 0x22);
    memkv::test::server_fixture fx;

    static server_config config(std::shared_ptr<auth::key_ring> ring) {
        auto cfg = memkv::test::make_config(shards);
        cfg.keys = std::move(ring);
        return cfg;
    }

    auth_env() : fx(config(make_ring({ka, kb}))) {
        // Clients created without a key must not pick one up from the environment.
        ::unsetenv("MEMKV_AUTH_KEY");
        ::unsetenv("MEMKV_AUTH_KEY_FILE");
    }

    result<default_client> try_client(std::optional<auth::key_entry> key) const {
        client_config cc;
        cc.servers = {fx.tcp_endpoint};
        cc.key = std::move(key);
        cc.connect_timeout = milliseconds(2000);
        cc.request_timeout = milliseconds(5000);
        return default_client::create(std::move(cc));
    }
    std::optional<default_client> client(const auth::key_entry& key) const {
        auto c = try_client(key);
        REQUIRE(c);
        return std::move(*c);
    }
    raw_connection attached(const auth::key_entry& key, std::uint32_t shard) const {
        auto c = raw_connection::connect(fx.tcp_endpoint);
        c.open_session(&key, shard);
        return c;
    }
    std::uint64_t auth_failures() const {
        std::uint64_t n = 0;
        for (std::uint32_t s = 0; s < shards; ++s)
            n += fx.server->counters(s).auth_failures.load();
        return n;
    }
};

bool refused(std::error_code ec) {
    return ec == errc::unauthenticated || ec == errc::closed;
}

/// The three handshake messages of a hand-driven handshake, and the session it established.
struct manual_handshake {
    std::array<std::byte, auth::hello_size> hello{};
    std::array<std::byte, auth::challenge_size> challenge{};
    std::array<std::byte, auth::proof_message_size> proof{};
};

/// Runs the client side of the handshake by hand (so its bytes can be replayed) and installs
/// the session on `c`.
manual_handshake handshake_by_hand(raw_connection& c, const auth::key_entry& k) {
    manual_handshake m;
    m.hello = make_hello(k.id);
    REQUIRE(c.send(m.hello));
    REQUIRE(c.fill(auth::challenge_size, clock::now() + milliseconds(2000)));
    std::copy_n(c.received().begin(), auth::challenge_size, m.challenge.begin());
    c.received().clear();
    auto ch = auth::decode_challenge(std::span<const std::byte, auth::challenge_size>(m.challenge));
    REQUIRE(ch);
    const auto expect = auth::compute_server_proof(k.secret, m.hello, m.challenge);
    REQUIRE(auth::equal_constant_time(expect, ch->server_proof));
    m.proof = make_proof(k.secret, m.hello, m.challenge);
    REQUIRE(c.send(m.proof));
    auto h = auth::decode_hello(std::span<const std::byte, auth::hello_size>(m.hello));
    REQUIRE(h);
    auto keys = auth::derive_session_keys(k.secret, h->client_nonce, ch->server_nonce);
    REQUIRE(keys);
    auto send = auth::frame_mac::create(keys->client_to_server);
    auto recv = auth::frame_mac::create(keys->server_to_client);
    REQUIRE(send);
    REQUIRE(recv);
    c.adopt_session(
        detail::session{std::move(*send), std::move(*recv), ch->version, ch->shard_count});
    return m;
}

} // namespace

TEST_CASE("a hello asking for a data transport its listener cannot carry is refused without a "
          "challenge, and the one the listener carries is served",
          "[security][auth][transport]") {
    auto cfg = memkv::test::make_config(2);
    cfg.keys = make_ring({make_key(1, "a", 0x11)});
    memkv::test::server_fixture fx(cfg, 1ull << 30, /*with_unix=*/true);
    const auto key = make_key(1, "a", 0x11);
    struct listener_case {
        std::string endpoint;
        transport_kind carried;
    };
    for (const auto& l : {listener_case{fx.tcp_endpoint, transport_kind::tcp},
                          listener_case{fx.unix_endpoint, transport_kind::unix_socket}}) {
        for (std::uint8_t byte : {0, 1, 2, 3, 4, 99}) {
            const auto asked = static_cast<transport_kind>(byte);
            INFO(l.endpoint << ", hello transport byte " << int(byte));
            const auto failures0 = fx.server->handshake_failures();
            auto c = raw_connection::connect(l.endpoint);
            auto r = c.handshake(&key, asked);
            if (asked == l.carried) {
                REQUIRE(r);
                c.attach(0);
                const auto id = c.next_id();
                REQUIRE(c.send(c.frame(header(opcode::ping, id))));
                auto reply = c.read_frame();
                REQUIRE(reply);
                CHECK(reply->h.op == (op(opcode::ping) | protocol::reply_bit));
                CHECK(reply->h.status() == 0);
                CHECK(fx.server->handshake_failures() == failures0);
            } else {
                // Refused at the hello: the connection closes, no challenge comes.
                REQUIRE_FALSE(r);
                CHECK(r.error() != errc::unauthenticated);
                const auto deadline = clock::now() + milliseconds(2000);
                while (fx.server->handshake_failures() == failures0 && clock::now() < deadline)
                    std::this_thread::sleep_for(milliseconds(1));
                CHECK(fx.server->handshake_failures() > failures0);
            }
        }
    }
}

TEST_CASE("clients without a key, with a wrong secret or an unknown key id are refused",
          "[security][auth]") {
    auth_env env;
    const auto failures0 = env.fx.server->handshake_failures();

    auto none = env.try_client(std::nullopt);
    REQUIRE(!none);
    INFO("no key: " << none.error().message());
    CHECK(refused(none.error()));

    auto wrong = make_key(1, "a", 0x12); // id 1 exists, secret differs in every byte
    auto w = env.try_client(wrong);
    REQUIRE(!w);
    INFO("wrong secret: " << w.error().message());
    CHECK(refused(w.error()));

    auto swapped = make_key(2, "b", 0x11); // tenant b's id with tenant a's secret
    auto s = env.try_client(swapped);
    REQUIRE(!s);
    CHECK(refused(s.error()));

    auto unknown = make_key(99, "a", 0x11);
    auto u = env.try_client(unknown);
    REQUIRE(!u);
    INFO("unknown key id: " << u.error().message());
    CHECK(refused(u.error()));

    // The same through the raw handshake: the client rejects the server's proof.
    const std::array<const auth::key_entry*, 3> bad{nullptr, &wrong, &unknown};
    for (const auth::key_entry* k : bad) {
        auto c = raw_connection::connect(env.fx.tcp_endpoint);
        auto r = c.handshake(k);
        REQUIRE(!r);
        CHECK(r.error() == errc::unauthenticated);
    }
    CHECK(env.fx.server->handshake_failures() > failures0);

    // Nothing was stored by any of them, and the real keys work.
    auto a = env.client(env.ka);
    auto b = env.client(env.kb);
    REQUIRE(a->put("k", memkv::test::pattern(1, 64)));
    REQUIRE(b->put("k", memkv::test::pattern(2, 64)));

    // A key presented to a server that runs without keys fails too (its proof is made with a
    // random secret).
    memkv::test::server_fixture keyless(memkv::test::make_config(1));
    client_config cc;
    cc.servers = {keyless.tcp_endpoint};
    cc.key = env.ka;
    auto k = default_client::create(cc);
    REQUIRE(!k);
    CHECK(refused(k.error()));
}

TEST_CASE("the server answers an unknown key id and a wrong secret identically",
          "[security][auth]") {
    auth_env env;
    struct probe {
        std::string name;
        auth::key_entry key; // what the client believes
    };
    const std::vector<probe> probes = {
        {"unknown key id 99", make_key(99, "a", 0x11)},
        {"known key id 1, wrong secret", make_key(1, "a", 0x77)},
        {"key id 0 (no key) on a server with keys", make_key(0, "a", 0)},
        {"key id 2^32-1", make_key(0xffffffffu, "a", 0x11)},
    };
    std::vector<std::vector<double>> latency(probes.size());
    for (int round = 0; round < 20; ++round) {
        for (std::size_t i = 0; i < probes.size(); ++i) {
            const auto& p = probes[i];
            INFO(p.name);
            auto c = raw_connection::connect(env.fx.tcp_endpoint);
            const auto hello = make_hello(p.key.id);
            const auto t0 = clock::now();
            REQUIRE(c.send(hello));
            REQUIRE(c.fill(auth::challenge_size, clock::now() + milliseconds(1000)));
            latency[i].push_back(ms_since(t0));
            // Exactly one 96-byte challenge of the same shape: version 1, 2 shards, no flags,
            // reserved bytes zero; its proof does not verify with the client's secret.
            const auto& rx = c.received();
            REQUIRE(rx.size() == auth::challenge_size);
            std::array<std::byte, auth::challenge_size> ch{};
            std::copy_n(rx.begin(), auth::challenge_size, ch.begin());
            auto d = auth::decode_challenge(std::span<const std::byte, auth::challenge_size>(ch));
            REQUIRE(d);
            CHECK(d->version == 1);
            CHECK(d->shard_count == auth_env::shards);
            CHECK(d->server_flags == 0);
            const auto mine = auth::compute_server_proof(p.key.secret, hello, ch);
            CHECK(!auth::equal_constant_time(mine, d->server_proof));
            c.received().clear();
            // The server then waits for a proof like for any client ...
            CHECK(c.quiet_for(milliseconds(round == 0 ? 150 : 0)));
            // ... and closes without a word when it comes (a client that checks the server's
            // proof would never send one; an attacker might).
            c.send(make_proof(p.key.secret, hello, ch));
            auto out = c.await_close();
            INFO(out.describe());
            CHECK(out.closed);
            CHECK(out.silent());
            CHECK(out.elapsed_ms < close_limit_ms);
        }
    }
    for (std::size_t i = 0; i < probes.size(); ++i) {
        auto v = latency[i];
        std::sort(v.begin(), v.end());
        std::printf("[security] challenge latency, %-42s median %.3f ms, max %.3f ms\n",
                    probes[i].name.c_str(), v[v.size() / 2], v.back());
    }
    // A client holding the right key sees the same shape, and its proof verifies.
    auto c = raw_connection::connect(env.fx.tcp_endpoint);
    handshake_by_hand(c, env.ka);
    c.attach(0);
}

TEST_CASE("every single-bit flip of a MACed get header closes the connection unanswered",
          "[security][auth]") {
    auth_env env;
    auto a = env.client(env.ka);
    const std::uint32_t shard = 0;
    const auto key = owned_key(shard, auth_env::shards, "flip");
    REQUIRE(a->put(key, memkv::test::pattern(3, 1000)));
    const auto auth0 = env.auth_failures();
    const auto t_all = clock::now();
    std::size_t silent = 0, header_errors = 0;
    double max_ms = 0;
    const protocol::limits lim{};
    for (std::size_t bit = 0; bit < protocol::mac_offset * 8; ++bit) {
        auto c = env.attached(env.ka, shard);
        auto f = c.frame(header(opcode::get, c.next_id(), static_cast<std::uint32_t>(key.size())),
                         bytes_of(key));
        f[bit / 8] ^= std::byte{static_cast<std::uint8_t>(1u << (bit % 8))};
        auto d = protocol::decode_header(
            std::span<const std::byte, protocol::header_size>(f.data(), protocol::header_size),
            lim);
        // A flip that grows body_len (within the cap) is followed by that many more bytes, so the
        // server has a whole body to check the MAC of instead of waiting for it.
        if (d && d->body_len > key.size())
            f.resize(f.size() + d->body_len - key.size(), std::byte{0});
        const auto t0 = clock::now();
        c.send(f);
        auto out = c.await_close();
        const double ms = ms_since(t0);
        max_ms = std::max(max_ms, ms);
        INFO("flipped header bit " << bit << " (byte " << bit / 8 << "): " << out.describe());
        CHECK(out.closed);
        CHECK(ms < close_limit_ms);
        if (d) {
            // A well-formed header: the MAC fails, nothing comes back.
            CHECK(out.silent());
            ++silent;
        } else {
            // A malformed header is refused before the MAC is checked (docs §9: magic, version,
            // opcode, flags and the caps come first) with a connection-level error. Never a
            // reply to the get.
            CHECK((out.only_connection_error(errc::protocol) ||
                   out.only_connection_error(errc::too_large)));
            ++header_errors;
        }
        if (bit % 64 == 63) {
            auto g = a->get(key);
            REQUIRE(g);
            REQUIRE(*g);
        }
    }
    std::printf("[security] 448 header bit flips: %zu closed silently (MAC), %zu refused by the "
                "header checks; max close %.2f ms, all in %.0f ms\n",
                silent, header_errors, max_ms, ms_since(t_all));
    CHECK(silent + header_errors == 448);
    CHECK(env.auth_failures() >= auth0 + silent);
    auto g = a->get(key);
    REQUIRE(g);
    REQUIRE(*g);
    CHECK(**g == memkv::test::pattern(3, 1000));
}

TEST_CASE("a flipped MAC bit or body bit closes the connection unanswered", "[security][auth]") {
    auth_env env;
    auto a = env.client(env.ka);
    const std::uint32_t shard = 1;
    const auto key = owned_key(shard, auth_env::shards, "flip");
    const auto value = memkv::test::pattern(4, 100);
    REQUIRE(a->put(key, value));
    const auto auth0 = env.auth_failures();
    std::size_t cases = 0;
    double max_ms = 0;
    auto attack = [&](const std::string& what, std::size_t bit, bool put) {
        auto c = env.attached(env.ka, shard);
        std::vector<std::byte> f;
        if (put) { // a put would overwrite the value: it must not
            auto h = header(opcode::put, c.next_id(), static_cast<std::uint32_t>(key.size()));
            h.value_len = 16;
            f = c.frame(h, cat({bytes_of(key), bytes_of("meta")}), filled(16, 0xee));
        } else {
            f = c.frame(header(opcode::get, c.next_id(), static_cast<std::uint32_t>(key.size())),
                        bytes_of(key));
        }
        f[bit / 8] ^= std::byte{static_cast<std::uint8_t>(1u << (bit % 8))};
        const auto t0 = clock::now();
        c.send(f);
        auto out = c.await_close();
        const double ms = ms_since(t0);
        max_ms = std::max(max_ms, ms);
        INFO(what << " bit " << bit << ": " << out.describe());
        CHECK(out.closed);
        CHECK(out.silent());
        CHECK(ms < close_limit_ms);
        ++cases;
    };
    for (std::size_t bit = protocol::mac_offset * 8; bit < protocol::header_size * 8; ++bit)
        attack("get, MAC", bit, false);
    for (std::size_t bit = protocol::header_size * 8;
         bit < (protocol::header_size + key.size()) * 8; ++bit)
        attack("get, body (key)", bit, false);
    for (std::size_t bit = protocol::mac_offset * 8; bit < protocol::header_size * 8; bit += 7)
        attack("put, MAC", bit, true);
    for (std::size_t bit = protocol::header_size * 8;
         bit < (protocol::header_size + key.size() + 4) * 8; bit += 3)
        attack("put, body (key and metadata)", bit, true);
    std::printf("[security] %zu MAC/body bit flips closed silently, max close %.2f ms\n", cases,
                max_ms);
    CHECK(env.auth_failures() >= auth0 + cases);
    auto g = a->get(key);
    REQUIRE(g);
    REQUIRE(*g);
    CHECK(**g == value);
}

TEST_CASE("a frame replayed on the same connection closes it", "[security][auth]") {
    auth_env env;
    auto a = env.client(env.ka);
    const auto key = owned_key(0, auth_env::shards, "replay");
    REQUIRE(a->put(key, memkv::test::pattern(5, 64)));
    SECTION("replayed ping") {
        auto c = env.attached(env.ka, 0);
        const auto f = c.frame(header(opcode::ping, c.next_id()));
        REQUIRE(c.send(f));
        auto r = c.read_frame();
        REQUIRE(r);
        CHECK(r->h.op == (op(opcode::ping) | protocol::reply_bit));
        REQUIRE(c.send(f)); // same bytes: MAC bound to the previous sequence number
        auto out = c.await_close();
        INFO(out.describe());
        CHECK(out.closed);
        CHECK(out.silent());
        CHECK(out.elapsed_ms < close_limit_ms);
    }
    SECTION("replayed get") {
        auto c = env.attached(env.ka, 0);
        const auto f =
            c.frame(header(opcode::get, c.next_id(), static_cast<std::uint32_t>(key.size())),
                    bytes_of(key));
        REQUIRE(c.send(f));
        auto r = c.read_frame();
        REQUIRE(r);
        CHECK(r->h.aux == 0);
        REQUIRE(c.send(f));
        auto out = c.await_close();
        INFO(out.describe());
        CHECK(out.closed);
        CHECK(out.silent());
    }
    SECTION("frames sent out of order") {
        auto c = env.attached(env.ka, 0);
        const auto f1 = c.frame(header(opcode::ping, c.next_id()));
        const auto f2 = c.frame(header(opcode::ping, c.next_id()));
        REQUIRE(c.send(f2)); // seq 2 where seq 1 is expected
        auto out = c.await_close();
        INFO(out.describe());
        CHECK(out.closed);
        CHECK(out.silent());
    }
    SECTION("a frame of the server's direction reflected back") {
        auto c = env.attached(env.ka, 0);
        const auto f = c.frame(header(opcode::ping, c.next_id()));
        REQUIRE(c.send(f));
        REQUIRE(c.fill(protocol::header_size, clock::now() + milliseconds(1000)));
        // The server's ping reply, sent back as it is: MACed with the other direction's key
        // and sequence number.
        std::vector<std::byte> reply(c.received().begin(),
                                     c.received().begin() + protocol::header_size);
        c.received().clear();
        REQUIRE(c.send(reply));
        auto out = c.await_close();
        INFO(out.describe());
        CHECK(out.closed);
        CHECK(out.silent());
    }
}

TEST_CASE("frames and handshakes replayed on a new connection are refused", "[security][auth]") {
    auth_env env;
    auto a = env.client(env.ka);
    const std::uint32_t shard = 1;
    const auto key = owned_key(shard, auth_env::shards, "replay");
    const auto v1 = memkv::test::pattern(10, 300), v2 = memkv::test::pattern(11, 300);

    // Connection 1 puts v1 legitimately; its bytes are recorded.
    auto c1 = raw_connection::connect(env.fx.tcp_endpoint);
    const auto hs1 = handshake_by_hand(c1, env.ka);
    const auto attach1 = c1.frame(header(opcode::attach, c1.next_id(), shard));
    REQUIRE(c1.send(attach1));
    REQUIRE(c1.read_frame());
    const auto put1 = c1.frame(
        [&] {
            auto h = header(opcode::put, c1.next_id(), static_cast<std::uint32_t>(key.size()));
            h.value_len = v1.size();
            return h;
        }(),
        bytes_of(key), v1);
    REQUIRE(c1.send(put1));
    auto r = c1.read_frame();
    REQUIRE(r);
    REQUIRE(r->h.aux == 0);
    REQUIRE(*a->get(key) == v1);
    // Then the owner overwrites it.
    REQUIRE(a->put(key, v2));
    const auto auth0 = env.auth_failures();

    // The recorded attach, as the first frame of another session: refused, no reply.
    {
        auto c = raw_connection::connect(env.fx.tcp_endpoint);
        REQUIRE(c.handshake(&env.ka));
        REQUIRE(c.send(attach1));
        auto out = c.await_close();
        INFO("replayed attach: " << out.describe());
        CHECK(out.closed);
        CHECK(out.silent());
    }
    // The recorded put, at the very sequence number it had (1), on a new attached session.
    {
        auto c = env.attached(env.ka, shard);
        REQUIRE(c.send_seq() == 1);
        REQUIRE(c.send(put1));
        auto out = c.await_close();
        INFO("replayed put: " << out.describe());
        CHECK(out.closed);
        CHECK(out.silent());
        CHECK(out.elapsed_ms < close_limit_ms);
    }
    // The recorded handshake: the server's fresh nonce makes the old proof worthless.
    {
        auto c = raw_connection::connect(env.fx.tcp_endpoint);
        REQUIRE(c.send(hs1.hello));
        REQUIRE(c.fill(auth::challenge_size, clock::now() + milliseconds(1000)));
        CHECK(!std::equal(c.received().begin(), c.received().end(), hs1.challenge.begin()));
        c.received().clear();
        REQUIRE(c.send(hs1.proof));
        c.send(attach1);
        c.send(put1);
        auto out = c.await_close();
        INFO("replayed handshake: " << out.describe());
        CHECK(out.closed);
        CHECK(out.silent());
    }
    CHECK(env.auth_failures() >= auth0 + 1);
    // Connection 1 still works, and the key holds the owner's latest value, not the replay's.
    const auto pid = c1.next_id();
    REQUIRE(c1.send(c1.frame(header(opcode::ping, pid))));
    auto pr = c1.read_frame();
    REQUIRE(pr);
    CHECK(pr->h.request_id == pid);
    auto g = a->get(key);
    REQUIRE(g);
    REQUIRE(*g);
    CHECK(**g == v2);
}

TEST_CASE("key rotation: old and new keys of a tenant work at once and see the same data",
          "[security][auth]") {
    const auto k1 = make_key(1, "a", 0x31);
    const auto k3 = make_key(3, "a", 0x33);
    const auto kb = make_key(2, "b", 0x22);
    memkv::test::server_fixture fx(auth_env::config(make_ring({k1, k3, kb})));
    auto with = [&](const auth::key_entry& k) -> result<default_client> {
        client_config cc;
        cc.servers = {fx.tcp_endpoint};
        cc.key = k;
        return default_client::create(std::move(cc));
    };
    auto c1 = with(k1);
    auto c3 = with(k3);
    REQUIRE(c1);
    REQUIRE(c3);
    const auto v1 = memkv::test::pattern(21, 5000), v3 = memkv::test::pattern(23, 5000);
    REQUIRE(c1->put("rot-1", v1));
    REQUIRE(c3->put("rot-3", v3));
    CHECK(*c3->get("rot-1") == v1);
    CHECK(*c1->get("rot-3") == v3);
    const std::vector<std::string> both{"rot-1", "rot-3"};
    CHECK(*c1->match_prefix(both) == 2);
    CHECK(*c3->match_prefix(both) == 2);

    // Retire key 1: new connections with it fail; the established session keeps working
    // (documented: reload affects new handshakes only); key 3 sees the tenant's data.
    REQUIRE(fx.server->reload_keys(make_ring({k3, kb})));
    auto late1 = with(k1);
    REQUIRE(!late1);
    CHECK(refused(late1.error()));
    CHECK(*c1->get("rot-3") == v3);
    auto fresh3 = with(k3);
    REQUIRE(fresh3);
    CHECK(*fresh3->get("rot-1") == v1);

    // A newer key 4 of the same tenant, added later, sees everything too.
    const auto k4 = make_key(4, "a", 0x34);
    REQUIRE(fx.server->reload_keys(make_ring({k3, k4, kb})));
    auto c4 = with(k4);
    REQUIRE(c4);
    CHECK(*c4->get("rot-1") == v1);
    CHECK(*c4->get("rot-3") == v3);
    // Tenant b never did.
    auto b = with(kb);
    REQUIRE(b);
    auto miss = b->get("rot-1");
    REQUIRE(miss);
    CHECK_FALSE(*miss);
}

TEST_CASE("tenants are isolated: another tenant's key is exactly a miss", "[security][auth]") {
    auth_env env;
    auto a = env.client(env.ka);
    auto b = env.client(env.kb);
    const std::string meta_a = "fp16:a";
    const auto va = memkv::test::pattern(31, 3000), vb = memkv::test::pattern(32, 2000);
    for (std::uint32_t s = 0; s < auth_env::shards; ++s) {
        const auto key = owned_key(s, auth_env::shards, "tenant");
        INFO("key " << key << " on shard " << s);
        put_options po;
        po.meta = bytes_of(meta_a);
        REQUIRE(a->put(key, va, po));

        auto g = b->get(key);
        REQUIRE(g);
        CHECK_FALSE(*g);
        const std::vector<std::string> keys{key};
        auto e = b->exists(keys);
        REQUIRE(e);
        CHECK((*e)[0] == false);
        CHECK(*b->match_prefix(keys) == 0);
        auto d = b->del(key);
        REQUIRE(d);
        CHECK_FALSE(*d);
        auto range = b->get_range(key, 0, 10);
        REQUIRE(range);
        CHECK_FALSE(*range);

        // b's put of the same key is its own value; a's is untouched.
        REQUIRE(b->put(key, vb));
        std::vector<std::byte> meta;
        auto ga = a->get(key, &meta);
        REQUIRE(ga);
        REQUIRE(*ga);
        CHECK(**ga == va);
        CHECK(
            std::equal(meta.begin(), meta.end(), bytes_of(meta_a).begin(), bytes_of(meta_a).end()));
        auto gb = b->get(key, &meta);
        REQUIRE(gb);
        REQUIRE(*gb);
        CHECK(**gb == vb);
        CHECK(meta.empty());
        // b's if_absent put sees only b's value; b's delete removes only b's value.
        put_options ia;
        ia.if_absent = true;
        REQUIRE(b->put(key, va, ia));
        CHECK(*b->get(key) == vb);
        auto db = b->del(key);
        REQUIRE(db);
        REQUIRE(*db);
        CHECK(*a->get(key) == va);
        auto e2 = a->exists(keys);
        REQUIRE(e2);
        CHECK((*e2)[0] == true);
        auto gone = b->get(key);
        REQUIRE(gone);
        CHECK_FALSE(*gone);
    }
    // Raw: tenant b asks for a's key with an exists carrying sizes and metadata.
    const auto key = owned_key(0, auth_env::shards, "tenant");
    auto c = env.attached(env.kb, 0);
    std::vector<std::byte> body(2);
    protocol::store_le16(body.data(), static_cast<std::uint16_t>(key.size()));
    body = cat({body, bytes_of(key)});
    auto h = header(opcode::exists, c.next_id(), 1);
    h.flags = protocol::flags::want_sizes | protocol::flags::want_meta;
    REQUIRE(c.send(c.frame(h, body)));
    auto r = c.read_frame();
    REQUIRE(r);
    CHECK(r->h.aux == 0);
    auto dec = protocol::decode_exists_reply(1, h.flags, r->body, protocol::limits{});
    REQUIRE(dec);
    CHECK(dec->present[0] == false);
    CHECK(dec->sizes[0] == 0);
    CHECK(dec->meta[0].empty());
}

TEST_CASE("a non-loopback listener needs a key ring", "[security][auth]") {
    auto cfg = memkv::test::make_config(1);
    cfg.listen = {"0.0.0.0:0"};
    {
        auto s = memory_server::create(cfg, {.capacity = 1ull << 30});
        REQUIRE(s);
        auto r = s->start();
        REQUIRE(!r);
        CHECK(r.error() == errc::unauthenticated);
    }
    {
        auto mixed = cfg;
        mixed.listen = {"127.0.0.1:0", "0.0.0.0:0"};
        auto s = memory_server::create(mixed, {.capacity = 1ull << 30});
        REQUIRE(s);
        auto r = s->start();
        REQUIRE(!r);
        CHECK(r.error() == errc::unauthenticated);
    }
    {
        const auto k = make_key(5, "wide", 0x55);
        auto keyed = cfg;
        keyed.keys = make_ring({k});
        auto s = memory_server::create(keyed, {.capacity = 1ull << 30});
        REQUIRE(s);
        REQUIRE(s->start());
        const auto ep = s->endpoints()[0];
        const auto port = ep.substr(ep.rfind(':') + 1);
        client_config cc;
        cc.servers = {"127.0.0.1:" + port};
        cc.key = k;
        auto c = default_client::create(cc);
        REQUIRE(c);
        REQUIRE(c->put("wide", memkv::test::pattern(9, 10)));
        CHECK(*c->get("wide") == memkv::test::pattern(9, 10));
        // Emptying the ring of a non-loopback server is refused as well.
        auto rl = s->reload_keys(std::make_shared<auth::key_ring>());
        REQUIRE(!rl);
        CHECK(rl.error() == errc::unauthenticated);
        s->stop();
    }
    {
        // Loopback without keys is the development mode: allowed.
        auto lo = memkv::test::make_config(1);
        auto s = memory_server::create(lo, {.capacity = 1ull << 30});
        REQUIRE(s);
        REQUIRE(s->start());
    }
}
