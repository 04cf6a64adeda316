// SharedResponse: the shared item and its bytes, serialized once (see the header).
#include "gateway/fanout/shared_response.h"

#include <cassert>
#include <string>

#include "gateway/fanout/wire_format.h"

namespace parley::gateway {

const grpc::Slice& SharedResponse::item_bytes() const {
  absl::call_once(serialize_once_, [this] {
    std::string bytes;
    switch (message_.item_case()) {
      case v1::StreamEventsResponse::kEvent:
        message_.event().SerializeToString(&bytes);
        break;
      case v1::StreamEventsResponse::kEpochChanged:
        message_.epoch_changed().SerializeToString(&bytes);
        break;
      case v1::StreamEventsResponse::kKeepalive:
        message_.keepalive().SerializeToString(&bytes);
        break;
      case v1::StreamEventsResponse::kSent:
        message_.sent().SerializeToString(&bytes);
        break;
      case v1::StreamEventsResponse::kBatch:  // Never shared: batches are laid out per write.
        message_.batch().SerializeToString(&bytes);
        break;
      case v1::StreamEventsResponse::ITEM_NOT_SET:
        break;
    }
    item_bytes_ = grpc::Slice(std::move(bytes));
  });
  return item_bytes_;
}

size_t SharedResponse::response_size() const {
  return wire::FieldSize(static_cast<uint32_t>(message_.item_case()), item_bytes().size());
}

grpc::ByteBuffer StreamEventsBytes(const std::vector<ResponsePtr>& items, bool as_batch) {
  // Field numbers in parley.proto: StreamEventsResponse's oneof cases are its field
  // numbers (event = 1 ... batch = 5), and StreamEventsBatch.items = 1.
  constexpr uint32_t kBatchField = v1::StreamEventsResponse::kBatch;
  constexpr uint32_t kItemsField = 1;
  assert(!items.empty() && (as_batch || items.size() == 1));
  std::vector<grpc::Slice> slices;
  slices.reserve(items.size() * 2 + 1);
  std::string head;
  if (as_batch) {
    size_t batch_size = 0;
    for (const ResponsePtr& item : items) {
      batch_size += wire::FieldSize(kItemsField, item->response_size());
    }
    wire::AppendFieldHead(head, kBatchField, batch_size);
  }
  for (const ResponsePtr& item : items) {
    const grpc::Slice& bytes = item->item_bytes();
    if (as_batch) wire::AppendFieldHead(head, kItemsField, item->response_size());
    wire::AppendFieldHead(head, static_cast<uint32_t>(item->message().item_case()), bytes.size());
    if (bytes.size() == 0) continue;  // An empty message field is its head alone.
    slices.emplace_back(head);
    head.clear();
    slices.push_back(bytes);  // A reference, not a copy.
  }
  if (!head.empty()) slices.emplace_back(head);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

ResponsePtr Share(v1::StreamEventsResponse message) {
  return std::make_shared<const SharedResponse>(std::move(message));
}

ResponsePtr WrapEvent(v1::Event event) {
  v1::StreamEventsResponse message;
  *message.mutable_event() = std::move(event);
  return Share(std::move(message));
}

}  // namespace parley::gateway
