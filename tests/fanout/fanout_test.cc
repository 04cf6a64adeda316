// StreamEvents through the hub, against real Redis and a real store.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "tests/fanout/fanout_fixture.h"

namespace parley::gateway::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

class Fanout : public FanoutFixture {};

v1::StreamEventsRequest After(const std::string& session, uint64_t after_seq) {
  v1::StreamEventsRequest request;
  request.set_session_id(session);
  request.set_after_seq(after_seq);
  return request;
}

TEST_F(Fanout, HistoryThenLiveEventsArriveInOrderWithoutGapsOrDuplicates) {
  std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(writer->PublishNext().ok());
  auto client = NewClient();
  StreamReader stream(*client, After(session, 0));
  std::thread live([&] {
    for (int i = 0; i < 30; ++i) ASSERT_TRUE(writer->PublishNext().ok());
  });
  std::vector<v1::Event> events = stream.ReadEvents(50);
  live.join();
  EXPECT_THAT(Seqs(events), ElementsAreArray(Range(1, 50)));
}

TEST_F(Fanout, ResumeAfterASeqDeliversExactlyTheRest) {
  std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(writer->PublishNext().ok());
  auto client = NewClient();
  StreamReader stream(*client, After(session, 7));
  EXPECT_THAT(Seqs(stream.ReadEvents(3)), ElementsAreArray(Range(8, 10)));
}

TEST_F(Fanout, FromLatestStartsAtTheLiveTip) {
  std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(writer->PublishNext().ok());
  auto client = NewClient();
  v1::StreamEventsRequest request;
  request.set_session_id(session);
  request.set_from_latest(true);
  StreamReader stream(*client, request);
  // Keep publishing until the stream has three events: whenever it became live, it
  // must start after the five old events and then miss nothing.
  std::atomic<bool> done{false};
  std::thread publisher([&] {
    for (int i = 0; i < 1000 && !done.load(); ++i) {
      ASSERT_TRUE(writer->PublishNext().ok());
      absl::SleepFor(absl::Milliseconds(10));
    }
  });
  std::vector<uint64_t> seqs = Seqs(stream.ReadEvents(3));
  done = true;
  publisher.join();
  ASSERT_EQ(seqs.size(), 3u);
  EXPECT_GT(seqs[0], 5u);
  EXPECT_THAT(seqs, ElementsAreArray(Range(seqs[0], seqs[0] + 2)));
}

TEST_F(Fanout, UntilTurnEndClosesRightAfterTheSealButNotBefore) {
  std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  ASSERT_TRUE(writer->PublishNext().ok());
  auto client = NewClient();
  v1::StreamEventsRequest request = After(session, 0);
  request.set_until_turn_end(true);
  StreamReader stream(*client, request);
  ASSERT_TRUE(writer->PublishNext().ok());
  ASSERT_TRUE(writer->Seal("turn_1").ok());
  ASSERT_TRUE(writer->PublishNext().ok());  // Belongs to the next turn: not delivered.
  std::vector<v1::Event> events = stream.ReadEvents(100);
  EXPECT_THAT(Seqs(events), ElementsAreArray(Range(1, 3)));
  EXPECT_TRUE(events.back().has_turn_sealed());
  EXPECT_TRUE(stream.reader->Finish().ok());
}

// A transient event arrives between the durable events around it. The next durable
// event is published only once the client holds the transient, so the transient is
// still in effect whenever the stream catches up: live or through a read of history,
// the client sees the same three events.
TEST_F(Fanout, TransientEventsAreDeliveredInPlace) {
  std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  auto client = NewClient();
  StreamReader stream(*client, After(session, 0));
  ASSERT_TRUE(writer->PublishNext().ok());
  ASSERT_TRUE(writer->Publish(1, "retrying", /*transient=*/true).ok());
  std::vector<v1::Event> events = stream.ReadEvents(2);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].seq(), 1u);
  EXPECT_FALSE(events[0].transient());
  EXPECT_TRUE(events[1].transient());
  EXPECT_EQ(events[1].text_delta().text(), "retrying");
  ASSERT_TRUE(writer->PublishNext().ok());
  events = stream.ReadEvents(1);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].seq(), 2u);
  EXPECT_FALSE(events[0].transient());
}

// A retry that is scheduled and not yet attempted is part of the session's present: a
// client that arrives afterwards (so reads it as history) gets it after the event it
// follows, once, as does a client resuming right after that event.
TEST_F(Fanout, ATransientStillInEffectIsDeliveredToALateSubscriber) {
  std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  ASSERT_TRUE(writer->PublishNext().ok());
  ASSERT_TRUE(writer->PublishNext().ok());
  ASSERT_TRUE(writer->Publish(2, "retrying", /*transient=*/true).ok());
  auto client = NewClient();
  StreamReader from_start(*client, After(session, 0));
  std::vector<v1::Event> events = from_start.ReadEvents(3);
  ASSERT_THAT(Seqs(events), ElementsAre(1u, 2u, 2u));
  EXPECT_FALSE(events[1].transient());
  EXPECT_TRUE(events[2].transient());
  EXPECT_EQ(events[2].text_delta().text(), "retrying");
  StreamReader resumed(*client, After(session, 2));
  events = resumed.ReadEvents(1);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_TRUE(events[0].transient());

  // Delivered once: what follows on both streams is the durable event that ends it.
  ASSERT_TRUE(writer->PublishNext().ok());
  for (StreamReader* stream : {&from_start, &resumed}) {
    events = stream->ReadEvents(1);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].seq(), 3u);
    EXPECT_FALSE(events[0].transient());
  }
}

// A retry that a durable event followed is over: a client arriving afterwards gets the
// durable events only.
TEST_F(Fanout, ATransientThatADurableEventFollowedIsNotDeliveredToALateSubscriber) {
  std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  ASSERT_TRUE(writer->PublishNext().ok());
  ASSERT_TRUE(writer->Publish(1, "retrying", /*transient=*/true).ok());
  ASSERT_TRUE(writer->PublishNext().ok());
  auto client = NewClient();
  StreamReader stream(*client, After(session, 0));
  std::vector<v1::Event> events = stream.ReadEvents(2);
  ASSERT_THAT(Seqs(events), ElementsAre(1u, 2u));
  EXPECT_FALSE(events[1].transient());
  ASSERT_TRUE(writer->PublishNext().ok());
  events = stream.ReadEvents(1);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].seq(), 3u);
  EXPECT_FALSE(events[0].transient());
}

TEST_F(Fanout, ResumeFromBeforeTheHotWindowReadsTheStoreThenGoesLive) {
  std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(writer->PublishNext().ok());
  // Persist everything, then trim Redis to the last ten entries.
  store::v1::AppendEventsRequest append;
  append.set_tenant_id(kTenant);
  append.set_session_id(session);
  auto entries =
      redis_->connection().Command({"XRANGE", redis_->keys().EventStream(session), "-", "+"});
  ASSERT_TRUE(entries.ok());
  for (size_t i = 0; i < (*entries)->elements; ++i) {
    const redisReply* fields = (*entries)->element[i]->element[1];
    append.add_events()->ParseFromString(
        std::string(fields->element[1]->str, fields->element[1]->len));
  }
  ASSERT_TRUE(store::AppendEventBatch(*pool_, append).ok());
  ASSERT_TRUE(redis_->connection()
                  .Command({"XTRIM", redis_->keys().EventStream(session), "MINID", "91-0"})
                  .ok());

  auto client = NewClient();
  StreamReader stream(*client, After(session, 10));
  std::vector<v1::Event> events = stream.ReadEvents(90);
  EXPECT_THAT(Seqs(events), ElementsAreArray(Range(11, 100)));
  ASSERT_TRUE(writer->PublishNext().ok());
  EXPECT_THAT(Seqs(stream.ReadEvents(1)), ElementsAreArray(Range(101, 101)));
}

TEST_F(Fanout, ZombieWriterWithAnOldEpochCannotPublish) {
  std::string session = CreateSession();
  auto zombie = NewWriter(session, 1);
  ASSERT_TRUE(zombie->PublishNext().ok());
  auto owner = NewWriter(session, 2);  // Took over the lease.
  absl::Status refused = zombie->PublishNext();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(GetErrorInfo(refused).has_value());
  EXPECT_EQ(GetErrorInfo(refused)->reason(), "LEASE_LOST");
  EXPECT_EQ(owner->last_seq, 1u);
  ASSERT_TRUE(owner->PublishNext().ok());
  auto length = redis_->connection().Command({"XLEN", redis_->keys().EventStream(session)});
  EXPECT_EQ((*length)->integer, 2);  // Nothing from the zombie.
  // A writer cannot take a lease back to an older epoch either.
  auto stale = std::make_unique<EventPublisher>(
      *zombie->connection, PublisherOptions{.key_prefix = redis_->keys().prefix()},
      RealClock::Get());
  EXPECT_EQ(stale->AcquireLease(session, "zombie", 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// What it proves: a writer that expects the session's lease hash (it was leased before)
// is refused with STATE_LOST when Redis lost it, and nothing is written, so the writer
// recovers the epoch instead of reusing seqs; and a read sent with the lease is answered
// in the same call, after the lease was taken.
TEST_F(Fanout, ALeaseThatMustExistIsRefusedWhenRedisLostItAndAReadRidesBehindIt) {
  std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  ASSERT_TRUE(writer->PublishNext("first").ok());
  const EventLogReader log(redis_->keys());
  absl::StatusOr<EventPublisher::Lease> lease = writer->publisher->AcquireLease(
      session, "next owner", 2,
      {.expect_existing = true, .read = log.BackwardCommand(session, std::nullopt, 16)});
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->last_seq, 1u);
  const std::vector<EventLogEntry> tail = EventLogReader::EntriesOf(lease->read.get());
  ASSERT_EQ(tail.size(), 1u);
  EXPECT_EQ(tail[0].id.seq, 1u);

  ASSERT_TRUE(redis_->connection().Command({"DEL", redis_->keys().Lease(session)}).ok());
  absl::StatusOr<EventPublisher::Lease> lost =
      writer->publisher->AcquireLease(session, "next owner", 3, {.expect_existing = true});
  EXPECT_EQ(lost.status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(GetErrorInfo(lost.status()).has_value());
  EXPECT_EQ(GetErrorInfo(lost.status())->reason(), "STATE_LOST");
  auto exists = redis_->connection().Command({"EXISTS", redis_->keys().Lease(session)});
  ASSERT_TRUE(exists.ok()) << exists.status();
  EXPECT_EQ((*exists)->integer, 0);  // Nothing written.
  // A first lease (nothing expected) creates it.
  EXPECT_TRUE(writer->publisher->AcquireLease(session, "next owner", 3).ok());
}

TEST_F(Fanout, OutOfOrderSeqIsRefusedByThePublisher) {
  std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  ASSERT_TRUE(writer->PublishNext().ok());
  absl::Status skipped = writer->Publish(3);
  EXPECT_EQ(skipped.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GetErrorInfo(skipped)->reason(), "SEQ_MISMATCH");
  EXPECT_EQ(GetErrorInfo(skipped)->metadata().at("last_seq"), "1");
}

TEST_F(Fanout, OneRedisSubscriptionPerSessionWhateverTheViewers) {
  std::string session = CreateSession();
  auto client = NewClient();
  std::vector<std::unique_ptr<StreamReader>> streams;
  for (int i = 0; i < 20; ++i)
    streams.push_back(std::make_unique<StreamReader>(*client, After(session, 0)));
  auto writer = NewWriter(session, 1);
  ASSERT_TRUE(writer->PublishNext().ok());
  for (auto& stream : streams) EXPECT_EQ(stream->ReadEvents(1).size(), 1u);
  // Counted by Redis itself: how many connections subscribe to the session's channel.
  auto subscribers = [&]() -> int64_t {
    auto reply =
        redis_->connection().Command({"PUBSUB", "NUMSUB", redis_->keys().EventChannel(session)});
    EXPECT_TRUE(reply.ok()) << reply.status();
    return reply.ok() ? (*reply)->element[1]->integer : -1;
  };
  EXPECT_EQ(subscribers(), 1);
  for (auto& stream : streams) stream->context.TryCancel();
  streams.clear();
  for (int i = 0; i < 1000 && subscribers() != 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(subscribers(), 0);  // The last viewer left: unsubscribed.
  EXPECT_EQ(hub_->channel_count(), 0u);
}

TEST_F(Fanout, AnotherTenantsSessionIsNotFoundAndNoCredentialsIsUnauthenticated) {
  std::string theirs = CreateSession("tenant_b");
  auto client = NewClient();
  StreamReader foreign(*client, After(theirs, 0));
  EXPECT_TRUE(foreign.ReadEvents(1).empty());
  EXPECT_EQ(foreign.reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  StreamReader missing(*client, After("ses_does_not_exist", 0));
  EXPECT_TRUE(missing.ReadEvents(1).empty());
  EXPECT_EQ(missing.reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  StreamReader anonymous(*client, After(theirs, 0), nullptr);
  EXPECT_TRUE(anonymous.ReadEvents(1).empty());
  EXPECT_EQ(anonymous.reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  StreamReader no_session(*client, After("", 0));
  EXPECT_TRUE(no_session.ReadEvents(1).empty());
  EXPECT_EQ(no_session.reader->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// Another tenant's session costs this node nothing: the stream is refused with
// NOT_FOUND before the hub subscribes to the session's channel. Asked of Redis itself:
// MONITOR lists every command the server ran, so a SUBSCRIBE undone right after the
// refusal would still show; PUBSUB NUMSUB shows that nothing is left subscribed.
TEST_F(Fanout, AnotherTenantsStreamIsRefusedBeforeAnythingIsSubscribed) {
  const std::string theirs = CreateSession("tenant_b");
  const std::string channel = redis_->keys().EventChannel(theirs);
  auto monitor = RedisConnection::Connect(redis_->endpoint(), absl::Seconds(10));
  ASSERT_TRUE(monitor.ok()) << monitor.status();
  ASSERT_TRUE((*monitor)->Command({"MONITOR"}).ok());

  auto client = NewClient();
  StreamReader foreign(*client, After(theirs, 0));
  EXPECT_TRUE(foreign.ReadEvents(1).empty());
  EXPECT_EQ(foreign.reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  auto subscribers = redis_->connection().Command({"PUBSUB", "NUMSUB", channel});
  ASSERT_TRUE(subscribers.ok()) << subscribers.status();
  EXPECT_EQ((*subscribers)->element[1]->integer, 0);

  // Every command Redis ran, in order, up to that NUMSUB: none subscribed the channel.
  const std::string quoted_channel = absl::StrCat("\"", channel, "\"");
  std::vector<std::string> subscribes;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  for (bool seen_numsub = false; !seen_numsub;) {
    ASSERT_LT(absl::Now(), deadline) << "MONITOR never showed the NUMSUB";
    auto line = (*monitor)->ReadReply();
    ASSERT_TRUE(line.ok()) << line.status();
    const std::string text = ReplyString(line->get());
    if (!absl::StrContains(text, quoted_channel)) continue;
    seen_numsub = absl::StrContains(text, "\"NUMSUB\"");
    if (absl::StrContains(text, "SUBSCRIBE\"")) subscribes.push_back(text);
  }
  EXPECT_THAT(subscribes, IsEmpty());
  EXPECT_EQ(hub_->channel_count(), 0u);
}

class SlowFanout : public FanoutFixture {
 protected:
  HubOptions Options() override {
    HubOptions options;
    options.stream.max_buffered = 32;
    return options;
  }
};

TEST_F(SlowFanout, ASlowConsumerIsCutWithItsCursorAndOthersAreUnaffected) {
  std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  // Without BDP probing the client's stream windows stay at their initial size: with
  // it, the busy fast stream can grow the slow one's window until it swallows the whole
  // burst unread (seen once on a loaded fresh-clone run), and nothing falls behind.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  auto client = v1::SessionService::NewStub(
      grpc::CreateCustomChannel(gateway_target(), grpc::InsecureChannelCredentials(), args));
  StreamReader slow(*client, After(session, 0));
  StreamReader fast(*client, After(session, 0));
  // Make sure both streams are live before the burst.
  ASSERT_TRUE(writer->PublishNext().ok());
  std::vector<v1::Event> slow_got = slow.ReadEvents(1);
  ASSERT_EQ(slow_got.size(), 1u);
  ASSERT_EQ(fast.ReadEvents(1).size(), 1u);
  // Up to far more than HTTP/2 flow control lets through to a client that does not
  // read, until the slow stream's buffer overflows and the hub cuts it. The publisher
  // waits for the reading client after each event, so only the non-reading one can fall
  // behind, however loaded the machine is. The burst stops at the cut: on a loaded
  // machine all 400 could outlast the slow stream's deadline, and the cut status, queued
  // behind the unread events, would never be read.
  const std::string big(16 * 1024, 'x');
  uint64_t last_published = 1;
  for (int i = 0; i < 400 && SlowConsumersCut() == 0; ++i) {
    ASSERT_TRUE(writer->PublishNext(big).ok());
    ++last_published;
    ASSERT_EQ(fast.ReadEvents(1).size(), 1u) << "the reading client was cut at event " << i;
  }
  ASSERT_EQ(SlowConsumersCut(), 1) << "400 unread events of 16 KiB did not overflow the buffer";

  std::vector<v1::Event> got = slow.ReadEvents(1000);
  slow_got.insert(slow_got.end(), got.begin(), got.end());
  grpc::Status cut = slow.reader->Finish();
  ASSERT_EQ(cut.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  auto info = GetErrorInfo(FromGrpcStatus(cut));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->reason(), "SLOW_CONSUMER");
  const uint64_t last_seq = std::stoull(info->metadata().at("last_seq"));
  EXPECT_GE(last_seq, 1u);
  EXPECT_LT(last_seq, last_published);
  // Before the cut it got exactly 1..last_seq: the cursor names the last event it holds,
  // nothing past it arrived and nothing before it is missing.
  EXPECT_THAT(Seqs(slow_got), ElementsAreArray(Range(1, last_seq)));
  // It resumes from its cursor and gets exactly the rest, then live events.
  StreamReader resumed(*client, After(session, last_seq));
  EXPECT_THAT(Seqs(resumed.ReadEvents(static_cast<int>(last_published - last_seq))),
              ElementsAreArray(Range(last_seq + 1, last_published)));
  ASSERT_TRUE(writer->PublishNext().ok());
  EXPECT_THAT(Seqs(resumed.ReadEvents(1)), ElementsAre(last_published + 1));
}

// The hub on a FakeClock with no ticker thread: the test moves time and ticks.
class FakeClockFanout : public FanoutFixture {
 protected:
  HubOptions Options() override {
    HubOptions options;
    options.clock = &clock_;
    options.tick_interval = absl::ZeroDuration();
    return options;
  }
  // Moves the hub's clock by `step` and ticks, again and again, until `done`.
  void TickUntil(const std::atomic<bool>& done, absl::Duration step) {
    while (!done.load()) {
      clock_.Advance(step);
      hub_->TickOnce();
      absl::SleepFor(absl::Milliseconds(5));  // Lets the stream's writes complete.
    }
  }
  // Publishes event 1 of a new session and opens a stream of it from the start.
  std::unique_ptr<StreamReader> StreamOfOneEvent() {
    const std::string session = CreateSession();
    writer_ = NewWriter(session, 1);
    EXPECT_TRUE(writer_->PublishNext().ok());
    client_ = NewClient();
    return std::make_unique<StreamReader>(*client_, After(session, 0));
  }
  FakeClock clock_;
  std::unique_ptr<Writer> writer_;
  std::unique_ptr<v1::SessionService::Stub> client_;
};

class KeepaliveFanout : public FakeClockFanout {
 protected:
  HubOptions Options() override {
    HubOptions options = FakeClockFanout::Options();
    options.stream.keepalive = absl::Milliseconds(100);
    return options;
  }
};

TEST_F(KeepaliveFanout, IdleStreamsGetKeepalivesCarryingTheCursor) {
  std::unique_ptr<StreamReader> stream = StreamOfOneEvent();
  ASSERT_THAT(Seqs(stream->ReadEvents(1)), ElementsAre(1u));
  // Each tick is a keepalive's worth of idle time later. The first may land before the
  // write of event 1 has completed (nothing is sent while a write is outstanding), so
  // tick until the client has its keepalive.
  const absl::Time idle_since = clock_.Now();
  std::atomic<bool> received{false};
  std::thread ticker([&] { TickUntil(received, absl::Milliseconds(100)); });
  v1::StreamEventsResponse response;
  bool keepalive = false;
  for (int i = 0; i < 10 && !keepalive && stream->reader->Read(&response); ++i) {
    keepalive = response.has_keepalive();
    if (keepalive) {
      EXPECT_EQ(response.keepalive().last_seq(), 1u);
      // Stamped by the hub's clock, not the wall clock.
      EXPECT_GE(FromTimestamp(response.keepalive().time()), idle_since);
      EXPECT_LT(FromTimestamp(response.keepalive().time()), absl::Now() - absl::Hours(24));
    }
  }
  received = true;
  ticker.join();
  EXPECT_TRUE(keepalive);
}

// Forwards every call to the real history: tests override the calls they change.
class ForwardingHistory : public HistorySource {
 public:
  explicit ForwardingHistory(HistorySource& real) : real_(real) {}
  absl::StatusOr<std::vector<v1::Event>> ReadFrom(const std::string& tenant_id,
                                                  const std::string& session_id, uint64_t from_seq,
                                                  int max) override {
    return real_.ReadFrom(tenant_id, session_id, from_seq, max);
  }
  absl::StatusOr<StreamStart> Start(const std::string& tenant_id, const std::string& session_id,
                                    const std::string& turn_id) override {
    return real_.Start(tenant_id, session_id, turn_id);
  }
  absl::StatusOr<uint64_t> LastSeq(const std::string& session_id,
                                   const StreamStart& start) override {
    return real_.LastSeq(session_id, start);
  }
  absl::StatusOr<uint64_t> TurnFirstSeq(const std::string& session_id,
                                        const StreamStart& start) override {
    return real_.TurnFirstSeq(session_id, start);
  }

 protected:
  HistorySource& real_;
};

// A history whose first start and first read fail as an unreachable store would.
class FlakyHistory final : public ForwardingHistory {
 public:
  using ForwardingHistory::ForwardingHistory;
  absl::StatusOr<std::vector<v1::Event>> ReadFrom(const std::string& tenant_id,
                                                  const std::string& session_id, uint64_t from_seq,
                                                  int max) override {
    if (reads_++ == 0) return absl::UnavailableError("store-svc is down");
    return real_.ReadFrom(tenant_id, session_id, from_seq, max);
  }
  absl::StatusOr<StreamStart> Start(const std::string& tenant_id, const std::string& session_id,
                                    const std::string& turn_id) override {
    if (starts_++ == 0) return absl::UnavailableError("store-svc is down");
    return real_.Start(tenant_id, session_id, turn_id);
  }
  int starts() const { return starts_.load(); }
  int reads() const { return reads_.load(); }

 private:
  std::atomic<int> starts_{0};
  std::atomic<int> reads_{0};
};

// The hub reads a history that fails once at each step: each failure is retried after
// a second of the hub's clock, by a tick.
class RetryFanout : public FakeClockFanout {
 protected:
  HistorySource& HubHistory(RedisStoreHistory& real) override {
    flaky_ = std::make_unique<FlakyHistory>(real);
    return *flaky_;
  }
  std::unique_ptr<FlakyHistory> flaky_;
};

TEST_F(RetryFanout, AStartAndAReadTheStoreCouldNotAnswerAreRetriedAfterASecond) {
  std::unique_ptr<StreamReader> stream = StreamOfOneEvent();
  ASSERT_TRUE(parley::testing::WaitFor(absl::Seconds(30), [&] { return flaky_->starts() == 1; }));
  // Not yet a second later: the stream stays open and nothing is retried. A retry is
  // scheduled within the tick that decides it, so the backfill count shows it at once.
  const int64_t backfills = Sample(registry_, "parley_fanout_backfills_total");
  hub_->TickOnce();
  clock_.Advance(absl::Milliseconds(900));
  hub_->TickOnce();
  EXPECT_EQ(Sample(registry_, "parley_fanout_backfills_total"), backfills);
  EXPECT_EQ(flaky_->starts(), 1);

  std::atomic<bool> received{false};
  std::thread ticker([&] { TickUntil(received, absl::Milliseconds(600)); });
  std::vector<v1::Event> events = stream->ReadEvents(1);
  received = true;
  ticker.join();
  EXPECT_THAT(Seqs(events), ElementsAre(1u));
  EXPECT_EQ(flaky_->starts(), 2);
  EXPECT_GE(flaky_->reads(), 2);
}

// A history that runs `after_turn_first_seq` once, right after the real TurnFirstSeq
// answered: what session-svc might do in that instant under load.
class HookedHistory final : public ForwardingHistory {
 public:
  using ForwardingHistory::ForwardingHistory;
  absl::StatusOr<uint64_t> TurnFirstSeq(const std::string& session_id,
                                        const StreamStart& start) override {
    absl::StatusOr<uint64_t> first = real_.TurnFirstSeq(session_id, start);
    if (std::function<void()> hook = std::exchange(after_turn_first_seq, nullptr)) hook();
    return first;
  }
  std::function<void()> after_turn_first_seq;
};

class HookedFanout : public FanoutFixture {
 protected:
  HistorySource& HubHistory(RedisStoreHistory& real) override {
    hooked_ = std::make_unique<HookedHistory>(real);
    return *hooked_;
  }
  std::unique_ptr<HookedHistory> hooked_;
};

// What it proves: a stream from a turn that had not started when the stream looked for
// its start still begins with the turn's TurnStarted, even when the whole turn runs
// between that look and the stream's subscription (a fast turn on a loaded gateway:
// `parley send --follow` once printed only the turn's end). How the race is forced: the
// hook publishes the turn's events right after the history answered where it starts.
TEST_F(HookedFanout, AStreamFromATurnThatStartsMeanwhileBeginsWithItsStart) {
  const std::string session = CreateSession();
  store::v1::EnqueueTurnResponse enqueued;
  ASSERT_NO_FATAL_FAILURE(EnqueueTurn(session, &enqueued));
  const std::string turn_id = enqueued.turn().id();
  ASSERT_EQ(enqueued.turn().status(), v1::TURN_STATUS_QUEUED);

  auto writer = NewWriter(session, 1);
  auto publish = [&](v1::Event event) {
    event.set_session_id(session);
    event.set_seq(writer->last_seq + 1);
    event.set_epoch(writer->history_epoch);
    event.set_turn_id(turn_id);
    *event.mutable_time() = ToTimestamp(absl::Now());
    absl::Status status = writer->publisher->Publish(event, writer->lease_epoch);
    EXPECT_TRUE(status.ok()) << status;
    ++writer->last_seq;
  };
  std::atomic<bool> ran{false};
  hooked_->after_turn_first_seq = [&] {
    v1::Event started, text, completed;
    started.mutable_turn_started()->set_turn_id(turn_id);
    publish(started);
    text.mutable_text_delta()->set_text("Echo: hello");
    publish(text);
    completed.mutable_turn_completed()->set_status(v1::TURN_STATUS_SUCCEEDED);
    publish(completed);
    ran = true;
  };

  auto client = NewClient();
  v1::StreamEventsRequest request;
  request.set_session_id(session);
  request.set_from_turn_id(turn_id);
  request.set_until_turn_end(true);
  StreamReader stream(*client, request);
  ASSERT_TRUE(parley::testing::WaitFor(absl::Seconds(30), [&] { return ran.load(); }));
  v1::Event sealed;
  sealed.mutable_turn_sealed()->set_turn_id(turn_id);
  publish(sealed);

  std::vector<v1::Event> events = stream.ReadEvents(100);
  EXPECT_THAT(Seqs(events), ElementsAre(1u, 2u, 3u, 4u));
  ASSERT_FALSE(events.empty());
  EXPECT_TRUE(events.front().has_turn_started()) << events.front().ShortDebugString();
  EXPECT_TRUE(events.back().has_turn_sealed());
  EXPECT_TRUE(stream.reader->Finish().ok());
}

// What it proves: a stream until the end of a turn that was cancelled while queued
// ends at once with OK and no event, instead of waiting for a TurnSealed that never
// comes (`parley send --follow` of such a turn used to hang). How: the turn is really
// cancelled in the store before the stream starts; without the fix the stream runs
// into its deadline.
TEST_F(Fanout, AStreamUntilTheEndOfATurnCancelledWhileQueuedEndsAtOnce) {
  const std::string session = CreateSession();
  store::v1::EnqueueTurnResponse enqueued;
  ASSERT_NO_FATAL_FAILURE(EnqueueTurn(session, &enqueued));
  ASSERT_NO_FATAL_FAILURE(CancelTurn(session, enqueued.turn().id()));

  auto client = NewClient();
  v1::StreamEventsRequest request;
  request.set_session_id(session);
  request.set_from_turn_id(enqueued.turn().id());
  request.set_until_turn_end(true);
  StreamReader stream(*client, request);
  EXPECT_THAT(stream.ReadEvents(100), IsEmpty());
  const grpc::Status status = stream.reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_code() << ": " << status.error_message();
}

// The hub re-checking a queued turn every `kRecheckMs` (and at the tick after another
// turn's seal).
template <int64_t kRecheckMs>
class QueuedTurnRecheck : public FanoutFixture {
 protected:
  HubOptions Options() override {
    HubOptions options;
    options.stream.queued_turn_recheck = absl::Milliseconds(kRecheckMs);
    return options;
  }

  // A stream until the end of `turn_id`, live: joined to its channel (it has resolved
  // where it starts, so it gets what comes next), and past one event `writer` published.
  std::unique_ptr<StreamReader> LiveStreamUntilTheEndOf(v1::SessionService::Stub& client,
                                                        const std::string& session,
                                                        const std::string& turn_id,
                                                        Writer& writer) {
    v1::StreamEventsRequest request;
    request.set_session_id(session);
    request.set_from_turn_id(turn_id);
    request.set_until_turn_end(true);
    auto stream = std::make_unique<StreamReader>(client, request);
    EXPECT_TRUE(Eventually([&] { return this->hub_->channel_count() == 1; }));
    EXPECT_TRUE(writer.PublishNext("a word before").ok());
    EXPECT_EQ(stream->ReadEvents(1).size(), 1u);
    return stream;
  }
};
using RecheckAfterSealOnly = QueuedTurnRecheck<3'600'000>;  // Never on its own here.
using RecheckEverySecond = QueuedTurnRecheck<1'000>;

// What it proves: a stream until the end of a turn that is still queued when the stream
// starts ends with OK once that turn is cancelled in the queue, though nothing is ever
// published for it; the check at another turn's seal finds it gone, and a check that
// finds it still queued keeps the stream open. How: the stream is live (it got an
// event) before each step; the seal of a turn ahead makes the hub ask the store (counted
// by the store's GetLastSeq calls) while the turn is queued, then again after the
// cancel. Without the re-check the stream runs into its deadline.
TEST_F(RecheckAfterSealOnly, AStreamWaitingForAQueuedTurnEndsAtTheNextSealOnceItIsCancelled) {
  const std::string session = CreateSession();
  store::v1::EnqueueTurnResponse ahead, ours;
  ASSERT_NO_FATAL_FAILURE(EnqueueTurn(session, &ahead));
  ASSERT_NO_FATAL_FAILURE(EnqueueTurn(session, &ours));
  auto writer = NewWriter(session, 1);
  auto client = NewClient();
  auto live = LiveStreamUntilTheEndOf(*client, session, ours.turn().id(), *writer);
  ASSERT_FALSE(HasFailure());
  StreamReader& stream = *live;

  // Another turn's seal while ours is still queued: checked, and the stream goes on.
  const int64_t checks = StoreCalls("GetLastSeq");
  ASSERT_TRUE(writer->Seal("turn_before").ok());
  ASSERT_EQ(stream.ReadEvents(1).size(), 1u);
  ASSERT_TRUE(Eventually([&] { return StoreCalls("GetLastSeq") > checks; }));
  ASSERT_TRUE(writer->PublishNext("still open").ok());
  ASSERT_EQ(stream.ReadEvents(1).size(), 1u);

  ASSERT_NO_FATAL_FAILURE(CancelTurn(session, ours.turn().id()));
  ASSERT_TRUE(writer->Seal(ahead.turn().id()).ok());
  const std::vector<v1::Event> rest = stream.ReadEvents(100);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].turn_sealed().turn_id(), ahead.turn().id());
  const grpc::Status status = stream.reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_code() << ": " << status.error_message();
}

// What it proves: with no other turn to seal (the session idle, its one queued turn
// waiting for a worker), the periodic re-check ends the stream of a turn cancelled in
// the queue. How: the stream is live before the cancel, and nothing is published after
// it; without the re-check the stream runs into its deadline.
TEST_F(RecheckEverySecond, AStreamWaitingForAQueuedTurnOfAnIdleSessionEndsOnceItIsCancelled) {
  const std::string session = CreateSession();
  store::v1::EnqueueTurnResponse ours;
  ASSERT_NO_FATAL_FAILURE(EnqueueTurn(session, &ours));
  auto writer = NewWriter(session, 1);
  auto client = NewClient();
  auto live = LiveStreamUntilTheEndOf(*client, session, ours.turn().id(), *writer);
  ASSERT_FALSE(HasFailure());
  StreamReader& stream = *live;

  ASSERT_NO_FATAL_FAILURE(CancelTurn(session, ours.turn().id()));
  EXPECT_THAT(stream.ReadEvents(100), IsEmpty());
  const grpc::Status status = stream.reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_code() << ": " << status.error_message();
}

TEST_F(Fanout, PublisherTrimsTheHotWindowOnlyBelowWhatIsPersisted) {
  std::string session = CreateSession();
  auto connection = RedisConnection::Connect(redis_->endpoint(), absl::Seconds(2));
  ASSERT_TRUE(connection.ok());
  FakeClock clock(absl::Now());
  EventPublisher publisher(**connection,
                           PublisherOptions{.key_prefix = redis_->keys().prefix(),
                                            .hot_window_events = 50,
                                            .hot_window_age = absl::Minutes(10),
                                            .trim_every = 10},
                           clock);
  ASSERT_TRUE(publisher.AcquireLease(session, "writer", 1).ok());
  auto publish = [&](uint64_t first, uint64_t last) {
    for (uint64_t seq = first; seq <= last; ++seq) {
      v1::Event event;
      event.set_session_id(session);
      event.set_seq(seq);
      event.set_epoch(1);
      ASSERT_TRUE(publisher.Publish(event, 1).ok());
    }
  };
  auto first_seq = [&]() -> std::string {
    auto head =
        (*connection)
            ->Command({"XRANGE", redis_->keys().EventStream(session), "-", "+", "COUNT", "1"});
    return std::string((*head)->element[0]->element[0]->str, (*head)->element[0]->element[0]->len);
  };
  const std::string persisted = redis_->keys().PersistedSeq(session);

  publish(1, 200);  // Nothing persisted: nothing may go, whatever the count limit.
  EXPECT_EQ(first_seq(), "1-0");
  ASSERT_TRUE((*connection)->Command({"SET", persisted, "120"}).ok());
  publish(201, 210);  // Count limit 50 would allow 161; persistence allows only 121.
  EXPECT_EQ(first_seq(), "121-0");
  ASSERT_TRUE((*connection)->Command({"SET", persisted, "210"}).ok());
  publish(211, 220);  // Now the count limit decides.
  EXPECT_EQ(first_seq(), "171-0");
  clock.Advance(absl::Minutes(11));  // Everything so far is older than the age limit.
  publish(221, 230);
  EXPECT_EQ(first_seq(), "211-0");  // Persisted up to 210 only.
}

// A batch goes in as its events would one by one (ids, the lease hash's seq and sub, so
// a single publish continues it), live subscribers get every event, and a batch refused
// for a seq or an epoch writes nothing at all.
TEST_F(Fanout, ABatchPublishesLikeSingleEventsAndARefusedBatchWritesNothing) {
  std::string session = CreateSession();
  auto connection = RedisConnection::Connect(redis_->endpoint(), absl::Seconds(2));
  ASSERT_TRUE(connection.ok());
  EventPublisher publisher(**connection, PublisherOptions{.key_prefix = redis_->keys().prefix()},
                           RealClock::Get());
  ASSERT_TRUE(publisher.AcquireLease(session, "writer", 2).ok());
  auto event = [&](uint64_t seq, bool transient) {
    v1::Event e;
    e.set_session_id(session);
    e.set_seq(seq);
    e.set_epoch(1);
    e.set_transient(transient);
    e.mutable_text_delta()->set_text(absl::StrCat("t", seq));
    return e;
  };
  // A subscriber of the session's channel, confirmed before anything is published.
  auto subscriber = RedisConnection::Connect(redis_->endpoint(), absl::Seconds(2));
  ASSERT_TRUE(subscriber.ok());
  ASSERT_TRUE((*subscriber)->Command({"SUBSCRIBE", redis_->keys().EventChannel(session)}).ok());
  ASSERT_TRUE(
      publisher.PublishBatch({event(1, false), event(1, true), event(2, false), event(3, false)}, 2)
          .ok());
  ASSERT_TRUE(publisher.Publish(event(3, true), 2).ok());  // A single publish continues it.
  ASSERT_TRUE(publisher.PublishBatch({event(4, false)}, 2).ok());
  auto ids = [&] {
    std::vector<std::string> out;
    auto range = (*connection)->Command({"XRANGE", redis_->keys().EventStream(session), "-", "+"});
    for (size_t i = 0; i < (*range)->elements; ++i) {
      const redisReply* id = (*range)->element[i]->element[0];
      out.emplace_back(id->str, id->len);
    }
    return out;
  };
  EXPECT_THAT(ids(), ElementsAre("1-0", "1-1", "2-0", "3-0", "3-1", "4-0"));
  // Every event was published on the channel, once, in order, transient ones included.
  std::vector<std::string> published;
  for (int i = 0; i < 6; ++i) {
    absl::StatusOr<RedisReply> message = (*subscriber)->ReadReplyFor(absl::Seconds(10));
    ASSERT_TRUE(message.ok()) << message.status();
    ASSERT_EQ((*message)->elements, 3u);
    v1::Event received;
    ASSERT_TRUE(received.ParseFromString(ReplyString((*message)->element[2])));
    published.push_back(absl::StrCat(received.seq(), received.transient() ? "t" : ""));
  }
  EXPECT_THAT(published, ElementsAre("1", "1t", "2", "3", "3t", "4"));

  auto reason = [](const absl::Status& status) {
    std::optional<v1::ErrorInfo> info = GetErrorInfo(status);
    return info ? info->reason() : std::string();
  };
  absl::Status gap = publisher.PublishBatch({event(5, false), event(7, false)}, 2);
  EXPECT_EQ(reason(gap), "SEQ_MISMATCH") << gap;
  absl::Status stale = publisher.PublishBatch({event(5, false)}, 1);
  EXPECT_EQ(reason(stale), "LEASE_LOST") << stale;
  EXPECT_EQ(ids().size(), 6u);
  EXPECT_TRUE(publisher.PublishBatch({event(5, false)}, 2).ok());
}

// StreamEvents is recorded by its handler, not by an interceptor (which would put every
// write through gRPC's completion queue twice): the call must still get its SERVER span,
// as a child of the caller's traceparent, and be counted by final status code — once:
// the fixture installs the interceptors, so a call they did not skip is counted twice.
TEST_F(Fanout, StreamsAreTracedAndCountedWithoutAnInterceptor) {
  std::string session = CreateSession();
  auto writer = NewWriter(session, 1);
  ASSERT_TRUE(writer->PublishNext().ok());
  const telemetry::TraceContext caller = telemetry::TraceContext::NewRoot();
  auto client = NewClient();
  grpc::ClientContext context;
  context.AddMetadata("authorization", std::string("Bearer ") + kApiKey);
  context.AddMetadata("traceparent", caller.ToTraceparent());
  auto reader = client->StreamEvents(&context, After(session, 0));
  v1::StreamEventsResponse response;
  ASSERT_TRUE(reader->Read(&response));
  context.TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  StreamReader refused(*client, After(session, 0), "pk_wrong");
  EXPECT_EQ(refused.reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);

  // Spans end when the server is done with the call, just after the client sees it.
  const std::string in_flight =
      absl::StrCat("parley_grpc_server_in_flight{method=\"", kStreamEventsMethod, "\"} 0");
  std::vector<telemetry::SpanData> streams;
  for (int i = 0; i < 500; ++i) {
    streams.clear();
    for (const telemetry::SpanData& span : spans_.spans()) {
      // Spans are named as OpenTelemetry's RPC conventions say: the method without its
      // leading slash.
      if ("/" + span.name == kStreamEventsMethod) streams.push_back(span);
    }
    if (streams.size() >= 2 && absl::StrContains(registry_.RenderText(), in_flight)) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(streams.size(), 2u);
  int traced = 0;
  for (const telemetry::SpanData& span : streams) {
    EXPECT_EQ(span.kind, telemetry::SpanKind::kServer);
    if (span.context.TraceIdHex() != caller.TraceIdHex()) continue;
    ++traced;
    EXPECT_EQ(span.parent_span_id, caller.span_id());
    EXPECT_EQ(std::get<int64_t>(telemetry::AllAttributes(span).at("rpc.grpc.status_code")),
              static_cast<int64_t>(grpc::StatusCode::CANCELLED));
  }
  EXPECT_EQ(traced, 1);
  const std::string metrics = registry_.RenderText();
  for (const char* code : {"CANCELLED", "UNAUTHENTICATED"}) {
    EXPECT_THAT(metrics, HasSubstr(absl::StrCat("parley_grpc_server_handled_total{method=\"",
                                                kStreamEventsMethod, "\",code=\"", code, "\"} 1")));
  }
  EXPECT_THAT(metrics, HasSubstr(in_flight));
}

}  // namespace
}  // namespace parley::gateway::testing
