# SPDX-License-Identifier: Apache-2.0
"""Conan 2 recipe for memkv, modelled on conan-center-index's recipes/fmt/all/conanfile.py.

    conan create . -o "memkv/*:with_uring=True" -o "memkv/*:with_rdma=True"

Consumers get memkv::memkv, plus memkv::uring and memkv::rdma when those options are on, from
CMakeDeps (find_package(memkv CONFIG)), matching the targets of memkv's own CMake package.
"""

import os
import re

from conan import ConanFile
from conan.errors import ConanInvalidConfiguration
from conan.tools.build import check_min_cppstd
from conan.tools.cmake import CMake, CMakeDeps, CMakeToolchain, cmake_layout
from conan.tools.env import Environment, VirtualBuildEnv
from conan.tools.files import copy, load, rmdir
from conan.tools.gnu import PkgConfigDeps
from conan.tools.scm import Version

required_conan_version = ">=2.1"


class MemkvConan(ConanFile):
    name = "memkv"
    description = "KV-cache store for LLM inference: RDMA/TCP, NVMe/file, shared-nothing"
    license = "Apache-2.0"
    topics = ("kv-cache", "llm", "inference", "rdma", "io_uring", "nvme")
    package_type = "library"

    settings = "os", "arch", "compiler", "build_type"
    options = {
        "shared": [True, False],
        "fPIC": [True, False],
        "with_uring": [True, False],
        "with_rdma": [True, False],
    }
    default_options = {
        "shared": False,
        "fPIC": True,
        "with_uring": True,
        "with_rdma": False,
    }
    # The recipe lives in the source tree: no source() download, the sources are exported with it.
    exports_sources = "CMakeLists.txt", "LICENSE", "cmake/*", "include/*", "src/*"

    @property
    def _min_cppstd(self):
        return "20"

    @property
    def _compilers_minimum_version(self):
        return {"gcc": "12", "clang": "14"}

    def set_version(self):
        # One source of truth: project(memkv VERSION x.y.z) in CMakeLists.txt.
        if not self.version:
            text = load(self, os.path.join(self.recipe_folder, "CMakeLists.txt"))
            match = re.search(r"project\(\s*memkv\s+VERSION\s+([0-9.]+)", text)
            self.version = match.group(1)

    def config_options(self):
        if self.settings.os == "Windows":
            del self.options.fPIC

    def configure(self):
        if self.options.shared:
            self.options.rm_safe("fPIC")
        if self.options.with_rdma:
            # rdma-core's recipe leaves librdmacm out by default; memkv's RDMA transport needs it.
            self.options["rdma-core"].build_librdmacm = True

    def layout(self):
        cmake_layout(self)

    def requirements(self):
        # Public: memkv links fmt::fmt PUBLIC (src/CMakeLists.txt).
        self.requires("fmt/10.2.1", transitive_headers=True)
        # Only libmemkv's own code uses these; a static libmemkv still needs them at the final link.
        self.requires("openssl/[>=3 <4]")
        self.requires("isa-l/2.31.0")
        self.requires("xxhash/0.8.2")
        if self.options.with_uring:
            self.requires("liburing/2.6", transitive_headers=True)
        if self.options.with_rdma:
            self.requires("rdma-core/52.0", transitive_headers=True)

    def build_requirements(self):
        self.tool_requires("cmake/[>=3.25 <4]")
        # memkv's CMake finds ISA-L, xxHash, liburing and rdma-core through pkg-config.
        if not self.conf.get("tools.gnu:pkg_config", default=False, check_type=str):
            self.tool_requires("pkgconf/[>=2.1 <3]")

    def validate(self):
        if self.settings.os != "Linux":
            raise ConanInvalidConfiguration(f"{self.ref} supports Linux only (io_uring, RDMA, O_DIRECT)")
        check_min_cppstd(self, self._min_cppstd)
        minimum = self._compilers_minimum_version.get(str(self.settings.compiler))
        if minimum and Version(self.settings.compiler.version) < minimum:
            raise ConanInvalidConfiguration(
                f"{self.ref} requires C++{self._min_cppstd}, which {self.settings.compiler} "
                f"{self.settings.compiler.version} does not support well enough (needs {minimum})")

    def generate(self):
        VirtualBuildEnv(self).generate()

        tc = CMakeToolchain(self)
        tc.cache_variables["MEMKV_BUILD_TESTS"] = False
        tc.cache_variables["MEMKV_BUILD_EXAMPLES"] = False
        tc.cache_variables["MEMKV_BUILD_BENCH"] = False
        tc.cache_variables["MEMKV_INSTALL"] = True
        tc.cache_variables["MEMKV_WERROR"] = False
        tc.cache_variables["MEMKV_WITH_URING"] = "ON" if self.options.with_uring else "OFF"
        tc.cache_variables["MEMKV_WITH_RDMA"] = "ON" if self.options.with_rdma else "OFF"
        tc.generate()

        CMakeDeps(self).generate()  # find_package(fmt), find_package(OpenSSL 3 COMPONENTS Crypto)

        pc = PkgConfigDeps(self)
        # The module names memkv's CMake asks pkg-config for (Debian's names).
        pc.set_property("isa-l", "pkg_config_name", "libisal")
        pc.set_property("xxhash", "pkg_config_name", "libxxhash")
        pc.generate()
        env = Environment()
        env.prepend_path("PKG_CONFIG_PATH", self.generators_folder)
        env.vars(self, scope="build").save_script("conanbuild_memkv_pkgconfig")

    def build(self):
        cmake = CMake(self)
        cmake.configure()
        cmake.build()

    def package(self):
        copy(self, "LICENSE", src=self.source_folder, dst=os.path.join(self.package_folder, "licenses"))
        cmake = CMake(self)
        cmake.install()
        # CMakeDeps generates the consumer's config files from package_info() below.
        rmdir(self, os.path.join(self.package_folder, "lib", "cmake"))
        rmdir(self, os.path.join(self.package_folder, "lib", "pkgconfig"))
        rmdir(self, os.path.join(self.package_folder, "share"))

    def package_info(self):
        self.cpp_info.set_property("cmake_file_name", "memkv")
        # As fmt does: the package's own target is its main component's target.
        self.cpp_info.set_property("cmake_target_name", "memkv::memkv")

        core = self.cpp_info.components["memkv"]
        core.set_property("cmake_target_name", "memkv::memkv")
        core.set_property("pkg_config_name", "memkv")
        core.libs = ["memkv"]
        core.requires = ["fmt::fmt", "openssl::crypto", "isa-l::isa-l", "xxhash::xxhash"]
        core.system_libs = ["pthread"]

        if self.options.with_uring:
            uring = self.cpp_info.components["uring"]
            uring.set_property("cmake_target_name", "memkv::uring")
            uring.set_property("pkg_config_name", "memkv-uring")
            uring.requires = ["memkv", "liburing::liburing"]
            uring.defines = ["MEMKV_HAS_URING=1"]
            uring.includedirs = []
            uring.libdirs = []
            uring.bindirs = []

        if self.options.with_rdma:
            rdma = self.cpp_info.components["rdma"]
            rdma.set_property("cmake_target_name", "memkv::rdma")
            rdma.set_property("pkg_config_name", "memkv-rdma")
            rdma.requires = ["memkv", "rdma-core::libibverbs", "rdma-core::librdmacm"]
            rdma.defines = ["MEMKV_HAS_RDMA=1"]
            rdma.includedirs = []
            rdma.libdirs = []
            rdma.bindirs = []
