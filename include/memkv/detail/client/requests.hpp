// SPDX-License-Identifier: Apache-2.0
// client::request: the kinds of request a client connection has in flight.
#pragma once

#include <memkv/client_types.hpp>
#include <memkv/detail/client/batch_tracker.hpp>
#include <memkv/detail/client/link_stats.hpp>
#include <memkv/detail/client/payload.hpp>

#include <memory>
#include <variant>
#include <vector>

namespace memkv::detail::client {

/// The requests a connection has in flight, one kind each.
struct request_base {
    std::shared_ptr<batch> b;
    clock::time_point start, deadline;
};
struct put_request : request_base {
    operation* op = nullptr;
    outgoing_value value;
};
struct get_request : request_base {
    operation* op = nullptr;
    incoming_value value;
};
struct del_request : request_base {
    operation* op = nullptr;
};
struct exists_request : request_base {
    std::vector<operation*> ops;
};
struct stats_request : request_base {
    std::shared_ptr<stats_gather> gather;
};
using request = std::variant<put_request, get_request, del_request, exists_request, stats_request>;

} // namespace memkv::detail::client
