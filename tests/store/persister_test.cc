// The event persister against real Redis and Postgres: it moves exactly what the
// stream holds, acknowledges after commit, survives replays, and replicas share work
// without writing anything twice.
#include "store-svc/persister/persister.h"

#include <gtest/gtest.h>

#include <atomic>
#include <pqxx/pqxx>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/store/store_fixture.h"

namespace parley::store::testing {
namespace {

class PersisterTest : public StoreFixture {
 protected:
  void SetUp() override {
    StoreFixture::SetUp();
    auto redis = parley::testing::TestRedis::Create();
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
  }

  std::unique_ptr<EventPersister> MakePersister(const std::string& owner) {
    return MakePersister(PersisterOptions{.owner = owner});
  }

  // `options` with this test's Redis and 64-event batches filled in.
  std::unique_ptr<EventPersister> MakePersister(PersisterOptions options) {
    options.redis = redis_->endpoint();
    options.key_prefix = redis_->keys().prefix();
    options.batch_events = 64;
    return std::make_unique<EventPersister>(std::move(options), pool(), logger_, registry_);
  }

  // The persisted seq the persister recorded in Redis; "" when it recorded none.
  std::string PersistedSeq(const std::string& session_id) {
    auto reply = redis_->connection().Command({"GET", redis_->keys().PersistedSeq(session_id)});
    if (!reply.ok() || (*reply)->type != REDIS_REPLY_STRING) return "";
    return std::string((*reply)->str, (*reply)->len);
  }

  parley::v1::Event MakeEvent(const parley::v1::Session& session, uint64_t seq,
                              bool transient = false) {
    parley::v1::Event event;
    event.set_session_id(session.id());
    event.set_seq(seq);
    event.set_epoch(session.epoch());
    event.set_turn_id("turn_x");
    event.set_transient(transient);
    event.mutable_text_delta()->set_text(absl::StrCat("token ", seq));
    return event;
  }

  // What the publisher does: XADD the event with id "<seq>-<n>", then mark the session.
  void Publish(const parley::v1::Event& event, int sub = 0) {
    const RedisKeys& keys = redis_->keys();
    ASSERT_TRUE(redis_->connection()
                    .Command({"XADD", keys.EventStream(event.session_id()),
                              absl::StrCat(event.seq(), "-", sub), "e", event.SerializeAsString()})
                    .ok());
    ASSERT_TRUE(redis_->connection()
                    .Command({"ZADD", keys.PersistQueue(), "NX", "1", event.session_id()})
                    .ok());
  }

  // Seqs stored in Postgres for the session, in order.
  std::vector<int64_t> StoredSeqs(const std::string& session_id) {
    pqxx::connection connection(database_url());
    pqxx::work tx(connection);
    std::vector<int64_t> seqs;
    for (const auto& row :
         tx.exec_params("SELECT seq FROM events WHERE session_id = $1 ORDER BY seq", session_id)) {
      seqs.push_back(row[0].as<int64_t>());
    }
    return seqs;
  }

  static std::vector<int64_t> Range(int64_t first, int64_t last) {
    std::vector<int64_t> out;
    for (int64_t i = first; i <= last; ++i) out.push_back(i);
    return out;
  }

  std::unique_ptr<parley::testing::TestRedis> redis_;
  telemetry::Logger logger_{"test", telemetry::LogLevel::kError};
  telemetry::Registry registry_;
};

TEST_F(PersisterTest, MovesTheStreamIntoPostgresInOrderAndAcknowledges) {
  parley::v1::Session session = CreateSession("tenant_a");
  for (uint64_t seq = 1; seq <= 150; ++seq) Publish(MakeEvent(session, seq));
  auto persister = MakePersister("replica-1");
  auto written = persister->RunOnce();
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(*written, 150);
  EXPECT_EQ(StoredSeqs(session.id()), Range(1, 150));

  auto persisted = redis_->connection().Command({"GET", redis_->keys().PersistedSeq(session.id())});
  ASSERT_TRUE(persisted.ok());
  EXPECT_EQ(std::string((*persisted)->str, (*persisted)->len), "150");
  auto queued = redis_->connection().Command({"ZCARD", redis_->keys().PersistQueue()});
  EXPECT_EQ((*queued)->integer, 0);

  // The stored events are the published ones.
  grpc::ClientContext context;
  v1::ReadEventsRequest request;
  request.set_tenant_id("tenant_a");
  request.set_session_id(session.id());
  request.set_after_seq(149);
  v1::ReadEventsResponse response;
  ASSERT_TRUE(stub()->ReadEvents(&context, request, &response).ok());
  ASSERT_EQ(response.events_size(), 1);
  EXPECT_EQ(response.events(0).text_delta().text(), "token 150");
}

TEST_F(PersisterTest, ResumesFromTheDurableSeqAfterACrash) {
  parley::v1::Session session = CreateSession("tenant_a");
  for (uint64_t seq = 1; seq <= 50; ++seq) Publish(MakeEvent(session, seq));
  // A replica that died after committing 1..20 but before acknowledging anything.
  v1::AppendEventsRequest partial;
  partial.set_tenant_id("tenant_a");
  partial.set_session_id(session.id());
  for (uint64_t seq = 1; seq <= 20; ++seq) *partial.add_events() = MakeEvent(session, seq);
  ASSERT_TRUE(AppendEventBatch(pool(), partial).ok());

  auto written = MakePersister("replica-2")->RunOnce();
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(*written, 30);
  EXPECT_EQ(StoredSeqs(session.id()), Range(1, 50));
}

// Proves: a failure after a batch committed to Postgres but before its persisted seq
// reached Redis (a crash, or Redis lost, at the worst moment) leaves exactly 1..N once
// a persister runs again: nothing lost, nothing stored twice, the cursor caught up.
// Making sure it hit that point: the injected failure fires on the second batch's
// commit, the pass reports it, Postgres then holds both batches while Redis still
// says only the first is persisted, and the session is still queued.
TEST_F(PersisterTest, AFailureBetweenCommitAndPersistedSeqLeavesExactlyOneToN) {
  parley::v1::Session session = CreateSession("tenant_a");
  for (uint64_t seq = 1; seq <= 150; ++seq) Publish(MakeEvent(session, seq));
  std::atomic<int> commits{0};
  auto failing = MakePersister(PersisterOptions{
      .owner = "replica-1",
      .after_commit = [&](const std::string&, uint64_t committed_seq) -> absl::Status {
        if (++commits == 2) {
          return absl::UnavailableError(absl::StrCat("injected after commit of ", committed_seq));
        }
        return absl::OkStatus();
      }});
  auto failed = failing->RunOnce();
  ASSERT_FALSE(failed.ok());
  ASSERT_EQ(failed.status().message(), "injected after commit of 128");
  ASSERT_EQ(StoredSeqs(session.id()), Range(1, 128)) << "the second batch must have committed";
  ASSERT_EQ(PersistedSeq(session.id()), "64") << "its persisted seq must not have been recorded";
  EXPECT_EQ((*redis_->connection().Command({"ZCARD", redis_->keys().PersistQueue()}))->integer, 1);

  // Publishing goes on meanwhile; the next pass (another replica) finishes the job.
  for (uint64_t seq = 151; seq <= 200; ++seq) Publish(MakeEvent(session, seq));
  auto written = MakePersister("replica-2")->RunOnce();
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(*written, 72);  // 129..200: the committed batch is not written again.
  EXPECT_EQ(StoredSeqs(session.id()), Range(1, 200));
  EXPECT_EQ(PersistedSeq(session.id()), "200");
  EXPECT_EQ((*redis_->connection().Command({"ZCARD", redis_->keys().PersistQueue()}))->integer, 0);
}

TEST_F(PersisterTest, TransientEntriesNeverReachPostgres) {
  parley::v1::Session session = CreateSession("tenant_a");
  Publish(MakeEvent(session, 1));
  Publish(MakeEvent(session, 1, /*transient=*/true), 1);
  Publish(MakeEvent(session, 2));
  auto written = MakePersister("replica-1")->RunOnce();
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(*written, 2);
  EXPECT_EQ(StoredSeqs(session.id()), Range(1, 2));
}

TEST_F(PersisterTest, SessionLockedByAnotherReplicaIsLeftToIt) {
  parley::v1::Session session = CreateSession("tenant_a");
  Publish(MakeEvent(session, 1));
  ASSERT_TRUE(
      redis_->connection()
          .Command({"SET", redis_->keys().PersisterLock(session.id()), "other", "PX", "30000"})
          .ok());
  auto written = MakePersister("replica-1")->RunOnce();
  ASSERT_TRUE(written.ok());
  EXPECT_EQ(*written, 0);
  EXPECT_TRUE(StoredSeqs(session.id()).empty());
  // Still queued for whoever holds it.
  EXPECT_EQ((*redis_->connection().Command({"ZCARD", redis_->keys().PersistQueue()}))->integer, 1);
}

// Replayed seqs count as skipped, not appended, so the sum holds whether or not the
// replicas' per-session lock kept them apart (SessionLockedByAnotherReplicaIsLeftToIt
// covers the lock); what this proves is that together they store every event once.
TEST_F(PersisterTest, TwoReplicasTogetherStoreEveryEventOnce) {
  std::vector<parley::v1::Session> sessions;
  for (int s = 0; s < 12; ++s) {
    sessions.push_back(CreateSession("tenant_a"));
    for (uint64_t seq = 1; seq <= 100; ++seq) Publish(MakeEvent(sessions.back(), seq));
  }
  std::atomic<int64_t> total{0};
  auto drain = [&](const std::string& owner) {
    auto persister = MakePersister(owner);
    // Its own connection: a hiredis context serves one thread at a time.
    auto redis = RedisConnection::Connect(redis_->endpoint(), absl::Seconds(2));
    ASSERT_TRUE(redis.ok()) << redis.status();
    for (int round = 0; round < 100; ++round) {
      auto written = persister->RunOnce();
      ASSERT_TRUE(written.ok()) << written.status();
      total += *written;
      auto queued = (*redis)->Command({"ZCARD", redis_->keys().PersistQueue()});
      if (queued.ok() && (*queued)->integer == 0) break;
    }
  };
  std::thread a(drain, "replica-a");
  std::thread b(drain, "replica-b");
  a.join();
  b.join();
  EXPECT_EQ(total.load(), 1200);
  for (const auto& session : sessions) EXPECT_EQ(StoredSeqs(session.id()), Range(1, 100));
}

TEST_F(PersisterTest, ADeletedSessionIsDroppedFromTheQueue) {
  parley::v1::Event orphan;
  orphan.set_session_id("ses_deleted");
  orphan.set_seq(1);
  Publish(orphan);
  auto written = MakePersister("replica-1")->RunOnce();
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(*written, 0);
  EXPECT_EQ((*redis_->connection().Command({"ZCARD", redis_->keys().PersistQueue()}))->integer, 0);
}

}  // namespace
}  // namespace parley::store::testing
