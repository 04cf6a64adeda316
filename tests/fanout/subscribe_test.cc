// Subscribe: many sessions over one stream, through the hub, against real Redis and a
// real store. Each subscription must behave as a StreamEvents call would; these tests
// check what is Subscribe's own — ends that do not end the stream, limits, batches,
// one keepalive per stream.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "gateway/fanout/mux_stream.h"
#include "tests/fanout/fanout_fixture.h"

namespace parley::gateway::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

v1::StreamEventsRequest After(const std::string& session, uint64_t after_seq) {
  v1::StreamEventsRequest request;
  request.set_session_id(session);
  request.set_after_seq(after_seq);
  return request;
}

std::string ReasonOf(const v1::RpcStatus& status) {
  for (const google::protobuf::Any& any : status.details()) {
    v1::ErrorInfo info;
    if (any.UnpackTo(&info)) return info.reason();
  }
  return "";
}

class Subscribe : public FanoutFixture {};

TEST_F(Subscribe, ManySessionsOverOneStreamEachGetHistoryThenLiveInOrder) {
  std::vector<std::string> sessions;
  std::vector<std::unique_ptr<Writer>> writers;
  for (int i = 0; i < 3; ++i) {
    sessions.push_back(CreateSession());
    writers.push_back(NewWriter(sessions.back(), 1));
    for (int seq = 0; seq < 5 + i; ++seq) ASSERT_TRUE(writers.back()->PublishNext().ok());
  }
  auto client = NewClient();
  SubscribeClient stream(*client);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(stream.Add(absl::StrCat("s", i), After(sessions[i], 0)));
  ASSERT_TRUE(stream.ReadUntil([](const SubscribeClient::Received& r) {
    return r.events.size() == 3 && r.events.at("s0").size() >= 5 && r.events.at("s1").size() >= 6 &&
           r.events.at("s2").size() >= 7;
  }));
  for (int i = 0; i < 3; ++i) {
    for (int more = 0; more < 4; ++more) ASSERT_TRUE(writers[i]->PublishNext().ok());
  }
  for (int i = 0; i < 3; ++i) {
    const std::string id = absl::StrCat("s", i);
    ASSERT_TRUE(stream.ReadEventsOf(id, 9 + i));
    EXPECT_THAT(Seqs(stream.received.events[id]), ElementsAreArray(Range(1, 9 + i))) << id;
    for (const v1::Event& event : stream.received.events[id]) {
      EXPECT_EQ(event.session_id(), sessions[i]);
    }
  }
  EXPECT_THAT(stream.received.ended, IsEmpty());
  // One Redis subscription per session, whatever the number of viewers.
  EXPECT_EQ(hub_->channel_count(), 3u);
}

TEST_F(Subscribe, AnotherTenantsSessionIsRefusedAndTheOthersKeepReceiving) {
  const std::string mine = CreateSession();
  const std::string theirs = CreateSession("tenant_b");
  auto writer = NewWriter(mine, 1);
  ASSERT_TRUE(writer->PublishNext().ok());
  auto client = NewClient();
  SubscribeClient stream(*client);
  ASSERT_TRUE(stream.Add("mine", After(mine, 0)));
  ASSERT_TRUE(stream.Add("theirs", After(theirs, 0)));
  ASSERT_TRUE(stream.ReadUntil([](const SubscribeClient::Received& r) {
    return r.ended.contains("theirs") && r.events.contains("mine");
  }));
  EXPECT_EQ(stream.received.ended["theirs"].code(), grpc::StatusCode::NOT_FOUND);
  // Refused before anything was subscribed for it.
  EXPECT_EQ(hub_->channel_count(), 1u);
  ASSERT_TRUE(writer->PublishNext().ok());
  ASSERT_TRUE(stream.ReadEventsOf("mine", 2));
  EXPECT_THAT(Seqs(stream.received.events["mine"]), ElementsAre(1u, 2u));
  EXPECT_FALSE(stream.received.ended.contains("mine"));
}

TEST_F(Subscribe, AMalformedOrDuplicateAddIsRefusedAlone) {
  const std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  ASSERT_TRUE(writer->PublishNext().ok());
  auto client = NewClient();
  SubscribeClient stream(*client);
  ASSERT_TRUE(stream.Add("a", After(session, 0)));
  ASSERT_TRUE(stream.ReadEventsOf("a", 1));
  ASSERT_TRUE(stream.Add("a", After(session, 0)));                   // Open already.
  ASSERT_TRUE(stream.Add("no-session", v1::StreamEventsRequest()));  // No session id.
  ASSERT_TRUE(stream.Add(std::string(129, 'x'), After(session, 0)));
  ASSERT_TRUE(
      stream.ReadUntil([](const SubscribeClient::Received& r) { return r.ended.size() == 3; }));
  EXPECT_EQ(stream.received.ended["a"].code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(stream.received.ended["no-session"].code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(stream.received.ended[std::string(129, 'x')].code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // The first "a" is untouched by the refused duplicate.
  stream.received.ended.clear();
  ASSERT_TRUE(writer->PublishNext().ok());
  ASSERT_TRUE(stream.ReadEventsOf("a", 2));
  EXPECT_THAT(Seqs(stream.received.events["a"]), ElementsAre(1u, 2u));
  EXPECT_THAT(stream.received.ended, IsEmpty());
}

TEST_F(Subscribe, RemovingEndsThatSubscriptionOnlyAndItsIdCanBeUsedAgain) {
  const std::string first = CreateSession();
  const std::string second = CreateSession();
  auto first_writer = NewWriter(first, 1);
  auto second_writer = NewWriter(second, 1);
  ASSERT_TRUE(first_writer->PublishNext().ok());
  ASSERT_TRUE(second_writer->PublishNext().ok());
  auto client = NewClient();
  SubscribeClient stream(*client);
  ASSERT_TRUE(stream.Add("x", After(first, 0)));
  ASSERT_TRUE(stream.Add("y", After(second, 0)));
  ASSERT_TRUE(stream.ReadEventsOf("x", 1));
  ASSERT_TRUE(stream.ReadEventsOf("y", 1));
  ASSERT_TRUE(stream.Remove("x"));
  ASSERT_TRUE(stream.ReadUntil([](const auto& r) { return r.ended.contains("x"); }));
  EXPECT_EQ(stream.received.ended["x"].code(), grpc::StatusCode::CANCELLED);
  // The last viewer of the first session left: its channel is gone.
  EXPECT_TRUE(Eventually([&] { return hub_->channel_count() == 1; }));
  // "x" again, now for the second session, resuming after what "y" has.
  stream.received.ended.clear();
  ASSERT_TRUE(stream.Add("x", After(second, 1)));
  ASSERT_TRUE(second_writer->PublishNext().ok());
  ASSERT_TRUE(stream.ReadEventsOf("y", 2));
  ASSERT_TRUE(stream.ReadUntil(
      [](const SubscribeClient::Received& r) { return r.events.at("x").size() >= 2; }));
  EXPECT_THAT(Seqs(stream.received.events["x"]), ElementsAre(1u, 2u));
  EXPECT_EQ(stream.received.events["x"][1].session_id(), second);
  EXPECT_THAT(Seqs(stream.received.events["y"]), ElementsAre(1u, 2u));
  EXPECT_THAT(stream.received.ended, IsEmpty());
}

TEST_F(Subscribe, UntilTurnEndEndsTheSubscriptionWithOkAndAHalfClosedStreamEndsWithTheLast) {
  const std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  ASSERT_TRUE(writer->PublishNext().ok());
  auto client = NewClient();
  SubscribeClient stream(*client);
  v1::StreamEventsRequest request = After(session, 0);
  request.set_until_turn_end(true);
  ASSERT_TRUE(stream.Add("turn", request));
  ASSERT_TRUE(stream.ReadEventsOf("turn", 1));
  ASSERT_TRUE(stream.stream->WritesDone());  // Nothing more to add: ends with the last.
  ASSERT_TRUE(writer->Seal("turn_1").ok());
  EXPECT_FALSE(stream.ReadUntil([](const auto&) { return false; }));  // To its end.
  EXPECT_EQ(stream.received.ended["turn"].code(), grpc::StatusCode::OK);
  EXPECT_THAT(Seqs(stream.received.events["turn"]), ElementsAre(1u, 2u));
  EXPECT_TRUE(stream.received.events["turn"].back().has_turn_sealed());
  EXPECT_TRUE(stream.stream->Finish().ok());
}

TEST_F(Subscribe, NoKeyIsUnauthenticatedForTheWholeStream) {
  auto client = NewClient();
  SubscribeClient stream(*client, /*api_key=*/nullptr);
  EXPECT_FALSE(stream.ReadUntil([](const auto&) { return false; }));
  EXPECT_EQ(stream.stream->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

class LimitedSubscribe : public FanoutFixture {
 protected:
  HubOptions Options() override {
    HubOptions options;
    options.max_subscriptions_per_stream = 2;
    options.max_subscriptions_per_tenant = 3;
    return options;
  }
};

TEST_F(LimitedSubscribe, AStreamOrTenantLimitRefusesThatSubscriptionAndTheRestGoOn) {
  const std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  ASSERT_TRUE(writer->PublishNext().ok());
  auto client = NewClient();
  SubscribeClient one(*client);
  SubscribeClient two(*client);
  ASSERT_TRUE(one.Add("a", After(session, 0)));
  ASSERT_TRUE(one.Add("b", After(session, 0)));
  ASSERT_TRUE(one.Add("c", After(session, 0)));  // The stream's third.
  ASSERT_TRUE(one.ReadUntil([](const SubscribeClient::Received& r) {
    return r.ended.contains("c") && r.events.contains("a") && r.events.contains("b");
  }));
  EXPECT_EQ(one.received.ended["c"].code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(ReasonOf(one.received.ended["c"]), "TOO_MANY_SUBSCRIPTIONS");
  ASSERT_TRUE(two.Add("d", After(session, 0)));  // The tenant's third.
  ASSERT_TRUE(two.ReadEventsOf("d", 1));
  ASSERT_TRUE(two.Add("e", After(session, 0)));  // The tenant's fourth.
  ASSERT_TRUE(two.ReadUntil([](const auto& r) { return r.ended.contains("e"); }));
  EXPECT_EQ(two.received.ended["e"].code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(ReasonOf(two.received.ended["e"]), "TOO_MANY_SUBSCRIPTIONS");
  // Everyone admitted goes on receiving.
  ASSERT_TRUE(writer->PublishNext().ok());
  ASSERT_TRUE(one.ReadEventsOf("a", 2));
  ASSERT_TRUE(one.ReadEventsOf("b", 2));
  ASSERT_TRUE(two.ReadEventsOf("d", 2));
  EXPECT_THAT(Seqs(one.received.events["a"]), ElementsAre(1u, 2u));
  EXPECT_THAT(Seqs(one.received.events["b"]), ElementsAre(1u, 2u));
  EXPECT_THAT(Seqs(two.received.events["d"]), ElementsAre(1u, 2u));
  // A removed subscription frees its place in the tenant's count.
  ASSERT_TRUE(one.Remove("a"));
  ASSERT_TRUE(one.ReadUntil([](const auto& r) { return r.ended.contains("a"); }));
  ASSERT_TRUE(Eventually([&] { return Sample(registry_, "parley_fanout_streams") == 2; }));
  two.received.ended.clear();
  ASSERT_TRUE(two.Add("e", After(session, 0)));
  ASSERT_TRUE(two.ReadEventsOf("e", 2));
  EXPECT_FALSE(two.received.ended.contains("e"));
  EXPECT_THAT(Seqs(two.received.events["e"]), ElementsAre(1u, 2u));
}

// A MuxWriter that holds each write until the test completes it, as a slow network
// would: whatever arrives meanwhile must wait for the next write.
class HeldWriter final : public MuxWriter {
 public:
  void WriteBatch(const grpc::ByteBuffer* batch) override {
    std::vector<grpc::Slice> slices;
    EXPECT_TRUE(batch->Dump(&slices).ok());
    std::string bytes;
    for (const grpc::Slice& slice : slices) {
      bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    }
    held_.Record(std::move(bytes));
  }
  void FinishMux(const grpc::Status& status) override {}
  bool AwaitWrite() { return held_.AwaitWrite(); }
  void Complete(MuxStream& mux) {
    held_.End();
    mux.OnWriteDone(true);
  }
  std::vector<std::string> writes() { return held_.writes(); }

 private:
  HeldWrites<std::string> held_;
};

class BatchedSubscribe : public FanoutFixture {
 protected:
  static constexpr size_t kMaxBatchBytes = 1000;
  HubOptions Options() override {
    HubOptions options;
    options.stream.max_batch_bytes = kMaxBatchBytes;
    options.stream.flush_window = absl::ZeroDuration();  // Only the write in flight batches.
    return options;
  }
};

TEST_F(BatchedSubscribe, DeliveriesWaitingForAWriteGoOutTogetherWithinTheByteLimit) {
  constexpr int kSessions = 5;
  constexpr int kEvents = 60;
  std::vector<std::string> sessions;
  for (int i = 0; i < kSessions; ++i) {
    sessions.push_back(CreateSession());
    auto writer = NewWriter(sessions.back(), 1);
    for (int seq = 0; seq < kEvents; ++seq) ASSERT_TRUE(writer->PublishNext().ok());
  }
  HeldWriter held;
  auto mux = std::make_shared<MuxStream>(*hub_, &held, kTenant);
  mux->Start();
  for (int i = 0; i < kSessions; ++i) {
    StreamParams params;
    params.session_id = sessions[i];
    mux->Add(absl::StrCat("s", i), params);
  }
  std::map<std::string, std::vector<uint64_t>> seqs;
  size_t delivered = 0;
  size_t largest_delivery = 0;
  while (delivered < kSessions * kEvents) {
    ASSERT_TRUE(held.AwaitWrite()) << "stalled after " << delivered << " deliveries";
    v1::SubscribeResponse batch;
    ASSERT_TRUE(batch.ParseFromString(held.writes().back()));
    for (const v1::Delivery& delivery : batch.deliveries()) {
      ASSERT_TRUE(delivery.has_event());
      seqs[delivery.subscription_id()].push_back(delivery.event().seq());
      largest_delivery = std::max(largest_delivery, delivery.ByteSizeLong() + 3);
      ++delivered;
    }
    held.Complete(*mux);
  }
  for (int i = 0; i < kSessions; ++i) {
    EXPECT_THAT(seqs[absl::StrCat("s", i)], ElementsAreArray(Range(1, kEvents))) << i;
  }
  const std::vector<std::string> writes = held.writes();
  // Each subscription has one write outstanding at a time, and all it queued meanwhile
  // goes in the next: far fewer writes than deliveries.
  EXPECT_LT(writes.size(), delivered / 4);
  for (const std::string& write : writes) {
    // A batch stops at the first delivery that reaches the limit.
    EXPECT_LT(write.size(), kMaxBatchBytes + largest_delivery);
  }
  mux->Detach();
  EXPECT_EQ(mux->subscription_count(), 0u);
}

// The hub on a FakeClock with no ticker or timer thread: the test moves time and runs
// the timers.
class WindowedSubscribe : public FanoutFixture {
 protected:
  static constexpr size_t kMaxBatchBytes = 4096;
  HubOptions Options() override {
    HubOptions options;
    options.clock = &clock_;
    options.tick_interval = absl::ZeroDuration();
    options.stream.flush_window = absl::Milliseconds(10);
    options.stream.max_batch_bytes = kMaxBatchBytes;
    return options;
  }
  // Waits (bounded, in real time) until the stream holds `n` deliveries waiting.
  bool AwaitWaiting(MuxStream& mux, size_t n) {
    return Eventually([&] { return mux.waiting_deliveries() >= n; });
  }
  FakeClock clock_;
};

TEST_F(WindowedSubscribe, DeliveriesWaitOutTheFlushWindowUnlessTheyFillABatch) {
  const std::string first = CreateSession();
  const std::string second = CreateSession();
  auto first_writer = NewWriter(first, 1);
  auto second_writer = NewWriter(second, 1);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(first_writer->PublishNext().ok());
    ASSERT_TRUE(second_writer->PublishNext().ok());
  }
  HeldWriter held;
  auto mux = std::make_shared<MuxStream>(*hub_, &held, kTenant);
  mux->Start();
  StreamParams params;
  params.session_id = first;
  mux->Add("first", params);
  params.session_id = second;
  mux->Add("second", params);
  // Each subscription hands over its first event (one write outstanding each); both
  // wait for the window, which only this clock ends.
  ASSERT_TRUE(AwaitWaiting(*mux, 2));
  clock_.Advance(absl::Milliseconds(9));
  hub_->RunTimersOnce();
  EXPECT_THAT(held.writes(), IsEmpty());
  clock_.Advance(absl::Milliseconds(1));
  hub_->RunTimersOnce();
  ASSERT_TRUE(held.AwaitWrite());
  v1::SubscribeResponse batch;
  ASSERT_TRUE(batch.ParseFromString(held.writes().back()));
  ASSERT_EQ(batch.deliveries_size(), 2);  // One write for both.
  // Written: each hands over its other four, which wait for a window of their own.
  held.Complete(*mux);
  ASSERT_TRUE(AwaitWaiting(*mux, 8));
  EXPECT_EQ(held.writes().size(), 1u);
  clock_.Advance(absl::Milliseconds(10));
  hub_->RunTimersOnce();
  ASSERT_TRUE(held.AwaitWrite());
  ASSERT_TRUE(batch.ParseFromString(held.writes().back()));
  EXPECT_EQ(batch.deliveries_size(), 8);
  held.Complete(*mux);

  // A batch's worth goes at once, window or not: three subscriptions of the first
  // session each hand over one event of half a batch, and the clock stands still.
  StreamParams at_tip;
  at_tip.session_id = first;
  at_tip.after_seq = 5;
  mux->Add("a", at_tip);
  mux->Add("b", at_tip);
  ASSERT_TRUE(first_writer->PublishNext(std::string(kMaxBatchBytes / 2, 'x')).ok());
  ASSERT_TRUE(held.AwaitWrite());
  ASSERT_TRUE(batch.ParseFromString(held.writes().back()));
  EXPECT_GE(batch.deliveries_size(), 2);
  for (const v1::Delivery& delivery : batch.deliveries()) EXPECT_EQ(delivery.event().seq(), 6u);
  EXPECT_GE(held.writes().back().size(), kMaxBatchBytes);
  mux->Detach();
}

// The hub on a FakeClock with no ticker thread: the test moves time and ticks.
class KeepaliveSubscribe : public FanoutFixture {
 protected:
  HubOptions Options() override {
    HubOptions options;
    options.clock = &clock_;
    options.tick_interval = absl::ZeroDuration();
    options.stream.keepalive = absl::Milliseconds(100);
    options.stream.flush_window = absl::ZeroDuration();  // No timer runs on this clock.
    return options;
  }
  FakeClock clock_;
};

TEST_F(KeepaliveSubscribe, OneKeepalivePerStreamCarriesTheCursorsThatMovedSinceTheLast) {
  const std::string moving = CreateSession();
  const std::string quiet = CreateSession();
  auto writer = NewWriter(moving, 1);
  ASSERT_TRUE(writer->PublishNext().ok());
  auto client = NewClient();
  SubscribeClient stream(*client);
  ASSERT_TRUE(stream.Add("moving", After(moving, 0)));
  ASSERT_TRUE(stream.Add("quiet", After(quiet, 0)));
  ASSERT_TRUE(stream.ReadEventsOf("moving", 1));
  // Tick until the client has a keepalive (the first tick may land while the write of
  // event 1 is still outstanding, when nothing else is sent).
  const absl::Time idle_since = clock_.Now();
  auto tick_until_keepalive = [&](size_t n) {
    std::atomic<bool> received{false};
    std::thread ticker([&] {
      for (int i = 0; i < 1000 && !received.load(); ++i) {
        clock_.Advance(absl::Milliseconds(100));
        hub_->TickOnce();
        absl::SleepFor(absl::Milliseconds(5));
      }
    });
    const bool got = stream.ReadUntil([&](const auto& r) { return r.keepalives.size() >= n; });
    received = true;
    ticker.join();
    return got;
  };
  ASSERT_TRUE(tick_until_keepalive(1));
  const v1::SubscribeKeepalive& first = stream.received.keepalives[0];
  ASSERT_EQ(first.cursors_size(), 1);  // Only the subscription that moved.
  EXPECT_EQ(first.cursors(0).subscription_id(), "moving");
  EXPECT_EQ(first.cursors(0).last_seq(), 1u);
  EXPECT_GE(FromTimestamp(first.time()), idle_since);  // The hub's clock.
  EXPECT_LT(FromTimestamp(first.time()), absl::Now() - absl::Hours(24));
  // Nothing moved since: the next is empty.
  ASSERT_TRUE(tick_until_keepalive(2));
  EXPECT_EQ(stream.received.keepalives[1].cursors_size(), 0);
  EXPECT_THAT(stream.received.ended, IsEmpty());
}

}  // namespace
}  // namespace parley::gateway::testing
