// SPDX-License-Identifier: Apache-2.0
// Non-blocking stream sockets (TCP and Unix) shared by the stream transports.
#pragma once

#include <memkv/error.hpp>
#include <memkv/result.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace memkv::detail {

/// Owns a file descriptor; closes it on destruction.
class unique_fd {
public:
    unique_fd() noexcept = default;
    explicit unique_fd(int fd) noexcept : fd_(fd) {}
    unique_fd(unique_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    unique_fd& operator=(unique_fd&& o) noexcept {
        if (this != &o) reset(std::exchange(o.fd_, -1));
        return *this;
    }
    ~unique_fd() { reset(); }
    int get() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return fd_ >= 0; }
    int release() noexcept { return std::exchange(fd_, -1); }
    void reset(int fd = -1) noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }

private:
    int fd_ = -1;
};

/// A socket address of either family, with its canonical text form.
struct socket_address {
    sockaddr_storage storage{};
    socklen_t length = 0;
    std::string text; ///< "host:port", "[v6]:port" or "unix:/path"

    int family() const noexcept { return storage.ss_family; }
    const sockaddr* get() const noexcept { return reinterpret_cast<const sockaddr*>(&storage); }
};

/// Parses "host:port" or "[v6]:port" (numeric hosts and names resolved with getaddrinfo).
inline result<socket_address> parse_inet_address(std::string_view text) noexcept {
    if (text.starts_with("tcp://")) text.remove_prefix(6);
    std::string host, port;
    if (text.starts_with('[')) {
        auto close = text.find(']');
        if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
            return errc::invalid_argument;
        host = std::string(text.substr(1, close - 1));
        port = std::string(text.substr(close + 2));
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string_view::npos || colon == 0) return errc::invalid_argument;
        host = std::string(text.substr(0, colon));
        port = std::string(text.substr(colon + 1));
    }
    if (port.empty() || port.size() > 5 ||
        port.find_first_not_of("0123456789") != std::string::npos)
        return errc::invalid_argument;
    if (std::stoul(port) > 65535) return errc::invalid_argument;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0 || res == nullptr)
        return errc::invalid_argument;
    socket_address a;
    std::memcpy(&a.storage, res->ai_addr, res->ai_addrlen);
    a.length = res->ai_addrlen;
    ::freeaddrinfo(res);
    a.text = (a.family() == AF_INET6 ? "[" + host + "]" : host) + ":" + port;
    return a;
}

/// Parses "unix:/path" (or "unix:@name" for the abstract namespace).
inline result<socket_address> parse_unix_address(std::string_view text) noexcept {
    if (!text.starts_with("unix:")) return errc::invalid_argument;
    auto path = text.substr(5);
    sockaddr_un un{};
    if (path.empty() || path.size() >= sizeof(un.sun_path)) return errc::invalid_argument;
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, path.data(), path.size());
    if (path[0] == '@') un.sun_path[0] = '\0';
    socket_address a;
    std::memcpy(&a.storage, &un, sizeof(un));
    a.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
    a.text = std::string(text);
    return a;
}

/// Text form of a peer or local address.
inline std::string address_text(const sockaddr_storage& ss) {
    char buf[INET6_ADDRSTRLEN] = {};
    if (ss.ss_family == AF_INET) {
        const auto& in = reinterpret_cast<const sockaddr_in&>(ss);
        ::inet_ntop(AF_INET, &in.sin_addr, buf, sizeof(buf));
        return std::string(buf) + ":" + std::to_string(ntohs(in.sin_port));
    }
    if (ss.ss_family == AF_INET6) {
        const auto& in6 = reinterpret_cast<const sockaddr_in6&>(ss);
        ::inet_ntop(AF_INET6, &in6.sin6_addr, buf, sizeof(buf));
        return "[" + std::string(buf) + "]:" + std::to_string(ntohs(in6.sin6_port));
    }
    if (ss.ss_family == AF_UNIX) return "unix";
    return "?";
}

/// True for 127.0.0.0/8, ::1, v4-mapped loopback and Unix sockets.
inline bool is_loopback(const socket_address& a) noexcept {
    if (a.family() == AF_UNIX) return true;
    if (a.family() == AF_INET) {
        const auto& in = reinterpret_cast<const sockaddr_in&>(a.storage);
        return (ntohl(in.sin_addr.s_addr) >> 24) == 127;
    }
    if (a.family() == AF_INET6) {
        const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a.storage);
        if (IN6_IS_ADDR_LOOPBACK(&in6.sin6_addr)) return true;
        if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) return in6.sin6_addr.s6_addr[12] == 127;
    }
    return false;
}

/// A connected, non-blocking stream socket.
class socket_stream {
public:
    socket_stream() = default;
    explicit socket_stream(unique_fd fd) noexcept : fd_(std::move(fd)) {}

    int fd() const noexcept { return fd_.get(); }
    void close() noexcept { fd_.reset(); }

    /// Reads what is available. errc::retry when nothing is, errc::closed at end of stream.
    result<std::size_t> read_some(std::span<std::byte> buf) noexcept {
        for (;;) {
            ssize_t n = ::recv(fd_.get(), buf.data(), buf.size(), 0);
            if (n > 0) return static_cast<std::size_t>(n);
            if (n == 0) return errc::closed;
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return errc::retry;
            return errno_code(errno);
        }
    }
    /// Scatter read of what is available.
    result<std::size_t> readv_some(std::span<const iovec> iov) noexcept {
        for (;;) {
            ssize_t n = ::readv(fd_.get(), iov.data(), static_cast<int>(iov.size()));
            if (n > 0) return static_cast<std::size_t>(n);
            if (n == 0) return errc::closed;
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return errc::retry;
            return errno_code(errno);
        }
    }
    /// Gather write of as much as the socket takes. errc::retry when it takes nothing.
    result<std::size_t> writev_some(std::span<const iovec> iov) noexcept {
        msghdr msg{};
        msg.msg_iov = const_cast<iovec*>(iov.data());
        msg.msg_iovlen = iov.size();
        for (;;) {
            ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
            if (n >= 0) return static_cast<std::size_t>(n);
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return errc::retry;
            if (errno == EPIPE || errno == ECONNRESET) return errc::closed;
            return errno_code(errno);
        }
    }
    result<std::size_t> write_some(std::span<const std::byte> buf) noexcept {
        iovec v{const_cast<std::byte*>(buf.data()), buf.size()};
        return writev_some({&v, 1});
    }

private:
    unique_fd fd_;
};

inline result<void> set_nonblocking(int fd) noexcept {
    int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return errno_code(errno);
    return {};
}

/// Socket options for data connections: no Nagle, large buffers.
inline void tune_stream_socket(int fd, int family) noexcept {
    if (family == AF_INET || family == AF_INET6) {
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
}

/// Connects to `addr` within `timeout`; the returned socket is non-blocking.
inline result<socket_stream> connect_stream(const socket_address& addr,
                                            std::chrono::milliseconds timeout) noexcept {
    unique_fd fd(::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) return errno_code(errno);
    tune_stream_socket(fd.get(), addr.family());
    if (::connect(fd.get(), addr.get(), addr.length) != 0) {
        if (errno != EINPROGRESS && errno != EAGAIN) return errc::unavailable;
        pollfd p{fd.get(), POLLOUT, 0};
        int r;
        do {
            r = ::poll(&p, 1, static_cast<int>(timeout.count()));
        } while (r < 0 && errno == EINTR);
        if (r == 0) return errc::timed_out;
        int err = 0;
        socklen_t len = sizeof(err);
        ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
        if (r < 0 || err != 0) return errc::unavailable;
    }
    return socket_stream(std::move(fd));
}

/// Removes a Unix socket file left by an earlier run: only a socket, and only if nothing
/// accepts connections on it (errc::rejected for anything else at that path, EADDRINUSE for a
/// live server).
inline result<void> remove_stale_socket(const socket_address& addr) noexcept {
    const char* path = addr.text.c_str() + 5;
    struct stat st {};
    if (::lstat(path, &st) != 0) return {}; // nothing there
    if (!S_ISSOCK(st.st_mode)) return errc::rejected;
    unique_fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (probe && ::connect(probe.get(), addr.get(), addr.length) == 0)
        return errno_code(EADDRINUSE);
    ::unlink(path);
    return {};
}

/// A listening socket; accept() never blocks. A Unix socket's file is removed when the
/// listener is destroyed (if it is still the one this listener created).
class socket_listener {
public:
    static result<socket_listener> listen(const socket_address& addr, int backlog = 1024) noexcept {
        if (addr.family() == AF_UNIX && addr.text.size() > 5 && addr.text[5] != '@')
            MEMKV_TRY(remove_stale_socket(addr));
        unique_fd fd(::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        if (!fd) return errno_code(errno);
        int one = 1;
        ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (::bind(fd.get(), addr.get(), addr.length) != 0) return errno_code(errno);
        if (::listen(fd.get(), backlog) != 0) return errno_code(errno);
        socket_listener l;
        l.fd_ = std::move(fd);
        l.address_ = addr;
        if (addr.family() == AF_UNIX && addr.text.size() > 5 && addr.text[5] != '@') {
            struct stat st {};
            if (::stat(addr.text.c_str() + 5, &st) == 0) l.inode_ = st.st_ino;
        }
        if (addr.family() != AF_UNIX) { // learn the port the kernel chose for port 0
            sockaddr_storage ss{};
            socklen_t len = sizeof(ss);
            ::getsockname(l.fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len);
            auto host = addr.text.substr(0, addr.text.rfind(':'));
            std::uint16_t port = addr.family() == AF_INET
                                     ? ntohs(reinterpret_cast<sockaddr_in&>(ss).sin_port)
                                     : ntohs(reinterpret_cast<sockaddr_in6&>(ss).sin6_port);
            l.address_.text = host + ":" + std::to_string(port);
            l.address_.storage = ss;
            l.address_.length = len;
        }
        return l;
    }

    int fd() const noexcept { return fd_.get(); }
    /// The bound address, with the real port when 0 was asked for.
    const socket_address& address() const noexcept { return address_; }

    /// Accepts one pending connection (non-blocking). errc::retry when none is pending.
    result<socket_stream> accept(std::string* peer = nullptr) noexcept {
        sockaddr_storage ss{};
        socklen_t len = sizeof(ss);
        for (;;) {
            int c = ::accept4(fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len,
                              SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (c >= 0) {
                tune_stream_socket(c, address_.family());
                if (peer) *peer = address_.family() == AF_UNIX ? address_.text : address_text(ss);
                return socket_stream(unique_fd(c));
            }
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return errc::retry;
            return errno_code(errno);
        }
    }

    socket_listener() = default;
    socket_listener(socket_listener&& o) noexcept
        : fd_(std::move(o.fd_)), address_(std::move(o.address_)),
          inode_(std::exchange(o.inode_, 0)) {}
    socket_listener& operator=(socket_listener&& o) noexcept {
        if (this != &o) {
            remove_file();
            fd_ = std::move(o.fd_);
            address_ = std::move(o.address_);
            inode_ = std::exchange(o.inode_, 0);
        }
        return *this;
    }
    ~socket_listener() { remove_file(); }

private:
    void remove_file() noexcept {
        if (inode_ == 0) return;
        struct stat st {};
        const char* path = address_.text.c_str() + 5;
        if (::stat(path, &st) == 0 && st.st_ino == inode_) ::unlink(path);
        inode_ = 0;
    }

    unique_fd fd_;
    socket_address address_;
    ino_t inode_ = 0; // of the socket file this listener created, 0 if none
};

} // namespace memkv::detail
