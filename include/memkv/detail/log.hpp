// SPDX-License-Identifier: Apache-2.0
// Minimal structured logging to stderr: "time level message", one line per event.
#pragma once

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>

namespace memkv::detail {

template <class... A>
void log_line(const char* level, fmt::format_string<A...> f, A&&... a) {
    const auto now = std::chrono::system_clock::now();
    const auto line =
        fmt::format("{:%Y-%m-%dT%H:%M:%S}Z {} {}\n", std::chrono::floor<std::chrono::seconds>(now),
                    level, fmt::format(f, std::forward<A>(a)...));
    std::fputs(line.c_str(), stderr);
}
template <class... A>
void log_info(fmt::format_string<A...> f, A&&... a) {
    log_line("info", f, std::forward<A>(a)...);
}
template <class... A>
void log_warn(fmt::format_string<A...> f, A&&... a) {
    log_line("warn", f, std::forward<A>(a)...);
}
template <class... A>
void log_error(fmt::format_string<A...> f, A&&... a) {
    log_line("error", f, std::forward<A>(a)...);
}

} // namespace memkv::detail
