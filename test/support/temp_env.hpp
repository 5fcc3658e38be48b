// SPDX-License-Identifier: Apache-2.0
// Scoped test fixtures for the process environment: an environment variable and a temporary file.
#pragma once

#include "support/catch.hpp"

#include <unistd.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

namespace memkv::test {

/// Sets or unsets an environment variable for the scope, restoring the old value afterwards.
class env_guard {
public:
    env_guard(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name)) old_ = old;
        if (value)
            ::setenv(name, value, 1);
        else
            ::unsetenv(name);
    }
    ~env_guard() {
        if (old_)
            ::setenv(name_, old_->c_str(), 1);
        else
            ::unsetenv(name_);
    }
    env_guard(const env_guard&) = delete;
    env_guard& operator=(const env_guard&) = delete;

private:
    const char* name_;
    std::optional<std::string> old_;
};

/// A temporary file (in $TMPDIR, else /tmp) holding `text`, removed at scope exit.
class temp_file {
public:
    explicit temp_file(std::string_view text) {
        const char* dir = std::getenv("TMPDIR");
        path_ = std::string(dir && *dir ? dir : "/tmp") + "/memkv-test-XXXXXX";
        const int fd = ::mkstemp(path_.data());
        REQUIRE(fd >= 0);
        REQUIRE(::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
        ::close(fd);
    }
    ~temp_file() { ::unlink(path_.c_str()); }
    temp_file(const temp_file&) = delete;
    temp_file& operator=(const temp_file&) = delete;
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

} // namespace memkv::test
