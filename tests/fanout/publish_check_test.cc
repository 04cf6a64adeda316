// EventPublisher::CheckPublished against a real Redis: what a writer learns about a batch
// whose publish broke off or was refused, so that only a real second writer stops a
// turn. "Ran but the reply was lost" and "never ran" are made by a connection that
// passes commands to the real server and then drops the reply, or drops them before
// sending; "a failover lost acknowledged events" by restoring the session's keys as a
// replica that missed the newest writes would hold them (DUMP before, RESTORE after).
// Also: WAIT behind every publish when the publisher is told to wait for replicas.
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/events/publisher.h"
#include "common/status.h"
#include "tests/harness/services.h"

namespace parley {
namespace {

using Outcome = PublishCheck::Outcome;

// The ErrorInfo reason of a refused publish ("SEQ_MISMATCH", "LEASE_LOST"); "" if none.
std::string ReasonOf(const absl::Status& status) {
  std::optional<v1::ErrorInfo> info = GetErrorInfo(status);
  return info ? info->reason() : "";
}

// The real connection, except that the next pipeline can be lost on the way (never
// sent) or on the way back (run by the server, its replies dropped), as a connection
// cut by a dying primary would do. Either way the caller sees UNAVAILABLE.
class CuttableConnection final : public RedisConnection {
 public:
  enum class Cut { kNone, kBeforeSending, kAfterRunning };
  explicit CuttableConnection(RedisConnection& real) : real_(real) {}
  void CutNext(Cut cut) { cut_ = cut; }

  absl::StatusOr<std::vector<absl::StatusOr<RedisReply>>> PipelineEach(
      const std::vector<std::vector<std::string>>& commands) override {
    const Cut cut = cut_;
    cut_ = Cut::kNone;
    if (cut == Cut::kBeforeSending) return absl::UnavailableError("cut before sending");
    auto replies = real_.PipelineEach(commands);
    if (cut == Cut::kAfterRunning) return absl::UnavailableError("cut before the reply");
    return replies;
  }
  absl::StatusOr<RedisReply> ReadReply() override { return real_.ReadReply(); }
  absl::StatusOr<RedisReply> ReadReplyFor(absl::Duration timeout) override {
    return real_.ReadReplyFor(timeout);
  }
  bool broken() const override { return real_.broken(); }

 private:
  RedisConnection& real_;
  Cut cut_ = Cut::kNone;
};

class PublishCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto redis = testing::TestRedis::Create();
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    connection_ = std::make_unique<CuttableConnection>(redis_->connection());
    publisher_ = NewPublisher(*connection_);
    ASSERT_TRUE(publisher_->AcquireLease(kSession, "owner", kEpoch).ok());
  }

  std::unique_ptr<EventPublisher> NewPublisher(RedisConnection& connection,
                                               PublisherOptions options = {}) {
    options.key_prefix = redis_->keys().prefix();
    return std::make_unique<EventPublisher>(connection, std::move(options), RealClock::Get());
  }

  // `count` text deltas following seq `after`.
  static std::vector<v1::Event> Deltas(uint64_t after, int count, const std::string& text) {
    std::vector<v1::Event> events;
    for (int i = 1; i <= count; ++i) {
      v1::Event event;
      event.set_session_id(kSession);
      event.set_seq(after + i);
      event.set_epoch(1);
      event.mutable_text_delta()->set_text(absl::StrCat(text, i));
      events.push_back(std::move(event));
    }
    return events;
  }

  // A retry notice after seq `after` (transient: it carries that seq).
  static v1::Event Transient(uint64_t after) {
    v1::Event event;
    event.set_session_id(kSession);
    event.set_seq(after);
    event.set_epoch(1);
    event.set_transient(true);
    event.mutable_retry_scheduled()->set_attempt(1);
    return event;
  }

  PublishCheck Check(const std::vector<v1::Event>& events, uint64_t epoch = kEpoch) {
    absl::StatusOr<PublishCheck> check = publisher_->CheckPublished(events, epoch);
    EXPECT_TRUE(check.ok()) << check.status();
    return check.value_or(PublishCheck{});
  }

  std::vector<std::string> SessionKeys() const {
    return {redis_->keys().Lease(kSession), redis_->keys().EventStream(kSession)};
  }
  // The session's keys as they are now, to be put back by Restore().
  std::vector<std::string> Dump() {
    std::vector<std::string> dumps;
    for (const std::string& key : SessionKeys()) {
      auto dump = redis_->connection().Command({"DUMP", key});
      EXPECT_TRUE(dump.ok()) << dump.status();
      dumps.push_back(dump.ok() ? ReplyString(dump->get()) : "");
    }
    return dumps;
  }
  void Restore(const std::vector<std::string>& dumps) {
    const std::vector<std::string> keys = SessionKeys();
    for (size_t i = 0; i < keys.size(); ++i) {
      auto restored = redis_->connection().Command({"RESTORE", keys[i], "0", dumps[i], "REPLACE"});
      ASSERT_TRUE(restored.ok()) << restored.status();
    }
  }

  // Seqs of the durable entries of the stream, oldest first.
  std::vector<uint64_t> StreamSeqs() {
    const EventLogReader log(redis_->keys());
    auto entries = log.ReadForward(redis_->connection(), kSession, EntryId{}, 1000);
    EXPECT_TRUE(entries.ok()) << entries.status();
    std::vector<uint64_t> seqs;
    for (const EventLogEntry& entry : entries.value_or(std::vector<EventLogEntry>{})) {
      if (entry.id.durable()) seqs.push_back(entry.id.seq);
    }
    return seqs;
  }

  static constexpr char kSession[] = "ses_check";
  static constexpr uint64_t kEpoch = 3;
  std::unique_ptr<testing::TestRedis> redis_;
  std::unique_ptr<CuttableConnection> connection_;
  std::unique_ptr<EventPublisher> publisher_;
};

TEST_F(PublishCheckTest, ABatchThatRanButLostItsReplyIsPublished) {
  ASSERT_TRUE(publisher_->PublishBatch(Deltas(0, 3, "a"), kEpoch).ok());
  const std::vector<v1::Event> batch = Deltas(3, 4, "b");
  connection_->CutNext(CuttableConnection::Cut::kAfterRunning);
  EXPECT_EQ(publisher_->PublishBatch(batch, kEpoch).code(), absl::StatusCode::kUnavailable);
  // Sending it again would be refused: that is why a writer looks first.
  EXPECT_EQ(ReasonOf(publisher_->PublishBatch(batch, kEpoch)), "SEQ_MISMATCH");
  const PublishCheck check = Check(batch);
  EXPECT_EQ(check.outcome, Outcome::kPublished);
  EXPECT_EQ(check.last_seq, 7u);
  EXPECT_EQ(StreamSeqs(), (std::vector<uint64_t>{1, 2, 3, 4, 5, 6, 7}));
}

TEST_F(PublishCheckTest, ABatchThatNeverRanIsNotPublishedAndGoesOutOnceWhenSentAgain) {
  ASSERT_TRUE(publisher_->PublishBatch(Deltas(0, 2, "a"), kEpoch).ok());
  const std::vector<v1::Event> batch = Deltas(2, 3, "b");
  connection_->CutNext(CuttableConnection::Cut::kBeforeSending);
  EXPECT_EQ(publisher_->PublishBatch(batch, kEpoch).code(), absl::StatusCode::kUnavailable);
  const PublishCheck check = Check(batch);
  EXPECT_EQ(check.outcome, Outcome::kNotPublished);
  EXPECT_EQ(check.last_seq, 2u);
  ASSERT_TRUE(publisher_->PublishBatch(batch, kEpoch).ok());
  EXPECT_EQ(StreamSeqs(), (std::vector<uint64_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(Check(batch).outcome, Outcome::kPublished);
}

TEST_F(PublishCheckTest, ATransientOnlyBatchIsToldApartByItsContent) {
  ASSERT_TRUE(publisher_->PublishBatch(Deltas(0, 2, "a"), kEpoch).ok());
  const std::vector<v1::Event> retry = {Transient(2)};
  EXPECT_EQ(Check(retry).outcome, Outcome::kNotPublished);
  connection_->CutNext(CuttableConnection::Cut::kAfterRunning);
  EXPECT_EQ(publisher_->PublishBatch(retry, kEpoch).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Check(retry).outcome, Outcome::kPublished);
}

TEST_F(PublishCheckTest, EventsAFailoverLostMakeTheStreamBehind) {
  ASSERT_TRUE(publisher_->PublishBatch(Deltas(0, 2, "a"), kEpoch).ok());
  const std::vector<std::string> replica = Dump();  // The replica got up to seq 2 ...
  ASSERT_TRUE(publisher_->PublishBatch(Deltas(2, 3, "b"), kEpoch).ok());  // ... not these.
  ASSERT_NO_FATAL_FAILURE(Restore(replica));                              // It is the primary now.
  const std::vector<v1::Event> next = Deltas(5, 2, "c");
  EXPECT_EQ(ReasonOf(publisher_->PublishBatch(next, kEpoch)), "SEQ_MISMATCH");
  const PublishCheck check = Check(next);
  EXPECT_EQ(check.outcome, Outcome::kStreamBehind);
  EXPECT_EQ(check.last_seq, 2u);
  // The writer publishes the lost events again, then its batch, at the same seqs.
  std::vector<v1::Event> again = Deltas(2, 3, "b");
  again.insert(again.end(), next.begin(), next.end());
  ASSERT_TRUE(publisher_->PublishBatch(again, kEpoch).ok());
  EXPECT_EQ(StreamSeqs(), (std::vector<uint64_t>{1, 2, 3, 4, 5, 6, 7}));
}

TEST_F(PublishCheckTest, OtherEventsUnderOurEpochAreASecondWriter) {
  ASSERT_TRUE(publisher_->PublishBatch(Deltas(0, 2, "a"), kEpoch).ok());
  auto other = NewPublisher(redis_->connection());
  ASSERT_TRUE(other->PublishBatch(Deltas(2, 2, "theirs"), kEpoch).ok());
  const std::vector<v1::Event> ours = Deltas(2, 2, "ours");
  EXPECT_EQ(ReasonOf(publisher_->PublishBatch(ours, kEpoch)), "SEQ_MISMATCH");
  const PublishCheck check = Check(ours);
  EXPECT_EQ(check.outcome, Outcome::kConflict);
  EXPECT_EQ(check.last_seq, 4u);
}

TEST_F(PublishCheckTest, ANewerEpochIsALostLease) {
  ASSERT_TRUE(publisher_->PublishBatch(Deltas(0, 2, "a"), kEpoch).ok());
  auto successor = NewPublisher(redis_->connection());
  ASSERT_TRUE(successor->AcquireLease(kSession, "successor", kEpoch + 1).ok());
  const std::vector<v1::Event> batch = Deltas(2, 1, "b");
  EXPECT_EQ(ReasonOf(publisher_->PublishBatch(batch, kEpoch)), "LEASE_LOST");
  const PublishCheck check = Check(batch);
  EXPECT_EQ(check.outcome, Outcome::kLeaseLost);
  EXPECT_EQ(check.lease_epoch, kEpoch + 1);
}

TEST_F(PublishCheckTest, ALeaseAcquisitionAFailoverLostIsBehind) {
  auto old_owner = NewPublisher(redis_->connection());
  ASSERT_TRUE(old_owner->AcquireLease(kSession, "old", kEpoch).ok());
  auto lease_dump = redis_->connection().Command({"DUMP", redis_->keys().Lease(kSession)});
  ASSERT_TRUE(lease_dump.ok());
  ASSERT_TRUE(publisher_->AcquireLease(kSession, "owner", kEpoch + 1).ok());
  ASSERT_TRUE(redis_->connection()
                  .Command({"RESTORE", redis_->keys().Lease(kSession), "0",
                            ReplyString(lease_dump->get()), "REPLACE"})
                  .ok());
  const std::vector<v1::Event> batch = Deltas(0, 1, "a");
  EXPECT_EQ(ReasonOf(publisher_->PublishBatch(batch, kEpoch + 1)), "LEASE_LOST");
  PublishCheck check = Check(batch, kEpoch + 1);
  EXPECT_EQ(check.outcome, Outcome::kLeaseBehind);
  EXPECT_EQ(check.lease_epoch, kEpoch);
  // Gone entirely: epoch 0, the caller's cue for a new history epoch.
  ASSERT_TRUE(redis_->connection().Command({"DEL", redis_->keys().Lease(kSession)}).ok());
  check = Check(batch, kEpoch + 1);
  EXPECT_EQ(check.outcome, Outcome::kLeaseBehind);
  EXPECT_EQ(check.lease_epoch, 0u);
}

TEST_F(PublishCheckTest, AnEmptyBatchIsRefused) {
  EXPECT_EQ(publisher_->CheckPublished({}, kEpoch).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PublisherWait, ASingleServerDoesNotWaitUnlessAsked) {
  auto redis = testing::TestRedis::Create();
  ASSERT_TRUE(redis.ok()) << redis.status();
  EventPublisher plain((*redis)->connection(), {.key_prefix = (*redis)->keys().prefix()},
                       RealClock::Get());
  EXPECT_EQ(plain.wait_replicas(), 0);
}

// The shared test server has no replica: WAIT 1 returns 0 after its timeout, the publish
// still succeeds, and the shortfall is counted.
TEST(PublisherWait, AWaitThatTimesOutStillPublishesAndIsCounted) {
  auto redis = testing::TestRedis::Create();
  ASSERT_TRUE(redis.ok()) << redis.status();
  EventPublisher waiting((*redis)->connection(),
                         {.key_prefix = (*redis)->keys().prefix(),
                          .wait_replicas = 1,
                          .wait_timeout = absl::Milliseconds(5)},
                         RealClock::Get());
  ASSERT_EQ(waiting.wait_replicas(), 1);
  ASSERT_TRUE(waiting.AcquireLease("ses_wait", "owner", 1).ok());
  v1::Event event;
  event.set_session_id("ses_wait");
  event.set_seq(1);
  event.mutable_text_delta()->set_text("x");
  ASSERT_TRUE(waiting.Publish(event, 1).ok());
  EXPECT_EQ(waiting.replica_wait_shortfalls(), 2);  // The lease, then the event.
}

}  // namespace
}  // namespace parley
