// SubscribeBatch and StreamEventsBytes lay out SubscribeResponse and StreamEventsResponse
// bytes around items serialized once; a client parses them with the generated code, so
// they must be exactly what protobuf itself writes.
#include "gateway/fanout/subscribe_batch.h"

#include <gtest/gtest.h>

#include <string>

#include "common/proto_time.h"
#include "common/status.h"

namespace parley::gateway {
namespace {

std::string Bytes(grpc::ByteBuffer buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return bytes;
}

v1::Event TextEvent(uint64_t seq, std::string text) {
  v1::Event event;
  event.set_session_id("ses_1");
  event.set_seq(seq);
  event.set_epoch(3);
  event.set_turn_id("turn_1");
  *event.mutable_time() = ToTimestamp(absl::FromUnixMillis(1'700'000'000'123));
  event.mutable_text_delta()->set_text(std::move(text));
  return event;
}

// Items of the shapes a layout must get right: sizes across the one- and two-byte
// varint lengths, an empty event and an epoch change.
struct Shapes {
  ResponsePtr small = WrapEvent(TextEvent(1, "hi"));
  ResponsePtr large = WrapEvent(TextEvent(2, std::string(300, 'x')));
  ResponsePtr huge = WrapEvent(TextEvent(3, std::string(20000, 'y')));
  ResponsePtr empty = WrapEvent(v1::Event());
  ResponsePtr changed = EpochChangedResponse();

  static ResponsePtr EpochChangedResponse() {
    v1::StreamEventsResponse epoch;
    epoch.mutable_epoch_changed()->set_old_epoch(1);
    epoch.mutable_epoch_changed()->set_new_epoch(2);
    epoch.mutable_epoch_changed()->set_reason("lost");
    return Share(std::move(epoch));
  }
};

TEST(SubscribeBatch, APreSerializedBatchIsByteIdenticalToANormalSerialization) {
  // The shapes of Shapes, and an end with details.
  const Shapes shapes;
  const auto& [small, large, huge, empty, changed] = shapes;
  const v1::StreamEventsResponse& epoch = changed->message();
  absl::Status refused = absl::ResourceExhaustedError("too many");
  SetErrorInfo(refused, "TOO_MANY_SUBSCRIPTIONS", {{"limit", "2"}});
  const v1::RpcStatus ended = ToRpcStatus(ToGrpcStatus(refused));
  const std::string long_id(200, 'i');

  SubscribeBatch batch;
  batch.Add("a", *small);
  batch.Add(long_id, *large);
  batch.Add("b", *huge);
  batch.Add("a", *empty);
  batch.Add("c", *changed);
  batch.Add("", *small);
  batch.AddEnded("d", ended);
  batch.AddEnded("e", ToRpcStatus(grpc::Status::OK));
  EXPECT_EQ(batch.deliveries(), 8u);
  const size_t counted = batch.bytes();
  const std::string laid_out = Bytes(batch.Take());

  v1::SubscribeResponse expected;
  auto add = [&](const std::string& id) {
    v1::Delivery* delivery = expected.add_deliveries();
    delivery->set_subscription_id(id);
    return delivery;
  };
  *add("a")->mutable_event() = small->message().event();
  *add(long_id)->mutable_event() = large->message().event();
  *add("b")->mutable_event() = huge->message().event();
  add("a")->mutable_event();
  *add("c")->mutable_epoch_changed() = epoch.epoch_changed();
  *add("")->mutable_event() = small->message().event();
  *add("d")->mutable_ended() = ended;
  add("e")->mutable_ended();
  const std::string normal = expected.SerializeAsString();

  EXPECT_EQ(laid_out, normal);
  EXPECT_EQ(counted, normal.size());
  EXPECT_TRUE(batch.empty());
  EXPECT_EQ(batch.bytes(), 0u);
  EXPECT_EQ(ended.code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(ended.details_size(), 1);
}

TEST(SubscribeBatch, AnEventIsSerializedOnceAndItsBytesShared) {
  const ResponsePtr event = WrapEvent(TextEvent(7, std::string(1000, 'z')));
  const grpc::Slice& first = event->item_bytes();
  const grpc::Slice& again = event->item_bytes();
  EXPECT_EQ(first.begin(), again.begin());  // The same bytes, not a second copy.
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(first.begin()), first.size()),
            event->message().event().SerializeAsString());
  SubscribeBatch batch;
  for (int i = 0; i < 3; ++i) batch.Add("s", *event);
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(batch.Take().Dump(&slices).ok());
  int shared = 0;
  for (const grpc::Slice& slice : slices) shared += slice.begin() == first.begin();
  EXPECT_EQ(shared, 3);  // Each delivery refers to the one serialization.
}

TEST(StreamEventsBytes, OneResponseOrABatchIsByteIdenticalToANormalSerialization) {
  const Shapes shapes;
  const auto& [small, large, huge, empty, changed] = shapes;
  v1::StreamEventsResponse keepalive;
  *keepalive.mutable_keepalive()->mutable_time() = ToTimestamp(absl::FromUnixSeconds(1));
  const ResponsePtr alive = Share(keepalive);
  v1::StreamEventsResponse sent;
  sent.mutable_sent()->mutable_turn()->set_id("turn_9");
  const ResponsePtr acknowledged = Share(sent);

  for (const ResponsePtr& one : {small, large, huge, empty, changed, alive, acknowledged}) {
    EXPECT_EQ(Bytes(StreamEventsBytes({one}, /*as_batch=*/false)),
              one->message().SerializeAsString());
    EXPECT_EQ(one->response_size(), one->message().ByteSizeLong());
  }
  const std::vector<ResponsePtr> items = {small, large, huge, empty, changed, alive};
  v1::StreamEventsResponse expected;
  for (const ResponsePtr& item : items) {
    *expected.mutable_batch()->add_items() = item->message();
  }
  EXPECT_EQ(Bytes(StreamEventsBytes(items, /*as_batch=*/true)), expected.SerializeAsString());
  // A batch of one is still a batch.
  v1::StreamEventsResponse one;
  *one.mutable_batch()->add_items() = small->message();
  EXPECT_EQ(Bytes(StreamEventsBytes({small}, /*as_batch=*/true)), one.SerializeAsString());

  // Each item refers to its one serialization.
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(StreamEventsBytes({huge, huge}, /*as_batch=*/true).Dump(&slices).ok());
  int shared = 0;
  for (const grpc::Slice& slice : slices) shared += slice.begin() == huge->item_bytes().begin();
  EXPECT_EQ(shared, 2);
}

}  // namespace
}  // namespace parley::gateway
