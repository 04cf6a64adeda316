// SubscribeBatch: the wire bytes of one SubscribeResponse, made from shared items.
//
// A SubscribeResponse is `repeated Delivery deliveries = 1`; a Delivery is
// `subscription_id = 1` and one item (event = 2, epoch_changed = 3, ended = 4). The
// batch writes those tags and lengths itself and refers to each item's bytes, which
// were serialized once for every subscriber (SharedResponse::item_bytes): a Subscribe
// stream serializes nothing per delivery and copies no payload. The bytes are exactly
// what SubscribeResponse::SerializeToString gives for the same deliveries, so clients
// parse them with the ordinary generated code.
//
//   SubscribeBatch batch;
//   batch.Add("sub-1", *event);           // event or epoch_changed
//   batch.AddEnded("sub-2", status);
//   grpc::ByteBuffer bytes = batch.Take();  // One gRPC write.
//
// Not thread-safe; one per batch being built.
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "gateway/fanout/shared_response.h"
#include "parley/v1/parley.pb.h"

namespace parley::gateway {

class SubscribeBatch {
 public:
  // A delivery of `item`'s event or epoch_changed (what a subscription writes; it never
  // writes a keepalive or a `sent`).
  void Add(absl::string_view subscription_id, const SharedResponse& item);
  // A delivery ending the subscription with `status`.
  void AddEnded(absl::string_view subscription_id, const v1::RpcStatus& status);

  size_t bytes() const { return bytes_; }
  size_t deliveries() const { return deliveries_; }
  bool empty() const { return deliveries_ == 0; }

  // The batch as one message's bytes; the batch is empty again afterwards.
  grpc::ByteBuffer Take();

 private:
  void AddItem(absl::string_view subscription_id, uint32_t field, const grpc::Slice& item);
  void FlushHead();

  std::vector<grpc::Slice> slices_;
  std::string head_;  // Tags and lengths not yet in `slices_`.
  size_t bytes_ = 0;
  size_t deliveries_ = 0;
};

// `status` as a subscription's `ended` item (the RpcStatus its trailer would carry).
v1::RpcStatus ToRpcStatus(const grpc::Status& status);

}  // namespace parley::gateway
