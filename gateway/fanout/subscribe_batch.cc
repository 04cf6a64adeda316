// SubscribeBatch: protobuf's wire format for SubscribeResponse, written by hand around
// shared item bytes (see the header).
#include "gateway/fanout/subscribe_batch.h"

#include "gateway/fanout/wire_format.h"

namespace parley::gateway {
namespace {

using wire::AppendFieldHead;
using wire::FieldSize;

// Field numbers of SubscribeResponse and Delivery (parley.proto).
constexpr uint32_t kDeliveriesField = 1;
constexpr uint32_t kSubscriptionIdField = 1;
constexpr uint32_t kEventField = 2;
constexpr uint32_t kEpochChangedField = 3;
constexpr uint32_t kEndedField = 4;

}  // namespace

void SubscribeBatch::Add(absl::string_view subscription_id, const SharedResponse& item) {
  const uint32_t field = item.message().has_epoch_changed() ? kEpochChangedField : kEventField;
  AddItem(subscription_id, field, item.item_bytes());
}

void SubscribeBatch::AddEnded(absl::string_view subscription_id, const v1::RpcStatus& status) {
  AddItem(subscription_id, kEndedField, grpc::Slice(status.SerializeAsString()));
}

void SubscribeBatch::AddItem(absl::string_view subscription_id, uint32_t field,
                             const grpc::Slice& item) {
  // proto3 leaves an empty string out; a message field is written even when empty.
  const size_t id_size =
      subscription_id.empty() ? 0 : FieldSize(kSubscriptionIdField, subscription_id.size());
  const size_t delivery_size = id_size + FieldSize(field, item.size());
  const size_t before = head_.size();
  AppendFieldHead(head_, kDeliveriesField, delivery_size);
  if (!subscription_id.empty()) {
    AppendFieldHead(head_, kSubscriptionIdField, subscription_id.size());
    head_.append(subscription_id.data(), subscription_id.size());
  }
  AppendFieldHead(head_, field, item.size());
  bytes_ += head_.size() - before + item.size();
  ++deliveries_;
  if (item.size() == 0) return;
  FlushHead();
  slices_.push_back(item);  // A reference, not a copy.
}

void SubscribeBatch::FlushHead() {
  if (head_.empty()) return;
  slices_.emplace_back(head_);
  head_.clear();
}

grpc::ByteBuffer SubscribeBatch::Take() {
  FlushHead();
  grpc::ByteBuffer buffer(slices_.data(), slices_.size());
  slices_.clear();
  bytes_ = 0;
  deliveries_ = 0;
  return buffer;
}

v1::RpcStatus ToRpcStatus(const grpc::Status& status) {
  v1::RpcStatus rpc_status;
  // A Parley error carries its RpcStatus whole (details included) in error_details.
  if (!status.error_details().empty() && rpc_status.ParseFromString(status.error_details())) {
    return rpc_status;
  }
  rpc_status.Clear();
  rpc_status.set_code(static_cast<int32_t>(status.error_code()));
  rpc_status.set_message(status.error_message());
  return rpc_status;
}

}  // namespace parley::gateway
