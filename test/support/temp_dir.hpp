// SPDX-License-Identifier: Apache-2.0
// temp_dir: a scratch directory for a test's files, removed with its contents on destruction.
#pragma once

#include "support/catch.hpp"
#include "support/loop_device.hpp"

#include <stdlib.h>

#include <cerrno>
#include <filesystem>
#include <string>

namespace memkv::test {

/// A fresh directory `<test_dir_base()>/<prefix>-XXXXXX`, removed with everything in it when
/// the object goes (the test fails when it cannot be made).
class temp_dir {
public:
    explicit temp_dir(const std::string& prefix = "memkv-test") {
        std::string tmpl = test_dir_base() + "/" + prefix + "-XXXXXX";
        if (::mkdtemp(tmpl.data()) == nullptr) FAIL("mkdtemp " << tmpl << ": " << errno);
        path_ = tmpl;
    }
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;

    /// A path for file `name` in the directory.
    std::string file(const std::string& name) const { return path_ + "/" + name; }
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

} // namespace memkv::test
