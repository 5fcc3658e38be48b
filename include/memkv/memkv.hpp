// SPDX-License-Identifier: Apache-2.0
// Umbrella header: everything a user of memkv needs, and the common pairings as aliases.
#pragma once

#include <memkv/client.hpp>
#include <memkv/concepts.hpp>
#include <memkv/error.hpp>
#include <memkv/result.hpp>
#include <memkv/server.hpp>
#include <memkv/store/memory_store.hpp>
#include <memkv/transport/tcp.hpp>
#include <memkv/transport/transport_set.hpp>
#include <memkv/transport/unix.hpp>

#if defined(MEMKV_HAS_URING) // link memkv::uring
#include <memkv/store/block_store.hpp>
#include <memkv/store/file_store.hpp>
#endif

namespace memkv {

/// TCP and Unix-socket clients on one server.
using stream_transports = transport_set<tcp_transport, unix_transport>;
/// A DRAM-only server reachable over TCP and Unix sockets.
using memory_server = server<stream_transports, memory_store>;
/// A client that reaches servers over TCP ("host:port") or Unix sockets ("unix:/path").
using default_client = client<stream_transports>;

#if defined(MEMKV_HAS_URING)
/// The co-located file mode: a file store reachable over TCP and Unix sockets.
using file_server = server<stream_transports, file_store>;
/// The distributed / co-located-with-drives store over TCP and Unix sockets (RDMA: later).
using block_server = server<stream_transports, block_store>;
#endif

} // namespace memkv
