// SharedResponse: one stream item as every stream of its session shares it.
//
// A live event is parsed once per gateway and wrapped once; each StreamEvents stream
// writes the message itself, and each Subscribe stream writes its wire bytes, which are
// serialized once, on first use, and then shared by reference (a grpc::Slice) across
// every subscription that delivers it: no per-subscriber copy or serialization.
//
//   ResponsePtr event = WrapEvent(std::move(parsed));
//   stream->OnLive(event);                        // Shared, never copied.
//   const grpc::Slice& bytes = event->item_bytes();  // Serialized on first call.
//   grpc::ByteBuffer out = StreamEventsBytes({event}, /*as_batch=*/false);
//
// Immutable once made, so thread-safe.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <vector>

#include "absl/base/call_once.h"
#include "parley/v1/parley.pb.h"

namespace parley::gateway {

class SharedResponse {
 public:
  explicit SharedResponse(v1::StreamEventsResponse message) : message_(std::move(message)) {}

  SharedResponse(const SharedResponse&) = delete;
  SharedResponse& operator=(const SharedResponse&) = delete;

  const v1::StreamEventsResponse& message() const { return message_; }

  // The serialized item — the Event, EpochChanged or Keepalive the response holds,
  // without the StreamEventsResponse around it — made once, on the first call.
  const grpc::Slice& item_bytes() const;
  // The size of the StreamEventsResponse on the wire (serializes the item if not yet).
  size_t response_size() const;

 private:
  const v1::StreamEventsResponse message_;
  mutable absl::once_flag serialize_once_;
  mutable grpc::Slice item_bytes_;
};

using ResponsePtr = std::shared_ptr<const SharedResponse>;

// `message` as the one response every stream of its session shares.
ResponsePtr Share(v1::StreamEventsResponse message);
// `event` as a shared response.
ResponsePtr WrapEvent(v1::Event event);

// The wire bytes of one StreamEventsResponse: the one item of `items`, or with
// `as_batch` a `batch` holding them all (one or more); laid out around
// each item's shared bytes, so nothing is serialized or copied per stream. The bytes are
// exactly what the generated code's serialization of the same responses gives.
grpc::ByteBuffer StreamEventsBytes(const std::vector<ResponsePtr>& items, bool as_batch);

}  // namespace parley::gateway
