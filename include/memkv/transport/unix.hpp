// SPDX-License-Identifier: Apache-2.0
// unix_transport: the TCP wire protocol over a Unix stream socket, for same-host clients.
#pragma once

#include <memkv/transport/stream_transport.hpp>

namespace memkv {

/// A Unix stream socket ("unix:/path", or "unix:@name" in the abstract namespace). Same frames
/// and inline payloads as tcp_transport; the control channel of the future shm transport.
struct unix_transport : detail::socket_transport<unix_transport, transport_kind::unix_socket,
                                                 &detail::parse_unix_address> {};

static_assert(transport<unix_transport>);

} // namespace memkv
