// SPDX-License-Identifier: Apache-2.0
// payload_ref: where the payload bytes of one request live on the client's side.
#pragma once

#include <cstdint>

namespace memkv::protocol {

/// A range of one request's value as a data path moves it. Over a stream transport the bytes
/// travel in the request's (or reply's) frames, so the reference is the request and a range of
/// its value (for a GET: of the range asked for); one-sided transports add where the bytes
/// are in registered client memory.
struct payload_ref {
    std::uint64_t request = 0; ///< request id on the connection
    std::uint64_t offset = 0;  ///< first byte, from the start of the value (GET: of the range)
    std::uint64_t length = 0;  ///< bytes
    /// Bytes of the whole transfer this range belongs to (a PUT's value, a GET's range).
    std::uint64_t transfer_len = 0;
};

} // namespace memkv::protocol
