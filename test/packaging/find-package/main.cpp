// SPDX-License-Identifier: Apache-2.0
// Consumer of the installed memkv package: includes the public headers and uses result<T>.
#include <memkv/error.hpp>
#include <memkv/result.hpp>

#if __has_include(<memkv/memkv.hpp>)
#include <memkv/memkv.hpp>
#define MEMKV_CONSUMER_UMBRELLA 1
#else
#define MEMKV_CONSUMER_UMBRELLA 0
#endif

#include <cstdio>
#include <string_view>

#if defined(MEMKV_CONSUMER_EXPECT_URING) && !defined(MEMKV_HAS_URING)
#error "memkv::uring must define MEMKV_HAS_URING"
#endif
#if defined(MEMKV_CONSUMER_EXPECT_RDMA) && !defined(MEMKV_HAS_RDMA)
#error "memkv::rdma must define MEMKV_HAS_RDMA"
#endif

namespace {

memkv::result<int> half(int v) {
    if (v % 2 != 0) return memkv::errc::invalid_argument;
    return v / 2;
}

memkv::result<int> quarter(int v) {
    return half(v).and_then([](int h) { return half(h); });
}

} // namespace

int main() {
    const auto ok = quarter(84);
    const auto bad = quarter(42); // 42 / 2 = 21, which is odd
    if (!ok || *ok != 21) {
        std::fprintf(stderr, "memkv consumer: quarter(84) should be 21\n");
        return 1;
    }
    if (bad || bad.error() != memkv::errc::invalid_argument ||
        bad.error().category().name() != std::string_view("memkv")) {
        std::fprintf(stderr, "memkv consumer: quarter(42) should fail with invalid_argument\n");
        return 1;
    }
    std::printf("memkv consumer: quarter(84) = %d; quarter(42) -> %s: %s; umbrella header: %s\n",
                *ok, bad.error().category().name(), bad.error().message().c_str(),
                MEMKV_CONSUMER_UMBRELLA ? "yes" : "absent");
    return 0;
}
