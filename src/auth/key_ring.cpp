// SPDX-License-Identifier: Apache-2.0
// Key ring parsing (key files, MEMKV_AUTH_KEY) and the OpenSSL-backed crypto helpers.
#include <memkv/auth/key_ring.hpp>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

namespace memkv::auth {

namespace {

constexpr std::size_t max_key_file_size = std::size_t{1} << 20;

/// Sets `*why` (if given) and returns `errc::invalid_argument`.
failure invalid(std::string* why, std::string message) {
    if (why) *why = std::move(message);
    return errc::invalid_argument;
}

bool is_space(char c) noexcept {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

std::string_view trim(std::string_view s) noexcept {
    while (!s.empty() && is_space(s.front()))
        s.remove_prefix(1);
    while (!s.empty() && is_space(s.back()))
        s.remove_suffix(1);
    return s;
}

int hex_value(char c) noexcept {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/// Decodes exactly 64 hex digits into `out`; the error message never quotes the digits.
bool parse_secret(std::string_view hex, std::array<std::byte, secret_size>& out,
                  std::string& message) {
    if (hex.size() != 2 * secret_size) {
        message = "the secret must be exactly 64 hex digits (got " + std::to_string(hex.size()) +
                  " characters)";
        return false;
    }
    for (std::size_t i = 0; i < secret_size; ++i) {
        const int hi = hex_value(hex[2 * i]);
        const int lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            wipe(out);
            message = "the secret contains a character that is not a hex digit";
            return false;
        }
        out[i] = static_cast<std::byte>((hi << 4) | lo);
    }
    return true;
}

/// Parses a decimal key id in 1..2^32-1.
bool parse_id(std::string_view text, std::uint32_t& id, std::string& message) {
    std::uint32_t v = 0;
    const auto* end = text.data() + text.size();
    const auto [ptr, ec] = std::from_chars(text.data(), end, v, 10);
    if (text.empty() || ec != std::errc{} || ptr != end) {
        message = "the key id must be a decimal number in 1..4294967295";
        return false;
    }
    if (v == 0) {
        message = "key id 0 is reserved (it means \"no key\")";
        return false;
    }
    id = v;
    return true;
}

bool check_tenant(std::string_view tenant, std::string& message) {
    if (valid_tenant(tenant)) return true;
    message = "the tenant must be 1 to 64 characters of [A-Za-z0-9._-]";
    return false;
}

/// Splits `line` into whitespace-separated fields; returns how many there were (at most
/// `fields.size()` are stored).
std::size_t split_fields(std::string_view line, std::span<std::string_view> fields) noexcept {
    std::size_t n = 0;
    std::size_t i = 0;
    while (i < line.size()) {
        while (i < line.size() && is_space(line[i]))
            ++i;
        if (i == line.size()) break;
        const std::size_t start = i;
        while (i < line.size() && !is_space(line[i]))
            ++i;
        if (n < fields.size()) fields[n] = line.substr(start, i - start);
        ++n;
    }
    return n;
}

/// Reads a whole file of at most `max_key_file_size` bytes into `out`.
result<void> read_file(const std::string& path, std::string& out, std::string* why) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        if (why) *why = "cannot open key file " + path + ": " + std::strerror(err);
        return errno_code(err);
    }
    out.clear();
    char buf[4096];
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            const int err = errno;
            ::close(fd);
            OPENSSL_cleanse(buf, sizeof buf);
            if (why) *why = "cannot read key file " + path + ": " + std::strerror(err);
            return errno_code(err);
        }
        if (n == 0) break;
        if (out.size() + static_cast<std::size_t>(n) > max_key_file_size) {
            ::close(fd);
            OPENSSL_cleanse(buf, sizeof buf);
            if (why) *why = "key file " + path + " is larger than 1 MiB";
            return errc::too_large;
        }
        out.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    OPENSSL_cleanse(buf, sizeof buf);
    return {};
}

/// Wipes a string's characters (its capacity may hold more copies after reallocation; callers
/// reserve up front where that matters).
void wipe_string(std::string& s) noexcept {
    if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
    s.clear();
}

} // namespace

key_entry::~key_entry() {
    OPENSSL_cleanse(secret.data(), secret.size());
}

bool valid_tenant(std::string_view tenant) noexcept {
    if (tenant.empty() || tenant.size() > max_tenant_size) return false;
    return std::all_of(tenant.begin(), tenant.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '.' || c == '_' || c == '-';
    });
}

result<key_ring> key_ring::parse(std::string_view text, std::string* why) {
    key_ring ring;
    std::size_t line_no = 0;
    while (!text.empty()) {
        ++line_no;
        const std::size_t nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
        if (const auto hash = line.find('#'); hash != std::string_view::npos)
            line = line.substr(0, hash);

        const std::string where = "line " + std::to_string(line_no) + ": ";
        std::array<std::string_view, 3> fields;
        const std::size_t n = split_fields(line, fields);
        if (n == 0) continue;
        if (n != 3)
            return invalid(why, where + "expected \"ID TENANT HEX64\" (3 fields), got " +
                                    std::to_string(n));
        key_entry e;
        std::string message;
        if (!parse_id(fields[0], e.id, message) || !check_tenant(fields[1], message) ||
            !parse_secret(fields[2], e.secret, message))
            return invalid(why, where + message);
        if (ring.find(e.id) != nullptr)
            return invalid(why, where + "duplicate key id " + std::to_string(e.id));
        e.tenant.assign(fields[1]);
        if (auto r = ring.add(e); !r) return invalid(why, where + "invalid entry");
    }
    return ring;
}

result<key_ring> key_ring::from_file(const std::string& path, std::string* why) {
    std::string text;
    text.reserve(max_key_file_size + 4096);
    if (auto r = read_file(path, text, why); !r) {
        wipe_string(text);
        return r.error();
    }
    auto ring = parse(text, why);
    wipe_string(text);
    if (!ring && why) *why = path + ": " + *why;
    return ring;
}

result<key_entry> key_ring::parse_key_spec(std::string_view spec, std::string* why) {
    spec = trim(spec);
    std::array<std::string_view, 3> parts;
    std::size_t n = 0;
    for (;;) {
        const std::size_t colon = spec.find(':');
        if (n == parts.size())
            return invalid(why, "expected HEX64, ID:HEX64 or ID:TENANT:HEX64 (too many ':')");
        parts[n++] = spec.substr(0, colon);
        if (colon == std::string_view::npos) break;
        spec.remove_prefix(colon + 1);
    }
    key_entry e;
    std::string message;
    const std::string_view hex = parts[n - 1];
    if (n == 1) {
        e.id = 1;
    } else if (!parse_id(parts[0], e.id, message)) {
        return invalid(why, message);
    }
    if (n == 3) {
        if (!check_tenant(parts[1], message)) return invalid(why, message);
        e.tenant.assign(parts[1]);
    }
    if (!parse_secret(hex, e.secret, message)) return invalid(why, message);
    return e;
}

result<key_ring> key_ring::from_environment(std::string* why) {
    key_ring ring;
    const char* spec = std::getenv("MEMKV_AUTH_KEY");
    const char* file = std::getenv("MEMKV_AUTH_KEY_FILE");
    if (file != nullptr && *file != '\0') {
        auto r = from_file(file, why);
        if (!r) {
            if (why) *why = "MEMKV_AUTH_KEY_FILE: " + *why;
            return r.error();
        }
        ring = std::move(*r);
    }
    if (spec != nullptr && *spec != '\0') {
        auto e = parse_key_spec(spec, why);
        if (!e) {
            if (why) *why = "MEMKV_AUTH_KEY: " + *why;
            return e.error();
        }
        if (ring.find(e->id) != nullptr)
            return invalid(why, "MEMKV_AUTH_KEY: key id " + std::to_string(e->id) +
                                    " is also in MEMKV_AUTH_KEY_FILE");
        MEMKV_TRY(ring.add(*e));
    }
    return ring;
}

result<void> key_ring::add(key_entry e) {
    if (e.id == 0 || find(e.id) != nullptr || !valid_tenant(e.tenant))
        return errc::invalid_argument;
    // Grow by hand so that the old buffer's copies of the secrets are wiped (key_entry has no
    // move constructor; its destructor wipes), never left behind in freed memory.
    if (entries_.size() == entries_.capacity()) {
        std::vector<key_entry> grown;
        grown.reserve(std::max<std::size_t>(4, 2 * entries_.size()));
        grown.insert(grown.end(), entries_.begin(), entries_.end());
        entries_.swap(grown);
    }
    entries_.push_back(e);
    return {};
}

const key_entry* key_ring::find(std::uint32_t id) const noexcept {
    for (const auto& e : entries_)
        if (e.id == id) return &e;
    return nullptr;
}

result<void> random_bytes(std::span<std::byte> out) noexcept {
    auto* p = reinterpret_cast<unsigned char*>(out.data());
    std::size_t n = out.size();
    while (n > 0) {
        const std::size_t chunk = std::min<std::size_t>(n, INT_MAX);
        if (RAND_bytes(p, static_cast<int>(chunk)) != 1) {
            ERR_clear_error();
            return errc::internal;
        }
        p += chunk;
        n -= chunk;
    }
    return {};
}

bool equal_constant_time(std::span<const std::byte> a, std::span<const std::byte> b) noexcept {
    if (a.size() != b.size()) return false;
    if (a.empty()) return true;
    return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

void wipe(std::span<std::byte> bytes) noexcept {
    if (!bytes.empty()) OPENSSL_cleanse(bytes.data(), bytes.size());
}

} // namespace memkv::auth
