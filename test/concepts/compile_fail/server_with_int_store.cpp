// SPDX-License-Identifier: Apache-2.0
// Must NOT compile: int is not a store (checked by the concepts_reject_bad_policies test).
#include <memkv/memkv.hpp>

int main() {
#ifdef MEMKV_CONTROL
    memkv::server<memkv::tcp_transport, memkv::memory_store>* s = nullptr;
#else
    memkv::server<memkv::tcp_transport, int>* s = nullptr;
#endif
    return s != nullptr;
}
