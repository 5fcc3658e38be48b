// SPDX-License-Identifier: Apache-2.0
// Catch2 v2 (Debian 12) or v3, whichever is installed.
#pragma once

#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>
#endif
