# SPDX-License-Identifier: Apache-2.0
# vcpkg port for memkv. In-tree overlay port: it builds the checkout it lives in.
#   vcpkg install memkv[uring,rdma] --overlay-ports=<memkv>/ports
# For a registry, replace SOURCE_PATH with vcpkg_from_github(OUT_SOURCE_PATH SOURCE_PATH REPO ...
# REF "v${VERSION}" SHA512 ...).
get_filename_component(SOURCE_PATH "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)

# memkv finds ISA-L, xxHash, liburing and rdma-core through their pkg-config files.
vcpkg_find_acquire_program(PKGCONFIG)

vcpkg_check_features(OUT_FEATURE_OPTIONS FEATURE_OPTIONS
    FEATURES
        uring MEMKV_WITH_URING
        rdma  MEMKV_WITH_RDMA
)

vcpkg_cmake_configure(
    SOURCE_PATH "${SOURCE_PATH}"
    OPTIONS
        ${FEATURE_OPTIONS}
        -DMEMKV_BUILD_TESTS=OFF
        -DMEMKV_BUILD_EXAMPLES=OFF
        -DMEMKV_BUILD_BENCH=OFF
        -DMEMKV_INSTALL=ON
        -DMEMKV_WERROR=OFF
        "-DPKG_CONFIG_EXECUTABLE=${PKGCONFIG}"
)

vcpkg_cmake_install()

vcpkg_cmake_config_fixup(PACKAGE_NAME memkv CONFIG_PATH lib/cmake/memkv)

file(REMOVE_RECURSE
    "${CURRENT_PACKAGES_DIR}/debug/include"
    "${CURRENT_PACKAGES_DIR}/debug/share"
)

file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")
