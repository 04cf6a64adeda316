// The randomized checker: publishers emit K events per session at varying rates while
// hundreds of subscribers connect, drop their connection and resume from their last
// seq at random. Every subscriber must end with exactly 1..K, in order, once each.
// Also: Redis restarted mid-stream, and Redis losing a session's data.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "absl/random/random.h"
#include "absl/synchronization/notification.h"
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

  void Start() { Connect(); }
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
      if (status.error_code() != grpc::StatusCode::CANCELLED &&
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
  absl::Notification done_;
};

class Checker : public FanoutFixture {};

TEST_F(Checker, HundredsOfSubscribersResumingAtRandomEachSeeExactlyOneToK) {
  constexpr int kSessions = 20;
  constexpr int kSubscribersPerSession = 15;  // 300 subscribers.
  constexpr uint64_t kEvents = 200;
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
      for (int s = p; s < kSessions; s += 4) writers.push_back(NewWriter(sessions[s], 1));
      for (uint64_t n = 0; n < kEvents; ++n) {
        for (auto& writer : writers) {
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

class RedisFailures : public FanoutFixture {
 protected:
  void SetUp() override {
    auto redis = parley::testing::PrivateRedis::Start();
    ASSERT_TRUE(redis.ok()) << redis.status();
    private_redis_ = *std::move(redis);
    FanoutFixture::SetUp();
  }
  RedisEndpoint HubRedis() override { return private_redis_->endpoint(); }

  std::unique_ptr<parley::testing::PrivateRedis> private_redis_;
};

TEST_F(RedisFailures, RedisRestartMidStreamResumesEveryStreamWithoutAGap) {
  const std::string session = CreateSession();
  const RedisEndpoint endpoint = private_redis_->endpoint();
  constexpr uint64_t kEvents = 300;
  auto client = NewClient();
  std::vector<std::unique_ptr<CheckingSubscriber>> subscribers;
  for (int i = 0; i < 10; ++i) {
    subscribers.push_back(std::make_unique<CheckingSubscriber>(*client, session, kEvents, 0.0, i));
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
  // epoch in the store and continues after the durable seq.
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

  v1::StreamEventsResponse response;
  ASSERT_TRUE(stream.reader->Read(&response));
  ASSERT_TRUE(response.has_epoch_changed()) << response.DebugString();
  EXPECT_EQ(response.epoch_changed().old_epoch(), 1u);
  EXPECT_EQ(response.epoch_changed().new_epoch(), 2u);
  EXPECT_EQ(response.epoch_changed().resume_after_seq(), 5u);
  ASSERT_TRUE(stream.reader->Read(&response));
  EXPECT_EQ(response.event().seq(), 6u);
  EXPECT_EQ(response.event().epoch(), 2u);

  // A client resuming with a cursor of the old epoch is told to start over.
  v1::StreamEventsRequest stale;
  stale.set_session_id(session);
  stale.set_after_seq(8);
  stale.set_epoch(1);
  StreamReader resumed(*client, stale);
  ASSERT_TRUE(resumed.reader->Read(&response));
  ASSERT_TRUE(response.has_epoch_changed());
  EXPECT_EQ(response.epoch_changed().resume_after_seq(), 0u);
  EXPECT_EQ(Seqs(resumed.ReadEvents(6)), Range(1, 6));
}

}  // namespace
}  // namespace parley::gateway::testing
