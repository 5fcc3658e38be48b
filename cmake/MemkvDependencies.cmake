# SPDX-License-Identifier: Apache-2.0
# Finds memkv's dependencies (Debian 12 packages; vcpkg and Conan provide the same .pc files).
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_package(OpenSSL 3 REQUIRED COMPONENTS Crypto)
find_package(fmt REQUIRED)
pkg_check_modules(libisal REQUIRED IMPORTED_TARGET libisal)
pkg_check_modules(libxxhash REQUIRED IMPORTED_TARGET libxxhash)

function(memkv_optional_pkg option var)
  if(${option} STREQUAL "OFF")
    set(${var}_FOUND FALSE PARENT_SCOPE)
    return()
  endif()
  if(${option} STREQUAL "ON")
    pkg_check_modules(${var} REQUIRED IMPORTED_TARGET GLOBAL ${ARGN})
  else()
    pkg_check_modules(${var} IMPORTED_TARGET GLOBAL ${ARGN})
  endif()
  set(${var}_FOUND ${${var}_FOUND} PARENT_SCOPE)
endfunction()

memkv_optional_pkg(${MEMKV_WITH_URING} liburing "liburing>=2.3")
memkv_optional_pkg(${MEMKV_WITH_RDMA} rdma "libibverbs;librdmacm")
message(STATUS "memkv: io_uring ${liburing_FOUND}, RDMA ${rdma_FOUND}")

if(MEMKV_BUILD_EXAMPLES)
  find_package(CLI11 REQUIRED)
endif()
