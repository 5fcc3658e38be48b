// SPDX-License-Identifier: Apache-2.0
// memkv's error codes and their std::error_category.
#pragma once

#include <string>
#include <system_error>

namespace memkv {

/// Errors memkv reports itself. Kernel and OpenSSL failures travel as `std::system_category()`
/// codes (built from `-errno`); everything else is one of these. A miss is `not_found`: a status
/// the caller expects, never a sign that something broke.
enum class errc : int {
    not_found = 1,    ///< no value under that key (a miss)
    exists,           ///< `if_absent` put of a key that is already present
    no_space,         ///< the value cannot fit even after eviction
    retry,            ///< transient condition; the same request may succeed later
    rejected,         ///< refused by policy (size caps, back-pressure)
    bad_alignment,    ///< store I/O not aligned to the block size
    checksum,         ///< stored or received bytes failed their CRC32C
    protocol,         ///< malformed or unexpected frame
    closed,           ///< the connection or object is closed
    wrong_shard,      ///< the key belongs to another shard (stale placement)
    unauthenticated,  ///< handshake failed or a frame failed its MAC
    unavailable,      ///< the server is unreachable, dead or stalled (a put/del already sent:
                      ///< outcome unknown)
    timed_out,        ///< a deadline passed; for put/del the outcome is unknown
    invalid_argument, ///< bad input from the caller
    too_large,        ///< a length exceeds a configured cap
    version_mismatch, ///< no protocol version in common
    forked,           ///< object used in a child process after fork()
    internal,         ///< an invariant broke; a bug
};

/// The category of `memkv::errc`.
const std::error_category& error_category() noexcept;

/// Makes a `std::error_code` in memkv's category.
inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), error_category()};
}

/// Makes a `std::error_code` from a kernel result (`-errno` or `errno`).
inline std::error_code errno_code(int err) noexcept {
    return {err < 0 ? -err : err, std::system_category()};
}

namespace detail {
class memkv_category final : public std::error_category {
public:
    const char* name() const noexcept override { return "memkv"; }
    std::string message(int ev) const override {
        switch (static_cast<errc>(ev)) {
        case errc::not_found:
            return "not found";
        case errc::exists:
            return "already exists";
        case errc::no_space:
            return "no space";
        case errc::retry:
            return "retry";
        case errc::rejected:
            return "rejected";
        case errc::bad_alignment:
            return "bad alignment";
        case errc::checksum:
            return "checksum mismatch";
        case errc::protocol:
            return "protocol error";
        case errc::closed:
            return "closed";
        case errc::wrong_shard:
            return "wrong shard";
        case errc::unauthenticated:
            return "authentication failed";
        case errc::unavailable:
            return "server unavailable";
        case errc::timed_out:
            return "timed out";
        case errc::invalid_argument:
            return "invalid argument";
        case errc::too_large:
            return "too large";
        case errc::version_mismatch:
            return "no common protocol version";
        case errc::forked:
            return "used after fork";
        case errc::internal:
            return "internal error";
        }
        return "unknown memkv error";
    }
};
} // namespace detail

inline const std::error_category& error_category() noexcept {
    static const detail::memkv_category category;
    return category;
}

} // namespace memkv

template <>
struct std::is_error_code_enum<memkv::errc> : std::true_type {};
