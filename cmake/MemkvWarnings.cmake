# SPDX-License-Identifier: Apache-2.0
# Warning and sanitizer flags for memkv's own targets (never imposed on consumers).
add_library(memkv_warnings INTERFACE)
target_compile_options(memkv_warnings INTERFACE -Wall -Wextra -Wpedantic
                       $<$<CXX_COMPILER_ID:GNU>:-Wshadow=local>
                       $<$<CXX_COMPILER_ID:Clang>:-Wno-gnu-zero-variadic-macro-arguments>
                       $<$<BOOL:${MEMKV_WERROR}>:-Werror>)
if(MEMKV_SANITIZE)
  string(REPLACE ";" "," _memkv_san "${MEMKV_SANITIZE}")
  add_compile_options(-fsanitize=${_memkv_san} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${_memkv_san})
endif()
