// The randomized checker: publishers emit K events per session at varying rates while
// hundreds of subscribers connect, drop their connection and resume from their last
// seq at random. Every subscriber must end with exactly 1..K, in order, once each.
// A second checker makes it hard: 16-event buffers, slow readers that get cut, the
// persister running and a hot window of about 10 events, so resumes cross from
// Postgres to Redis to live while publishing goes on.
// Also: Redis restarted mid-stream, killed with a publish in flight, and losing a
// session's data; and the first checker again on a six-node Redis Cluster, once as it
// is and once with a primary killed mid-stream (its replica takes over).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <thread>

#include "absl/random/random.h"
#include "absl/synchronization/notification.h"
#include "common/events/event_log_reader.h"
#include "common/redis_cluster.h"
#include "common/status.h"
#include "tests/fanout/fanout_fixture.h"

namespace parley::gateway::testing {
namespace {

// One logical subscriber of one session. Each connection is a separate callback
// reactor (no thread per stream); when one ends before the subscriber has all K
// events, the next starts after the last seq received.
class CheckingSubscriber {
 public:
  CheckingSubscriber(v1::SessionService::Stub& stub, std::string session, uint64_t k,
                     double disconnect_probability, uint64_t seed)
      : stub_(stub),
        session_(std::move(session)),
        k_(k),
        p_(disconnect_probability),
        bitgen_(std::seed_seq{seed}) {}

  // A Redis outage may end a stream with UNAVAILABLE; such a subscriber resumes
  // then too, as a client should, and counts it (unavailable_resumes()).
  void ResumeOnUnavailable() { resume_on_unavailable_ = true; }
  void Start() { Connect(); }
  int unavailable_resumes() { return unavailable_resumes_.load(); }
  // Resumes after the gateway cut this subscriber as too slow (RESOURCE_EXHAUSTED).
  int cut_resumes() { return cut_resumes_.load(); }
  bool WaitDone(absl::Duration timeout) { return done_.WaitForNotificationWithTimeout(timeout); }
  std::vector<uint64_t> received() {
    absl::MutexLock lock(&mu_);
    return received_;
  }
  int connections() { return connections_.load(); }
  std::string failure() {
    absl::MutexLock lock(&mu_);
    return failure_;
  }

 private:
  class Attempt : public grpc::ClientReadReactor<v1::StreamEventsResponse> {
   public:
    Attempt(CheckingSubscriber* owner, uint64_t after_seq) : owner_(owner) {
      context_.AddMetadata("authorization", std::string("Bearer ") + kApiKey);
      context_.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
      request_.set_session_id(owner->session_);
      request_.set_after_seq(after_seq);
      owner->stub_.async()->StreamEvents(&context_, &request_, this);
      StartRead(&response_);
      StartCall();
    }
    void OnReadDone(bool ok) override {
      if (!ok) return;  // OnDone follows.
      if (response_.has_event() && owner_->Receive(response_.event())) {
        context_.TryCancel();  // Complete, or chose to drop the connection.
      }
      StartRead(&response_);
    }
    void OnDone(const grpc::Status& status) override {
      CheckingSubscriber* owner = owner_;
      delete this;
      owner->Ended(status);
    }

   private:
    CheckingSubscriber* owner_;
    grpc::ClientContext context_;
    v1::StreamEventsRequest request_;
    v1::StreamEventsResponse response_;
  };

  void Connect() {
    uint64_t after;
    {
      absl::MutexLock lock(&mu_);
      after = received_.empty() ? 0 : received_.back();
    }
    ++connections_;
    new Attempt(this, after);
  }

  // Returns true when this connection should end (complete, or a random drop).
  bool Receive(const v1::Event& event) {
    absl::MutexLock lock(&mu_);
    if (event.transient()) return false;
    uint64_t expected = received_.empty() ? 1 : received_.back() + 1;
    if (event.seq() != expected && failure_.empty()) {
      failure_ =
          "expected seq " + std::to_string(expected) + ", got " + std::to_string(event.seq());
    }
    received_.push_back(event.seq());
    if (received_.size() >= k_) return true;
    return absl::Bernoulli(bitgen_, p_);
  }

  void Ended(const grpc::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (received_.size() >= k_ || !failure_.empty()) {
        done_.Notify();
        return;
      }
      const bool unavailable =
          resume_on_unavailable_ && status.error_code() == grpc::StatusCode::UNAVAILABLE;
      if (unavailable) ++unavailable_resumes_;
      if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) ++cut_resumes_;
      if (!unavailable && status.error_code() != grpc::StatusCode::CANCELLED &&
          status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) {
        failure_ = "stream ended with " + std::to_string(status.error_code()) + ": " +
                   status.error_message();
        done_.Notify();
        return;
      }
    }
    Connect();  // Resume from the last seq received.
  }

  v1::SessionService::Stub& stub_;
  const std::string session_;
  const uint64_t k_;
  const double p_;
  absl::Mutex mu_;
  std::vector<uint64_t> received_ ABSL_GUARDED_BY(mu_);
  std::string failure_ ABSL_GUARDED_BY(mu_);
  absl::BitGen bitgen_ ABSL_GUARDED_BY(mu_);
  std::atomic<int> connections_{0};
  std::atomic<bool> resume_on_unavailable_{false};
  std::atomic<int> unavailable_resumes_{0};
  std::atomic<int> cut_resumes_{0};
  absl::Notification done_;
};

// The randomized checker's workload, on the Redis the hub uses (a single server or a
// cluster): 20 sessions, 15 subscribers each dropping and resuming at random, 4
// publisher threads at varying rates. `midway`, when given, runs on the first
// publisher thread once half of its events are out (a failover): publishers then ride
// out failed publishes and subscribers resume after UNAVAILABLE.
class Checker : public FanoutFixture {
 protected:
  void RunRandomizedChecker(
      std::function<void(const std::vector<std::string>& sessions)> midway = nullptr) {
    constexpr int kSessions = 20;
    constexpr int kSubscribersPerSession = 15;  // 300 subscribers.
    constexpr uint64_t kEvents = 200;
    const RedisEndpoint redis = HubRedis();
    std::vector<std::string> sessions;
    for (int i = 0; i < kSessions; ++i) sessions.push_back(CreateSession());

    std::vector<std::unique_ptr<v1::SessionService::Stub>> clients;
    for (int i = 0; i < 4; ++i) {
      grpc::ChannelArguments args;
      args.SetInt("parley.test.channel", i);  // Separate connections.
      clients.push_back(v1::SessionService::NewStub(
          grpc::CreateCustomChannel(gateway_target(), grpc::InsecureChannelCredentials(), args)));
    }
    std::vector<std::unique_ptr<CheckingSubscriber>> subscribers;
    for (int s = 0; s < kSessions; ++s) {
      for (int j = 0; j < kSubscribersPerSession; ++j) {
        subscribers.push_back(std::make_unique<CheckingSubscriber>(
            *clients[subscribers.size() % clients.size()], sessions[s], kEvents, 0.03,
            /*seed=*/subscribers.size()));
        if (midway) subscribers.back()->ResumeOnUnavailable();
      }
    }

    // Subscribers join while publishing is under way: some start from the beginning of
    // history, some mid-stream, some after everything was published.
    std::thread joiner([&] {
      absl::BitGen bitgen;
      for (auto& subscriber : subscribers) {
        subscriber->Start();
        if (absl::Bernoulli(bitgen, 0.1)) absl::SleepFor(absl::Milliseconds(2));
      }
    });
    std::vector<std::thread> publishers;
    for (int p = 0; p < 4; ++p) {
      publishers.emplace_back([&, p] {
        absl::BitGen bitgen;
        std::vector<std::unique_ptr<Writer>> writers;
        for (int s = p; s < kSessions; s += 4) writers.push_back(NewWriter(sessions[s], 1, &redis));
        for (uint64_t n = 0; n < kEvents; ++n) {
          if (p == 0 && n == kEvents / 2 && midway) midway(sessions);
          for (auto& writer : writers) {
            if (midway) {
              ASSERT_TRUE(PublishNextThroughFailover(*writer).ok());
              continue;
            }
            ASSERT_TRUE(writer->PublishNext().ok());
            if (absl::Bernoulli(bitgen, 0.05)) {
              ASSERT_TRUE(writer->Publish(writer->last_seq, "retry", /*transient=*/true).ok());
            }
          }
          // Varying rates: bursts and pauses.
          if (absl::Bernoulli(bitgen, 0.2))
            absl::SleepFor(absl::Microseconds(absl::Uniform(bitgen, 0, 3000)));
        }
      });
    }
    for (auto& t : publishers) t.join();
    joiner.join();

    int total_connections = 0;
    for (auto& subscriber : subscribers) {
      ASSERT_TRUE(subscriber->WaitDone(absl::Seconds(90))) << "a subscriber did not finish";
      EXPECT_EQ(subscriber->failure(), "");
      EXPECT_EQ(subscriber->received(), Range(1, kEvents));
      total_connections += subscriber->connections();
    }
    // The disconnects really happened: far more connections than subscribers.
    EXPECT_GT(total_connections, static_cast<int>(subscribers.size()) * 2);
  }

  // Publishes the writer's next event until Redis holds it, within 60 s. A publish that
  // failed during a failover may or may not have run, and a write the killed primary
  // acknowledged may not have reached its replica: the writer goes on from the last
  // seq Redis holds, publishing again (the same bytes) what the replica missed;
  // subscribers that already have a seq skip it.
  absl::Status PublishNextThroughFailover(Writer& writer) {
    const uint64_t target = writer.last_seq + 1;
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    const EventLogReader log(redis_->keys());
    while (writer.last_seq < target) {
      absl::Status published = writer.PublishNext();
      if (published.ok()) continue;
      if (absl::Now() > deadline) return published;
      absl::SleepFor(absl::Milliseconds(50));
      absl::StatusOr<uint64_t> last = log.LastSeq(*writer.connection, writer.session_id);
      if (last.ok()) writer.last_seq = *last;
    }
    return absl::OkStatus();
  }
};

TEST_F(Checker, HundredsOfSubscribersResumingAtRandomEachSeeExactlyOneToK) {
  RunRandomizedChecker();
}

// The same checker on a six-node Redis Cluster of the test's own: the hub SSUBSCRIBEs
// each session's channel on its slot's primary and writers SPUBLISH there.
class ClusterChecker : public Checker {
 protected:
  void SetUp() override {
    auto cluster = parley::testing::PrivateRedisCluster::Start();
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *std::move(cluster);
    FanoutFixture::SetUp();
  }
  RedisEndpoint HubRedis() override { return cluster_->endpoint(); }

  std::unique_ptr<parley::testing::PrivateRedisCluster> cluster_;
};

TEST_F(ClusterChecker, HundredsOfSubscribersResumingAtRandomOnARedisClusterEachSeeExactlyOneToK) {
  RunRandomizedChecker();
}

TEST_F(ClusterChecker, APrimaryKilledMidStreamIsReplacedByItsReplicaWithoutAGapForAnyone) {
  int killed_port = 0;
  RunRandomizedChecker([&](const std::vector<std::string>& sessions) {
    // The primary of the first session's slot (and of whichever others share it).
    const std::string channel = redis_->keys().EventChannel(sessions.front());
    absl::StatusOr<int> killed = cluster_->KillPrimaryOf(RedisKeySlot(channel), absl::Seconds(30));
    ASSERT_TRUE(killed.ok()) << killed.status();
    killed_port = *killed;
  });
  EXPECT_NE(killed_port, 0) << "the primary was not killed";
}

// A subscriber that reads slowly on a thread of its own. Now and then it pauses; and
// once, at the live tip past its first 20 events (by then its stream is live: a stream
// still reading history pauses the read instead of cutting), it stops reading until the
// publisher is
// 250 events (2 MB) ahead (a state, not a duration: bounded at 10 s), so its 16-event
// buffer overflows and the gateway cuts it. After a cut it checks the cursor it was given
// against what it holds, and resumes from its last seq. Bounded: at most 1000
// connections, each with a 120 s deadline.
class SlowReader {
 public:
  SlowReader(v1::SessionService::Stub& stub, std::string session, uint64_t k,
             const std::atomic<uint64_t>& published, uint64_t seed)
      : stub_(stub),
        session_(std::move(session)),
        k_(k),
        published_(published),
        bitgen_(std::seed_seq{seed}) {
    thread_ = std::thread([this] { Run(); });
  }
  ~SlowReader() {
    if (thread_.joinable()) thread_.join();
  }
  void Join() { thread_.join(); }
  const std::vector<uint64_t>& received() const { return received_; }
  const std::string& failure() const { return failure_; }
  int cuts() const { return cuts_; }
  int connections() const { return connections_; }

 private:
  void Run() {
    while (received_.size() < k_ && failure_.empty() && connections_ < 1000) {
      ++connections_;
      grpc::ClientContext context;
      context.AddMetadata("authorization", std::string("Bearer ") + kApiKey);
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
      v1::StreamEventsRequest request;
      request.set_session_id(session_);
      request.set_after_seq(received_.empty() ? 0 : received_.back());
      auto reader = stub_.StreamEvents(&context, request);
      v1::StreamEventsResponse response;
      while (reader->Read(&response)) {
        if (!response.has_event() || response.event().transient()) continue;
        const uint64_t expected = received_.empty() ? 1 : received_.back() + 1;
        if (response.event().seq() != expected) {
          failure_ = "expected seq " + std::to_string(expected) + ", got " +
                     std::to_string(response.event().seq());
        }
        received_.push_back(response.event().seq());
        if (received_.size() >= k_ || !failure_.empty()) {
          context.TryCancel();
          break;
        }
        const uint64_t held = received_.back();
        if (!stalled_once_ && held >= 20 && held + 5 >= published_.load() && held + 250 < k_) {
          stalled_once_ = true;
          parley::testing::WaitFor(absl::Seconds(10),
                                   [&] { return published_.load() >= held + 250; });
        } else if (absl::Bernoulli(bitgen_, 0.05)) {
          absl::SleepFor(absl::Milliseconds(absl::Uniform(bitgen_, 20, 100)));
        }
      }
      grpc::Status status = reader->Finish();
      if (received_.size() >= k_ || !failure_.empty()) return;
      if (status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) {
        failure_ = "stream ended with " + std::to_string(status.error_code()) + ": " +
                   status.error_message();
        return;
      }
      ++cuts_;
      auto info = GetErrorInfo(FromGrpcStatus(status));
      const uint64_t held = received_.empty() ? 0 : received_.back();
      if (!info.has_value() || info->metadata().at("last_seq") != std::to_string(held)) {
        failure_ = "cut with cursor " + (info ? info->metadata().at("last_seq") : "none") +
                   " while holding 1.." + std::to_string(held);
      }
    }
  }

  v1::SessionService::Stub& stub_;
  const std::string session_;
  const uint64_t k_;
  const std::atomic<uint64_t>& published_;  // Of this session, by the publisher.
  absl::BitGen bitgen_;
  bool stalled_once_ = false;
  std::vector<uint64_t> received_;
  std::string failure_;
  int cuts_ = 0;
  int connections_ = 0;
  std::thread thread_;
};

class HotWindowChecker : public PersistingFanout {};

// Proves: with 16-event buffers, slow readers, the persister moving events to Postgres
// and a hot window of about 10 events, every subscriber still ends with exactly 1..K,
// whether it resumed from Postgres, from Redis or straight into the live stream.
// Making sure the hard paths were taken: resumes read events from the store (its
// ReadEvents served calls) and the Redis streams were trimmed, so early seqs existed
// only in Postgres; any cut's cursor must match what the reader held. (Slow readers
// stall once at the live tip to get cut, but that is not yet certain: see below.)
TEST_F(HotWindowChecker, SlowReadersResumingAcrossStoreRedisAndLiveEachSeeExactlyOneToK) {
  constexpr int kSessions = 4;
  constexpr uint64_t kEvents = 400;
  std::vector<std::string> sessions;
  for (int i = 0; i < kSessions; ++i) sessions.push_back(CreateSession());

  auto slow_client = NewSlowClient();
  auto client = NewClient();

  std::vector<std::unique_ptr<CheckingSubscriber>> droppers;
  for (int s = 0; s < kSessions; ++s) {
    for (int j = 0; j < 4; ++j) {
      droppers.push_back(std::make_unique<CheckingSubscriber>(*client, sessions[s], kEvents, 0.05,
                                                              /*seed=*/droppers.size()));
    }
  }
  std::vector<std::atomic<uint64_t>> published(kSessions);  // Outlives the readers.
  std::vector<std::unique_ptr<SlowReader>> slow_readers;
  std::vector<std::thread> publishers;
  // 8 KiB events: what the transport holds for a reader that stopped (its HTTP/2 window,
  // the server's write buffer) is a small part of the 250 events a stalled reader lets
  // pile up, so the gateway's buffer overflows.
  const std::string text(8192, 'x');
  // Slow readers are there from the start, at the live tip, where their stall backs up
  // live events; once cut, they resume from seqs Redis has trimmed.
  for (int s = 0; s < kSessions; ++s) {
    for (int j = 0; j < 3; ++j) {
      slow_readers.push_back(std::make_unique<SlowReader>(*slow_client, sessions[s], kEvents,
                                                          published[s], slow_readers.size()));
    }
  }
  for (int s = 0; s < kSessions; ++s) {
    // About 2 ms an event on average: a run of a second or so, in bursts and pauses.
    publishers.emplace_back([&, s] {
      PublishWithHotWindow(sessions[s], kEvents, text, published[s], /*transient_probability=*/0,
                           absl::Milliseconds(8));
    });
  }
  // The droppers join while publishing goes on, so they start in Postgres, in Redis or
  // at the live tip.
  absl::BitGen bitgen;
  for (auto& subscriber : droppers) {
    subscriber->Start();
    absl::SleepFor(absl::Milliseconds(absl::Uniform(bitgen, 0, 10)));
  }
  for (auto& t : publishers) t.join();

  int cuts = 0;
  for (auto& reader : slow_readers) {
    reader->Join();
    EXPECT_EQ(reader->failure(), "");
    EXPECT_EQ(reader->received(), Range(1, kEvents));
    cuts += reader->cuts();
  }
  for (auto& subscriber : droppers) {
    ASSERT_TRUE(subscriber->WaitDone(absl::Seconds(90))) << "a subscriber did not finish";
    EXPECT_EQ(subscriber->failure(), "");
    EXPECT_EQ(subscriber->received(), Range(1, kEvents));
  }
  // Not asserted: a stalled reader is cut in only about half the runs here (the
  // transport absorbs more than expected). SlowFanout.ASlowConsumerIsCutWithItsCursor…
  // proves the cut and its cursor deterministically; this run records what happened.
  RecordProperty("slow_reader_cuts", cuts);
  EXPECT_GT(StoreCalls("ReadEvents"), 0) << "no resume read from the store";
  ExpectTrimmed(sessions);
}

class RedisFailures : public PrivateRedisFanout {};

TEST_F(RedisFailures, RedisRestartMidStreamResumesEveryStreamWithoutAGap) {
  const std::string session = CreateSession();
  const RedisEndpoint endpoint = private_redis_->endpoint();
  constexpr uint64_t kEvents = 300;
  auto client = NewClient();
  std::vector<std::unique_ptr<CheckingSubscriber>> subscribers;
  for (int i = 0; i < 10; ++i) {
    subscribers.push_back(std::make_unique<CheckingSubscriber>(*client, session, kEvents, 0.0, i));
    subscribers.back()->ResumeOnUnavailable();
    subscribers.back()->Start();
  }
  std::unique_ptr<Writer> writer = NewWriter(session, 1, &endpoint);
  for (uint64_t n = 0; n < kEvents; ++n) {
    if (n == kEvents / 2) {
      ASSERT_TRUE(private_redis_->Restart().ok());
      writer = NewWriter(session, 1, &endpoint);  // Reconnects; the lease hash was kept.
      ASSERT_EQ(writer->last_seq, kEvents / 2);
    }
    ASSERT_TRUE(writer->PublishNext().ok());
    if (n % 10 == 0) absl::SleepFor(absl::Milliseconds(1));
  }
  for (auto& subscriber : subscribers) {
    ASSERT_TRUE(subscriber->WaitDone(absl::Seconds(90)));
    EXPECT_EQ(subscriber->failure(), "");
    EXPECT_EQ(subscriber->received(), Range(1, kEvents));
    // The stream rode out the restart on its one connection; a new one only after the
    // gateway said UNAVAILABLE (never after a silent end or any other error).
    EXPECT_EQ(subscriber->connections(), 1 + subscriber->unavailable_resumes());
  }
}

// Proves: Redis killed (-9, no clean shutdown) while a publish is in flight loses no
// event for any subscriber: each ends with exactly 1..K, on its one connection or
// resuming only after UNAVAILABLE, and the writer continues once Redis is back.
// Making sure the kill hit a publish in flight: the writer publishes without pause when
// Redis is killed, and Redis is started again only after a publish failed UNAVAILABLE.
// (Should the writer get near the end first, it keeps publishing transient events in a
// tight loop until the kill lands, so a publish is always in flight.)
TEST_F(RedisFailures, RedisKilledWithAPublishInFlightLosesNoEventForAnySubscriber) {
  const std::string session = CreateSession();
  const RedisEndpoint endpoint = private_redis_->endpoint();
  constexpr uint64_t kEvents = 2000;
  auto client = NewClient();
  std::vector<std::unique_ptr<CheckingSubscriber>> subscribers;
  for (int i = 0; i < 10; ++i) {
    subscribers.push_back(std::make_unique<CheckingSubscriber>(*client, session, kEvents, 0.0, i));
    subscribers.back()->ResumeOnUnavailable();
    subscribers.back()->Start();
  }
  // session-svc's part: after a failed publish, reconnect, take the lease again and go
  // on from the last seq Redis holds (the failed publish may or may not have landed).
  auto reconnect = [&]() -> std::unique_ptr<Writer> {
    for (int attempt = 0; attempt < 600; ++attempt) {
      auto connection = RedisConnection::Connect(endpoint, absl::Milliseconds(500));
      if (connection.ok()) {
        auto writer = std::make_unique<Writer>();
        writer->connection = *std::move(connection);
        writer->publisher = std::make_unique<EventPublisher>(
            *writer->connection, PublisherOptions{.key_prefix = redis_->keys().prefix()},
            RealClock::Get());
        writer->session_id = session;
        writer->lease_epoch = 1;
        auto last = writer->publisher->AcquireLease(session, "writer", 1);
        if (last.ok()) {
          writer->last_seq = *last;
          return writer;
        }
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    return nullptr;
  };
  std::atomic<uint64_t> published{0};
  std::atomic<int> failed_publishes{0};
  std::thread publisher([&] {
    std::unique_ptr<Writer> writer = reconnect();
    ASSERT_NE(writer, nullptr);
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    for (int n = 0; n < 10'000'000 && writer->last_seq < kEvents && absl::Now() < deadline; ++n) {
      const bool hold_back = failed_publishes.load() == 0 && writer->last_seq >= kEvents - 50;
      absl::Status status = hold_back
                                ? writer->Publish(writer->last_seq, "retry", /*transient=*/true)
                                : writer->PublishNext();
      if (status.ok()) {
        published = writer->last_seq;
        continue;
      }
      ASSERT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
      ++failed_publishes;
      writer = reconnect();
      ASSERT_NE(writer, nullptr) << "Redis did not come back";
    }
  });
  const bool under_way =
      parley::testing::WaitFor(absl::Seconds(30), [&] { return published.load() >= kEvents / 3; });
  ASSERT_TRUE(private_redis_->Kill().ok());
  const bool hit =
      parley::testing::WaitFor(absl::Seconds(30), [&] { return failed_publishes.load() > 0; });
  ASSERT_TRUE(private_redis_->StartAgain().ok());
  publisher.join();
  ASSERT_TRUE(under_way) << "the writer never got going";
  ASSERT_TRUE(hit) << "no publish failed: the kill hit nothing in flight";

  for (auto& subscriber : subscribers) {
    ASSERT_TRUE(subscriber->WaitDone(absl::Seconds(90)));
    EXPECT_EQ(subscriber->failure(), "");
    EXPECT_EQ(subscriber->received(), Range(1, kEvents));
    // 2000 events in a burst may exceed a stream's 1024-event buffer once Redis is back:
    // a cut (with its cursor) is allowed here, a silent end or any other error is not.
    EXPECT_EQ(subscriber->connections(),
              1 + subscriber->unavailable_resumes() + subscriber->cut_resumes());
  }
}

TEST_F(RedisFailures, LostRedisHistoryIsReportedAsAnEpochChange) {
  const std::string session = CreateSession();
  const RedisEndpoint endpoint = private_redis_->endpoint();
  auto writer = NewWriter(session, 1, &endpoint);
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(writer->PublishNext().ok());
  // Events 1..5 reached Postgres; 6..8 were only in Redis.
  store::v1::AppendEventsRequest persisted;
  persisted.set_tenant_id(kTenant);
  persisted.set_session_id(session);
  for (uint64_t seq = 1; seq <= 5; ++seq) {
    v1::Event* event = persisted.add_events();
    event->set_session_id(session);
    event->set_seq(seq);
    event->set_epoch(1);
    event->set_turn_id("turn_1");
    event->mutable_text_delta()->set_text("t" + std::to_string(seq));
  }
  ASSERT_TRUE(store::AppendEventBatch(*pool_, persisted).ok());

  auto client = NewClient();
  v1::StreamEventsRequest request;
  request.set_session_id(session);
  request.set_after_seq(0);
  StreamReader stream(*client, request);
  ASSERT_EQ(Seqs(stream.ReadEvents(8)), Range(1, 8));

  // Redis loses everything. The writer notices (its lease is gone), starts a new
  // epoch in the store and continues after the durable seq. The store and publisher
  // calls below stand in for what parley-session does by itself after a flush (its
  // own test is in tests/session); this test is about what subscribers see.
  auto flushed = RedisConnection::Connect(endpoint, absl::Seconds(2));
  ASSERT_TRUE(flushed.ok());
  ASSERT_TRUE((*flushed)->Command({"FLUSHALL"}).ok());
  EXPECT_EQ(writer->PublishNext().code(), absl::StatusCode::kFailedPrecondition);
  grpc::ClientContext context;
  store::v1::AdvanceEpochRequest advance;
  advance.set_tenant_id(kTenant);
  advance.set_session_id(session);
  advance.set_expected_epoch(1);
  store::v1::AdvanceEpochResponse advanced;
  ASSERT_TRUE(store_->AdvanceEpoch(&context, advance, &advanced).ok());
  ASSERT_EQ(advanced.epoch(), 2u);
  ASSERT_EQ(advanced.resume_after_seq(), 5u);
  auto successor = NewWriter(session, 2, &endpoint);
  ASSERT_TRUE(successor->publisher->AcquireLease(session, "writer", 2, 5).ok());
  successor->last_seq = 5;
  successor->history_epoch = 2;
  ASSERT_TRUE(successor->PublishNext().ok());  // Seq 6 of epoch 2.

  // The next message that is not a keepalive (the stream may have idled long enough for
  // one on a loaded machine).
  auto next = [](grpc::ClientReaderInterface<v1::StreamEventsResponse>& reader,
                 v1::StreamEventsResponse* response) {
    while (reader.Read(response)) {
      if (!response->has_keepalive()) return true;
    }
    return false;
  };
  v1::StreamEventsResponse response;
  ASSERT_TRUE(next(*stream.reader, &response));
  ASSERT_TRUE(response.has_epoch_changed()) << response.DebugString();
  EXPECT_EQ(response.epoch_changed().old_epoch(), 1u);
  EXPECT_EQ(response.epoch_changed().new_epoch(), 2u);
  EXPECT_EQ(response.epoch_changed().resume_after_seq(), 5u);
  ASSERT_TRUE(next(*stream.reader, &response));
  EXPECT_EQ(response.event().seq(), 6u);
  EXPECT_EQ(response.event().epoch(), 2u);

  // A client resuming with a cursor of the old epoch is told to start over.
  v1::StreamEventsRequest stale;
  stale.set_session_id(session);
  stale.set_after_seq(8);
  stale.set_epoch(1);
  StreamReader resumed(*client, stale);
  ASSERT_TRUE(next(*resumed.reader, &response));
  ASSERT_TRUE(response.has_epoch_changed());
  EXPECT_EQ(response.epoch_changed().resume_after_seq(), 0u);
  EXPECT_EQ(Seqs(resumed.ReadEvents(6)), Range(1, 6));
}

}  // namespace
}  // namespace parley::gateway::testing
