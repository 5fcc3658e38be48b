# SPDX-License-Identifier: Apache-2.0
# Install rules and the CMake package, so that consumers can write
#
#   find_package(memkv CONFIG REQUIRED [COMPONENTS uring rdma])
#   target_link_libraries(app PRIVATE memkv::memkv [memkv::uring] [memkv::rdma])
#
# Included at the end of the top-level CMakeLists.txt, so every target (library, optional
# components, example binaries) exists by now. The build tree is usable too: the same package
# files are written to ${PROJECT_BINARY_DIR}, so `-Dmemkv_DIR=<build dir>` works without installing.
#
# Each optional component has its own export set and targets file, loaded by memkv-config.cmake only
# when its dependencies (liburing, rdma-core) are found on the consumer's machine: a memkv built with
# io_uring stays usable where liburing-dev is absent, and `if(TARGET memkv::uring)` stays truthful.

set(MEMKV_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/memkv)

# The library and its public headers (FILE_SET HEADERS also sets the installed include directory).
install(TARGETS memkv EXPORT memkv-targets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        FILE_SET HEADERS DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
# Use a namespace because CMake gives better diagnostics for namespaced imported targets.
install(EXPORT memkv-targets NAMESPACE memkv:: DESTINATION ${MEMKV_INSTALL_CMAKEDIR})
export(EXPORT memkv-targets NAMESPACE memkv:: FILE ${PROJECT_BINARY_DIR}/memkv-targets.cmake)
# memkv links $<BUILD_INTERFACE:memkv_warnings>, which the install export drops but the build-tree
# export keeps (BUILD_LOCAL_INTERFACE needs CMake 3.26), so the build tree also exports that
# target, in a file of its own that memkv-config.cmake loads only where it exists.
if(TARGET memkv_warnings)
  export(TARGETS memkv_warnings NAMESPACE memkv::
         FILE ${PROJECT_BINARY_DIR}/memkv-build-tree-targets.cmake)
endif()

# Optional components: memkv_uring -> memkv::uring, memkv_rdma -> memkv::rdma.
set(MEMKV_PACKAGE_COMPONENTS "")
foreach(_memkv_component IN ITEMS uring rdma)
  if(TARGET memkv_${_memkv_component})
    install(TARGETS memkv_${_memkv_component} EXPORT memkv-${_memkv_component}-targets)
    install(EXPORT memkv-${_memkv_component}-targets NAMESPACE memkv::
            DESTINATION ${MEMKV_INSTALL_CMAKEDIR})
    export(EXPORT memkv-${_memkv_component}-targets NAMESPACE memkv::
           FILE ${PROJECT_BINARY_DIR}/memkv-${_memkv_component}-targets.cmake)
    list(APPEND MEMKV_PACKAGE_COMPONENTS ${_memkv_component})
  endif()
endforeach()

# A static libmemkv brings its private dependencies (OpenSSL, ISA-L, xxHash) to the consumer's link,
# so the package must find them; a shared one does not.
get_target_property(_memkv_type memkv TYPE)
if(_memkv_type STREQUAL "STATIC_LIBRARY")
  set(MEMKV_PACKAGE_STATIC TRUE)
else()
  set(MEMKV_PACKAGE_STATIC FALSE)
endif()

# Public dependencies found by CMake config packages: the consumer's find_package(memkv) must find
# them too (fmt::fmt, which src/CMakeLists.txt links PUBLIC).
get_target_property(_memkv_links memkv LINK_LIBRARIES)
if("fmt::fmt" IN_LIST _memkv_links)
  set(MEMKV_PACKAGE_NEEDS_FMT TRUE)
else()
  set(MEMKV_PACKAGE_NEEDS_FMT FALSE)
endif()
unset(_memkv_links)

# One config file serves both trees: it only refers to files next to itself.
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/memkv-config.cmake.in
                              ${PROJECT_BINARY_DIR}/memkv-config.cmake
                              INSTALL_DESTINATION ${MEMKV_INSTALL_CMAKEDIR})
# 0.x: a minor version may break the API, so only the same major.minor is compatible.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/memkv-config-version.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/memkv-config.cmake ${PROJECT_BINARY_DIR}/memkv-config-version.cmake
        DESTINATION ${MEMKV_INSTALL_CMAKEDIR})

# The example binaries (memkv-server, memkv-cli, memkv-bench), when they were built.
foreach(_memkv_program IN ITEMS memkv-server memkv-cli memkv-bench)
  if(TARGET ${_memkv_program})
    get_target_property(_memkv_aliased ${_memkv_program} ALIASED_TARGET)
    get_target_property(_memkv_type ${_memkv_program} TYPE)
    if(NOT _memkv_aliased AND _memkv_type STREQUAL "EXECUTABLE")
      install(TARGETS ${_memkv_program} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
    endif()
  endif()
endforeach()
unset(_memkv_component)
unset(_memkv_program)
unset(_memkv_aliased)
unset(_memkv_type)
