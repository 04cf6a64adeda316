// StreamEvents with batch: what queues while a write is in flight goes out in the next
// one, a response that finds no write in flight waits out the requested delay unless a
// batch fills first, a batch stops at the byte limit, and a client that did not ask for
// batches never gets one. The delay is checked on the hub's FakeClock with a writer that
// holds each write until the test completes it; the rest through a real gateway.
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gateway/fanout/subscriber_stream.h"
#include "tests/fanout/fanout_fixture.h"

namespace parley::gateway::testing {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// A StreamWriter that holds each write until the test completes it, as a slow network
// would: whatever queues meanwhile must wait for the next write.
class HeldStreamWriter final : public StreamWriter {
 public:
  struct Written {
    std::vector<uint64_t> seqs;  // Of the events, in order.
    size_t bytes = 0;            // The responses' wire sizes.
  };

  void Write(const std::vector<ResponsePtr>& batch) override {
    Written written;
    for (const ResponsePtr& response : batch) {
      if (response->message().has_event()) {
        written.seqs.push_back(response->message().event().seq());
      }
      written.bytes += response->response_size();
    }
    held_.Record(std::move(written));
  }
  void FinishStream(const grpc::Status& status) override {}

  bool AwaitWrite() { return held_.AwaitWrite(); }
  void Complete(SubscriberStream& stream) {
    held_.End();
    stream.OnWriteDone(true);
  }
  std::vector<Written> writes() { return held_.writes(); }

 private:
  HeldWrites<Written> held_;
};

// The hub on a FakeClock with no ticker or timer thread: the test moves time and runs
// the timers.
class WindowedStreamEvents : public FanoutFixture {
 protected:
  static constexpr size_t kMaxBatchBytes = 4096;
  HubOptions Options() override {
    HubOptions options;
    options.clock = &clock_;
    options.tick_interval = absl::ZeroDuration();
    options.stream.max_batch_bytes = kMaxBatchBytes;
    options.stream.max_buffered = kMaxBuffered;
    return options;
  }
  static constexpr int kMaxBuffered = 16;
  std::shared_ptr<SubscriberStream> Open(const std::string& session, HeldStreamWriter& writer) {
    StreamParams params;
    params.tenant_id = kTenant;
    params.session_id = session;
    params.batch = true;
    params.batch_delay = absl::Milliseconds(10);
    auto stream = std::make_shared<SubscriberStream>(*hub_, &writer, params);
    hub_->Open(stream);
    return stream;
  }
  bool AwaitWaiting(const SubscriberStream& stream, size_t n) {
    return Eventually([&] { return stream.waiting_responses() >= n; });
  }
  FakeClock clock_;
};

TEST_F(WindowedStreamEvents, ResponsesWaitOutTheDelayUnlessABatchFillsAndBatchesStopAtTheLimit) {
  const std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(writer->PublishNext().ok());
  HeldStreamWriter held;
  std::shared_ptr<SubscriberStream> stream = Open(session, held);

  // The backfill queues all five with no write in flight: they wait for the delay,
  // which only this clock ends.
  ASSERT_TRUE(AwaitWaiting(*stream, 5));
  clock_.Advance(absl::Milliseconds(9));
  hub_->RunTimersOnce();
  EXPECT_THAT(held.writes(), IsEmpty());
  clock_.Advance(absl::Milliseconds(1));
  hub_->RunTimersOnce();
  ASSERT_TRUE(held.AwaitWrite());
  EXPECT_THAT(held.writes().back().seqs, ElementsAreArray(Range(1, 5)));  // One write.

  // What queues while a write is in flight goes as soon as it completes, clock or not.
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(writer->PublishNext().ok());
  ASSERT_TRUE(AwaitWaiting(*stream, 3));
  held.Complete(*stream);
  ASSERT_TRUE(held.AwaitWrite());
  EXPECT_THAT(held.writes().back().seqs, ElementsAreArray(Range(6, 8)));
  held.Complete(*stream);

  // A batch's worth goes at once, delay or not: the first of two half-batch events
  // waits, the second fills the batch.
  ASSERT_TRUE(writer->PublishNext(std::string(kMaxBatchBytes / 2, 'x')).ok());
  ASSERT_TRUE(AwaitWaiting(*stream, 1));
  EXPECT_EQ(held.writes().size(), 2u);
  ASSERT_TRUE(writer->PublishNext(std::string(kMaxBatchBytes / 2, 'y')).ok());
  ASSERT_TRUE(held.AwaitWrite());
  EXPECT_THAT(held.writes().back().seqs, ElementsAreArray(Range(9, 10)));
  EXPECT_GE(held.writes().back().bytes, kMaxBatchBytes);

  // Six third-of-a-batch events queued behind a write go out in writes that stop at
  // the first event reaching the limit, in order.
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(writer->PublishNext(std::string(kMaxBatchBytes / 3, 'z')).ok());
  }
  ASSERT_TRUE(AwaitWaiting(*stream, 6));
  const size_t before = held.writes().size();
  std::vector<uint64_t> seqs;
  while (seqs.size() < 6) {
    held.Complete(*stream);
    ASSERT_TRUE(held.AwaitWrite()) << "stalled after " << seqs.size();
    const HeldStreamWriter::Written written = held.writes().back();
    seqs.insert(seqs.end(), written.seqs.begin(), written.seqs.end());
    EXPECT_LT(written.bytes, kMaxBatchBytes + kMaxBatchBytes / 3 + 64);
  }
  EXPECT_THAT(seqs, ElementsAreArray(Range(11, 16)));
  EXPECT_EQ(held.writes().size() - before, 2u);  // Three and three.

  // Half the buffer waiting ends the delay too, however small: a client that keeps up
  // is never cut for what the window held back.
  held.Complete(*stream);
  for (int i = 0; i < kMaxBuffered / 2; ++i) ASSERT_TRUE(writer->PublishNext().ok());
  ASSERT_TRUE(held.AwaitWrite());
  EXPECT_THAT(held.writes().back().seqs, ElementsAreArray(Range(17, 16 + kMaxBuffered / 2)));
  EXPECT_EQ(SlowConsumersCut(), 0);

  // A timer that fired when its window was over writes even should the clock read
  // earlier again afterwards (a wall clock stepped back): no other timer would come.
  held.Complete(*stream);
  ASSERT_TRUE(writer->PublishNext().ok());
  ASSERT_TRUE(AwaitWaiting(*stream, 1));
  stream->OnTimer(clock_.Now() + absl::Milliseconds(10));  // The clock still reads before.
  ASSERT_TRUE(held.AwaitWrite());
  EXPECT_THAT(held.writes().back().seqs, ElementsAreArray({17u + kMaxBuffered / 2}));
  stream->Detach();
  hub_->Unregister(stream.get());
}

class BatchedStreamEvents : public FanoutFixture {};

v1::StreamEventsRequest From(const std::string& session) {
  v1::StreamEventsRequest request;
  request.set_session_id(session);
  return request;
}

TEST_F(BatchedStreamEvents, AClientThatAsksGetsBatchesInOrderAndOthersNeverSeeOne) {
  constexpr int kBackfilled = 200;
  constexpr int kLive = 100;
  const std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  for (int i = 0; i < kBackfilled; ++i) ASSERT_TRUE(writer->PublishNext().ok());
  auto client = NewClient();

  v1::StreamEventsRequest batched = From(session);
  batched.set_batch(true);
  batched.set_max_batch_delay_ms(20);
  StreamReader batch_reader(*client, batched);
  StreamReader plain_reader(*client, From(session));

  std::vector<uint64_t> batched_seqs;
  int batch_responses = 0;
  size_t largest_batch = 0;
  auto read_batched = [&](size_t until) {
    v1::StreamEventsResponse response;
    while (batched_seqs.size() < until && batch_reader.reader->Read(&response)) {
      ASSERT_TRUE(response.has_batch()) << response.ShortDebugString();
      ++batch_responses;
      largest_batch = std::max<size_t>(largest_batch, response.batch().items_size());
      for (const v1::StreamEventsResponse& item : response.batch().items()) {
        ASSERT_FALSE(item.has_batch() || item.has_sent());
        if (item.has_event()) batched_seqs.push_back(item.event().seq());
      }
    }
  };
  read_batched(kBackfilled);
  // The backfill queues its whole read before the delay ends: it cannot go one by one.
  EXPECT_GT(largest_batch, 1u);

  for (int i = 0; i < kLive; ++i) ASSERT_TRUE(writer->PublishNext().ok());
  read_batched(kBackfilled + kLive);
  EXPECT_THAT(batched_seqs, ElementsAreArray(Range(1, kBackfilled + kLive)));
  EXPECT_LT(batch_responses, kBackfilled + kLive);

  // The client that did not ask reads one event per response, as before.
  std::vector<uint64_t> plain_seqs;
  v1::StreamEventsResponse response;
  while (plain_seqs.size() < kBackfilled + kLive && plain_reader.reader->Read(&response)) {
    ASSERT_FALSE(response.has_batch());
    if (response.has_event()) plain_seqs.push_back(response.event().seq());
  }
  EXPECT_THAT(plain_seqs, ElementsAreArray(Range(1, kBackfilled + kLive)));
}

TEST_F(BatchedStreamEvents, UntilTurnEndEndsWithOkRightAfterTheBatchHoldingTheSeal) {
  const std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(writer->PublishNext().ok());
  ASSERT_TRUE(writer->Seal("turn_1").ok());
  ASSERT_TRUE(writer->PublishNext().ok());  // After the turn: never delivered.
  auto client = NewClient();
  v1::StreamEventsRequest request = From(session);
  request.set_batch(true);
  request.set_max_batch_delay_ms(5);
  request.set_until_turn_end(true);
  StreamReader reader(*client, request);
  std::vector<uint64_t> seqs;
  bool sealed_last = false;
  v1::StreamEventsResponse response;
  while (reader.reader->Read(&response)) {
    ASSERT_TRUE(response.has_batch());
    for (const v1::StreamEventsResponse& item : response.batch().items()) {
      if (!item.has_event()) continue;
      seqs.push_back(item.event().seq());
      sealed_last = item.event().has_turn_sealed();
    }
  }
  const grpc::Status status = reader.reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(seqs, ElementsAreArray(Range(1, 4)));
  EXPECT_TRUE(sealed_last);
}

TEST_F(BatchedStreamEvents, BadBatchOptionsAreRefusedNamingTheField) {
  const std::string session = CreateSession();
  auto client = NewClient();
  struct Case {
    std::string name;
    v1::StreamEventsRequest request;
    std::string expected;
  };
  std::vector<Case> cases;
  cases.push_back({"delay without batch", From(session), "max_batch_delay_ms"});
  cases.back().request.set_max_batch_delay_ms(5);
  cases.push_back({"delay over the limit", From(session), "max_batch_delay_ms"});
  cases.back().request.set_batch(true);
  cases.back().request.set_max_batch_delay_ms(1001);
  for (const Case& c : cases) {
    StreamReader reader(*client, c.request);
    EXPECT_THAT(reader.ReadEvents(1), IsEmpty()) << c.name;
    grpc::Status status = reader.reader->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_THAT(status.error_message(), HasSubstr(c.expected)) << c.name;
  }

  // A Subscribe stream batches anyway: a subscription asking for it is refused alone.
  SubscribeClient mux(*client);
  v1::StreamEventsRequest asks = From(session);
  asks.set_batch(true);
  ASSERT_TRUE(mux.Add("asks", asks));
  ASSERT_TRUE(mux.ReadUntil([](const auto& r) { return r.ended.contains("asks"); }));
  EXPECT_EQ(mux.received.ended.at("asks").code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(mux.received.ended.at("asks").message(), HasSubstr("add.request.batch"));
}

class RawStreams : public FanoutFixture {};

// The stream methods parse their own requests (they are raw, to write shared bytes):
// bytes that are no request get a clear INVALID_ARGUMENT, and nothing is opened.
TEST_F(RawStreams, BytesThatAreNoRequestAreInvalidArgumentForEveryStreamMethod) {
  grpc::GenericStub stub(grpc::CreateChannel(gateway_target(), grpc::InsecureChannelCredentials()));
  // Field 1, length-delimited, with a length whose varint never ends.
  const std::string garbage("\x0a\xff\xff\xff", 4);
  for (const char* method : {kStreamEventsMethod, kSendMessageAndStreamMethod}) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", std::string("Bearer ") + kApiKey);
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    grpc::Slice slice(garbage);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    absl::Notification done;
    grpc::Status status;
    stub.UnaryCall(&context, method, grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
      status = std::move(s);
      done.Notify();
    });
    ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30))) << method;
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_THAT(status.error_message(), HasSubstr("request")) << method;
  }
  EXPECT_EQ(hub_->channel_count(), 0u);
}

}  // namespace
}  // namespace parley::gateway::testing
