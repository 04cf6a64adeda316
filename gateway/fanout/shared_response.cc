// SharedResponse: the shared item and its bytes, serialized once (see the header).
#include "gateway/fanout/shared_response.h"

#include <string>

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
      case v1::StreamEventsResponse::ITEM_NOT_SET:
        break;
    }
    item_bytes_ = grpc::Slice(std::move(bytes));
  });
  return item_bytes_;
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
