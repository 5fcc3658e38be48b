// SPDX-License-Identifier: Apache-2.0
// Must NOT compile: a store is not a transport (checked by the concepts_reject_bad_policies test).
#include <memkv/memkv.hpp>

int main() {
    memkv::client<memkv::memory_store>* c = nullptr;
    return c != nullptr;
}
