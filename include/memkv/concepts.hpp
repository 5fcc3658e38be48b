// SPDX-License-Identifier: Apache-2.0
// The policy concepts memkv is composed from: transport, store and data_path.
#pragma once

#include <memkv/protocol/payload_ref.hpp>
#include <memkv/result.hpp>

#include <sys/uio.h>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace memkv {

/// Handshake identifiers of the transports (the `transport` byte of the hello message).
enum class transport_kind : std::uint8_t { tcp = 1, unix_socket = 2, shm = 3, rdma = 4 };

/// The name of a transport kind as MEMKV_TRANSPORT spells it.
constexpr std::string_view transport_name(transport_kind k) noexcept {
    switch (k) {
    case transport_kind::tcp:
        return "tcp";
    case transport_kind::unix_socket:
        return "unix";
    case transport_kind::shm:
        return "shm";
    case transport_kind::rdma:
        return "rdma";
    }
    return "?";
}

/// Whether a connection whose hello asks for `k` carries its payloads inline on its stream
/// (TCP, Unix sockets) rather than one-sided (shm, RDMA).
constexpr bool payload_inline(transport_kind k) noexcept {
    return k == transport_kind::tcp || k == transport_kind::unix_socket;
}

// clang-format off
/// @brief A transport: how a client reaches a server, as an instance made from its
/// configuration (the transport's context: nothing for sockets; a device and its protection
/// domain for RDMA, the registry of mapped memory for shared memory).
///
/// The control channel is always a framed, authenticated byte stream (`T::stream`); how payload
/// bytes travel is the data path (memkv::data_path) a connection's hello asks for.
///
/// Rules the compiler cannot check:
///  1. `T::create(config)` makes the instance; environment variables are only fallbacks read by
///     the callers of create() (client::create() reads MEMKV_TRANSPORT into the configuration).
///  2. `parse` accepts the transport's own endpoint syntax ("host:port", "unix:/path") and rejects
///     everything else with errc::invalid_argument, so that transport_set can try its members.
///  3. `listen` and `connect` return non-blocking objects; `accept`, `read_some`, `readv_some` and
///     `writev_some` never block: errc::retry means "nothing now, wait for readiness on fd()".
///  4. `read_some`/`readv_some` return errc::closed at end of stream; a short count is normal.
///  5. `connect` gives up after its timeout with errc::timed_out or errc::unavailable; it may run
///     on another thread than the instance's other calls (the client's connector thread).
///  6. `fd()` is valid for epoll (EPOLLIN/EPOLLOUT) until the object is destroyed or closed.
///  7. A stream is used by one thread at a time; moving it to another thread is allowed.
///  8. `is_loopback(endpoint)` is true only if no other host can reach the endpoint; a server
///     refuses to listen elsewhere without a key.
///  9. `s.carries(k)`: whether a client whose hello asks for data transport `k` may be served
///     on this stream; the server refuses every other hello on it.
///
/// @code
/// auto tcp = memkv::tcp_transport::create({});
/// auto ep = tcp->parse("127.0.0.1:9900");
/// auto s = tcp->connect(*ep, std::chrono::seconds(1));
/// @endcode
template <class T>
concept transport =
    std::movable<T> && std::movable<typename T::stream> && std::movable<typename T::listener> &&
    std::copyable<typename T::endpoint> && std::copy_constructible<typename T::config> &&
    std::same_as<std::remove_cv_t<decltype(T::kind)>, transport_kind> &&
    requires(const typename T::config& cfg, T& t, const T& ct, std::string_view text,
             const typename T::endpoint& ep, typename T::listener& l, typename T::stream& s,
             const typename T::stream& cs, std::span<std::byte> buf, std::span<const iovec> iov,
             std::chrono::milliseconds timeout, transport_kind k) {
        { T::create(cfg) } -> std::same_as<result<T>>;
        { ct.parse(text) } -> std::same_as<result<typename T::endpoint>>;
        { ct.is_loopback(ep) } -> std::same_as<bool>;
        { ct.to_string(ep) } -> std::same_as<std::string>;
        { t.listen(ep) } -> std::same_as<result<typename T::listener>>;
        { t.connect(ep, timeout) } -> std::same_as<result<typename T::stream>>;
        { l.fd() } -> std::same_as<int>;
        { l.accept() } -> std::same_as<result<typename T::stream>>;
        { l.local_endpoint() } -> std::same_as<std::string>;
        { s.fd() } -> std::same_as<int>;
        { s.kind() } -> std::same_as<transport_kind>;
        { cs.carries(k) } -> std::same_as<bool>;
        { s.peer() } -> std::same_as<std::string>;
        { s.read_some(buf) } -> std::same_as<result<std::size_t>>;
        { s.readv_some(iov) } -> std::same_as<result<std::size_t>>;
        { s.writev_some(iov) } -> std::same_as<result<std::size_t>>;
        { s.close() } -> std::same_as<void>;
    };

/// A finished store operation: the `tag` given at submission and the kernel-style result
/// (bytes transferred, 0 for flush/discard, or -errno).
struct io_completion {
    std::uint64_t tag = 0;
    std::int64_t res = 0;
};

/// @brief A store: a device with asynchronous, aligned I/O. It knows nothing about keys; regions,
/// the index, versions and eviction live in the storage engine above it (storage/engine.hpp).
///
/// Rules the compiler cannot check:
///  1. Offsets and lengths of `read`, `write` and `discard` are multiples of `block_size()`, and
///     buffers are aligned to it; otherwise the call fails with errc::bad_alignment and submits
///     nothing.
///  2. A successful submission produces exactly one io_completion with its tag, later, from
///     `poll`; a failed submission produces none.
///  3. Buffers are borrowed: they must stay valid and unmodified until their completion is polled.
///  4. `flush` completes only after every write that completed before it was submitted is
///     durable (fdatasync / FUA semantics).
///  5. `discard` (TRIM, punch hole) may or may not zero the range; nothing may rely on either.
///  6. `notify_fd()` is a descriptor that becomes readable when completions are pending, or -1
///     when the store completes every operation before submission returns (memory_store).
///  7. A store object is used by one thread at a time.
///
/// @code
/// auto s = memkv::memory_store::create({.capacity = 1 << 30});
/// s->write(0, buffer, /*tag=*/7);
/// memkv::io_completion c[8];
/// auto n = s->poll(c);  // c[0].tag == 7, c[0].res == buffer.size()
/// @endcode
template <class S>
concept store =
    std::movable<S> &&
    requires(S& s, const S& cs, const typename S::config& cfg, std::uint64_t offset,
             std::uint64_t length, std::span<std::byte> buf, std::span<const std::byte> cbuf,
             std::uint64_t tag, std::span<io_completion> out) {
        { S::create(cfg) } -> std::same_as<result<S>>;
        { cs.block_size() } -> std::same_as<std::uint32_t>;
        { cs.capacity() } -> std::same_as<std::uint64_t>;
        { s.read(offset, buf, tag) } -> std::same_as<result<void>>;
        { s.write(offset, cbuf, tag) } -> std::same_as<result<void>>;
        { s.flush(tag) } -> std::same_as<result<void>>;
        { s.discard(offset, length, tag) } -> std::same_as<result<void>>;
        { s.poll(out) } -> std::same_as<std::size_t>;
        { cs.notify_fd() } -> std::same_as<int>;
    };
// clang-format on

// clang-format off
/// @brief A data path: how the payload bytes of one connection move between the server's pool
/// buffers and client memory (the seam of docs/architecture.md). The control channel (frames,
/// MACs) is the same for every transport; only this part differs.
///
/// Rules the compiler cannot check:
///  1. pull() and push() borrow their buffer until that operation's completion is polled.
///  2. Each accepted pull or push yields exactly one completion {tag, bytes or -errno} from poll(); a refused one (an error returned) yields
///     none. A pull completes with the bytes of its range, all of them checked against the
///     frames' or references' checksums (-EBADMSG when they fail).
///  3. After fence() returns, no earlier pull or push touches either side's memory again; those
///     not yet completed complete with -ECANCELED at the next poll().
///  4. bytes_in_flight() counts the bytes queued for the client (pushes, and on a stream path
///     the replies queued with them): the connection's in-flight cap.
///  5. skip(ref): the bytes of `ref` will never be pulled (a refused or failed PUT): a stream
///     path reads and drops them, a one-sided path does nothing.
///  6. `P::reply_rides_payload` is true when a GET's reply header travels with its first pushed
///     bytes (stream paths: it is announced with announce_reply() before the first push);
///     false when the reply is sent on the control channel after every push completed
///     (one-sided paths: the client's memory holds the bytes before it learns they are there).
///  7. `P::pulls_on_demand` is true when a pull can only be filled by bytes the client sends in
///     its own order (stream paths): the record-write machine then arms a pull only once the
///     stream has reached it (op_host's want), so that no buffer waits for bytes queued behind
///     other requests' (with every buffer armed ahead, the frame at the head of the stream could
///     find none: a deadlock). One-sided paths pull whenever they like, a few pieces ahead.
///
/// @code
/// path.pull({.request = id, .offset = 0, .length = n}, buffer, tag);  // PUT bytes -> buffer
/// memkv::io_completion done[8];
/// auto k = path.poll(done);  // done[0] == {tag, n} once the bytes are in and checked
/// @endcode
template <class P>
concept data_path =
    std::same_as<std::remove_cv_t<decltype(P::reply_rides_payload)>, bool> &&
    std::same_as<std::remove_cv_t<decltype(P::pulls_on_demand)>, bool> &&
    requires(P& p, const P& cp, const protocol::payload_ref& ref, std::span<std::byte> dst,
             std::span<const std::byte> src, std::uint64_t tag, std::span<io_completion> out) {
        { p.pull(ref, dst, tag) } -> std::same_as<result<void>>;
        { p.push(src, ref, tag) } -> std::same_as<result<void>>;
        { p.skip(ref) } -> std::same_as<void>;
        { p.poll(out) } -> std::same_as<std::size_t>;
        { p.fence() } noexcept;
        { cp.bytes_in_flight() } -> std::same_as<std::size_t>;
    };
// clang-format on

/// Whether the engine TRIMs the regions it reclaims from a store of type `S` unless the server is
/// told otherwise (server_config::trim). A store declares `static constexpr bool trim_by_default`
/// where discarding costs more than it gives (file_store); any other store is trimmed.
template <class S>
inline constexpr bool trim_by_default = [] {
    if constexpr (requires { S::trim_by_default; })
        return S::trim_by_default;
    else
        return true;
}();

} // namespace memkv
