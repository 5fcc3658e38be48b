// SPDX-License-Identifier: Apache-2.0
// tcp_transport: control frames and payloads on one TCP connection ("host:port").
#pragma once

#include <memkv/transport/stream_transport.hpp>

namespace memkv {

/// TCP over IPv4 or IPv6. Endpoints are "host:port", "[v6]:port" or "tcp://host:port".
/// Payloads travel inline on the stream, in chunks that interleave across requests.
struct tcp_transport
    : detail::socket_transport<tcp_transport, transport_kind::tcp, &detail::parse_inet_address> {};

static_assert(transport<tcp_transport>);

} // namespace memkv
