// SPDX-License-Identifier: Apache-2.0
// Sizes on the command line of the example binaries: parsing (K, M, G, T suffixes) and printing.
#pragma once

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdint>
#include <iterator>
#include <string>

namespace memkv::examples {

/// A CLI11 transform for sizes: a non-negative integer with an optional K, M, G, T suffix
/// (powers of 1024; KiB, MiB, GiB and TiB also work).
inline CLI::Validator size_value() {
    return CLI::Validator(
        [inner = CLI::AsSizeValue(false)](std::string& s) -> std::string {
            const auto first = s.find_first_not_of(" \t");
            if (first != std::string::npos && s[first] == '-') return "must not be negative";
            return inner(s);
        },
        "", "SIZE");
}

/// "1 GiB", "128 MiB", "100 B": exact when a binary unit divides `n`, else like "64.0 MiB".
inline std::string human_size(std::uint64_t n) {
    constexpr const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    std::size_t u = 0;
    std::uint64_t whole = n;
    while (u + 1 < std::size(units) && whole >= 1024 && whole % 1024 == 0) {
        whole /= 1024;
        ++u;
    }
    if (whole < 1024 || u + 1 == std::size(units)) return fmt::format("{} {}", whole, units[u]);
    double v = static_cast<double>(n);
    for (u = 0; u + 1 < std::size(units) && v >= 1024; ++u)
        v /= 1024;
    return fmt::format("{:.1f} {}", v, units[u]);
}

} // namespace memkv::examples
