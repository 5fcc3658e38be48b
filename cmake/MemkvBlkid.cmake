# SPDX-License-Identifier: Apache-2.0
# libblkid for block_store's signature check (refuse a device that carries a filesystem, a
# partition table or another signature). Included from src/CMakeLists.txt after memkv_uring is
# defined: when both liburing and libblkid are found, memkv::uring links libblkid and defines
# MEMKV_HAS_BLKID=1. Without libblkid, block_store refuses every device unless told to format it.
if(TARGET memkv_uring)
  pkg_check_modules(blkid IMPORTED_TARGET GLOBAL blkid)
  if(blkid_FOUND)
    target_link_libraries(memkv_uring INTERFACE PkgConfig::blkid)
    target_compile_definitions(memkv_uring INTERFACE MEMKV_HAS_BLKID=1)
  endif()
  message(STATUS "memkv: libblkid ${blkid_FOUND} (block_store signature check)")
endif()
