// The durable event log in the store: appends that are idempotent per seq, refuse
// conflicts, gaps and foreign epochs, skip transient events; reads by seq; the epoch
// compare-and-set.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <pqxx/pqxx>
#include <string>
#include <thread>
#include <vector>

#include "tests/store/store_test_helpers.h"

namespace parley::store::testing {
namespace {

using ::testing::ElementsAre;

std::vector<uint64_t> Seqs(const store_pb::ReadEventsResponse& read) {
  std::vector<uint64_t> seqs;
  for (const v1::Event& event : read.events()) seqs.push_back(event.seq());
  return seqs;
}

class Events : public StoreTest {
 protected:
  // Events 1 … n of one turn: TurnStarted, text deltas, TurnCompleted.
  static std::vector<v1::Event> ATurnOf(const std::string& session_id, uint64_t n) {
    std::vector<v1::Event> events;
    for (uint64_t seq = 1; seq <= n; ++seq) {
      events.push_back(TextEvent(session_id, seq, "token " + std::to_string(seq)));
    }
    events.front().mutable_turn_started()->set_turn_id("turn_x");
    events.front().mutable_turn_started()->set_attempt(1);
    events.back().mutable_turn_completed()->set_status(v1::TURN_STATUS_SUCCEEDED);
    events.back().mutable_turn_completed()->mutable_usage()->set_output_tokens(7);
    return events;
  }

  void SetUp() override {
    StoreTest::SetUp();
    if (!HasFatalFailure()) session_id_ = CreateSession(kTenant).id();
  }

  std::string session_id_;
};

TEST_F(Events, AppendedEventsReadBackUnchanged) {
  std::vector<v1::Event> events = ATurnOf(session_id_, 3);
  auto appended = AppendEvents(session_id_, events);
  ASSERT_TRUE(appended.ok()) << appended.status();
  EXPECT_EQ(appended->appended(), 3u);
  EXPECT_EQ(appended->last_seq(), 3u);

  auto read = ReadEvents(session_id_);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->events_size(), 3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Dump(read->events(i)), Dump(events[i]));
  EXPECT_EQ(read->last_seq(), 3u);
  EXPECT_FALSE(read->has_more());
}

TEST_F(Events, ReplayingABatchAppendsNothing) {
  std::vector<v1::Event> events = ATurnOf(session_id_, 3);
  ASSERT_TRUE(AppendEvents(session_id_, events).ok());
  auto replay = AppendEvents(session_id_, events);
  ASSERT_TRUE(replay.ok()) << replay.status();
  EXPECT_EQ(replay->appended(), 0u);
  EXPECT_EQ(replay->skipped(), 3u);
  EXPECT_EQ(replay->last_seq(), 3u);
  EXPECT_EQ(ReadEvents(session_id_)->events_size(), 3);
}

TEST_F(Events, ABatchOverlappingTheLogAppendsOnlyTheNewEvents) {
  std::vector<v1::Event> events = ATurnOf(session_id_, 4);
  ASSERT_TRUE(AppendEvents(session_id_, {events[0], events[1]}).ok());
  auto overlapping = AppendEvents(session_id_, {events[1], events[2], events[3]});
  ASSERT_TRUE(overlapping.ok()) << overlapping.status();
  EXPECT_EQ(overlapping->appended(), 2u);
  EXPECT_EQ(overlapping->skipped(), 1u);
  EXPECT_THAT(Seqs(*ReadEvents(session_id_)), ElementsAre(1, 2, 3, 4));
}

TEST_F(Events, AStoredSeqWithOtherContentIsSeqConflictAndNothingIsStored) {
  ASSERT_TRUE(AppendEvents(session_id_, ATurnOf(session_id_, 2)).ok());
  std::vector<v1::Event> rewrite = {TextEvent(session_id_, 2, "different"),
                                    TextEvent(session_id_, 3, "new")};
  auto conflict = AppendEvents(session_id_, rewrite);
  EXPECT_EQ(conflict.status().code(), absl::StatusCode::kAlreadyExists) << conflict.status();
  EXPECT_EQ(Reason(conflict.status()), "SEQ_CONFLICT");
  EXPECT_EQ(ReasonMetadata(conflict.status(), "seq"), "2");
  EXPECT_THAT(Seqs(*ReadEvents(session_id_)), ElementsAre(1, 2));  // Seq 3 was not stored.
}

TEST_F(Events, ABatchStartingPastTheNextSeqIsSeqGap) {
  ASSERT_TRUE(AppendEvents(session_id_, ATurnOf(session_id_, 2)).ok());
  auto gap =
      AppendEvents(session_id_, {TextEvent(session_id_, 4, "x"), TextEvent(session_id_, 5, "y")});
  EXPECT_EQ(gap.status().code(), absl::StatusCode::kFailedPrecondition) << gap.status();
  EXPECT_EQ(Reason(gap.status()), "SEQ_GAP");
  EXPECT_EQ(ReasonMetadata(gap.status(), "last_seq"), "2");
  EXPECT_THAT(Seqs(*ReadEvents(session_id_)), ElementsAre(1, 2));
}

TEST_F(Events, TransientEventsAreNotStored) {
  v1::Event retry = TextEvent(session_id_, 1, "");
  retry.set_transient(true);
  retry.mutable_retry_scheduled()->set_attempt(2);
  auto appended = AppendEvents(
      session_id_, {TextEvent(session_id_, 1, "a"), retry, TextEvent(session_id_, 2, "b")});
  ASSERT_TRUE(appended.ok()) << appended.status();
  EXPECT_EQ(appended->appended(), 2u);
  EXPECT_EQ(appended->skipped(), 1u);
  auto read = ReadEvents(session_id_);
  EXPECT_THAT(Seqs(*read), ElementsAre(1, 2));
  for (const v1::Event& event : read->events()) EXPECT_FALSE(event.transient());
}

TEST_F(Events, ReadPagesByAfterSeqAndLimit) {
  ASSERT_TRUE(AppendEvents(session_id_, ATurnOf(session_id_, 5)).ok());
  auto page = ReadEvents(session_id_, /*after_seq=*/1, /*limit=*/2);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_THAT(Seqs(*page), ElementsAre(2, 3));
  EXPECT_TRUE(page->has_more());
  EXPECT_EQ(page->last_seq(), 5u);
  auto rest = ReadEvents(session_id_, /*after_seq=*/3, /*limit=*/10);
  EXPECT_THAT(Seqs(*rest), ElementsAre(4, 5));
  EXPECT_FALSE(rest->has_more());
}

// What it proves: a read of large events stops at the store's byte budget and says
// has_more, and reading on from its last seq brings every event once, in order, so no
// page outgrows a client's 4 MiB receive limit (48 events of 100 KiB in one answer used
// to fail with RESOURCE_EXHAUSTED on the test's default channel).
TEST_F(Events, AReadOfLargeEventsStopsAtTheByteBudgetAndPagesOnWithoutAGap) {
  std::vector<v1::Event> events;
  for (uint64_t seq = 1; seq <= 48; ++seq) {
    events.push_back(TextEvent(session_id_, seq, std::string(100 << 10, 'a' + seq % 26)));
  }
  // Two appends: one request of them all would pass the server's own receive limit.
  ASSERT_TRUE(AppendEvents(session_id_, {events.begin(), events.begin() + 24}).ok());
  ASSERT_TRUE(AppendEvents(session_id_, {events.begin() + 24, events.end()}).ok());

  auto page = ReadEvents(session_id_, 0, /*limit=*/1000);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_GT(page->events_size(), 0);
  EXPECT_LT(page->events_size(), 48);
  EXPECT_TRUE(page->has_more());
  EXPECT_LE(static_cast<int64_t>(page->ByteSizeLong()), limits_.max_page_bytes + (4 << 10));
  std::vector<uint64_t> seqs = Seqs(*page);
  for (int round = 0; round < 48 && page->has_more(); ++round) {
    page = ReadEvents(session_id_, seqs.back(), /*limit=*/1000);
    ASSERT_TRUE(page.ok()) << page.status();
    for (uint64_t seq : Seqs(*page)) seqs.push_back(seq);
  }
  std::vector<uint64_t> all(48);
  for (uint64_t i = 0; i < 48; ++i) all[i] = i + 1;
  EXPECT_EQ(seqs, all);
}

TEST_F(Events, ReadLimitOver10000IsInvalidArgument) {
  auto read = ReadEvents(session_id_, 0, /*limit=*/10001);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument) << read.status();
  EXPECT_EQ(Violation(read.status()).field(), "limit");
}

TEST_F(Events, GetLastSeqReportsTheDurableEndAndTheEpoch) {
  store_pb::GetLastSeqRequest request;
  request.set_tenant_id(kTenant);
  request.set_session_id(session_id_);
  auto empty = Call(&Stub::GetLastSeq, request);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->last_seq(), 0u);
  EXPECT_EQ(empty->epoch(), 1u);

  ASSERT_TRUE(AppendEvents(session_id_, ATurnOf(session_id_, 3)).ok());
  EXPECT_EQ(Call(&Stub::GetLastSeq, request)->last_seq(), 3u);
  EXPECT_EQ(GetSession(session_id_)->last_seq(), 3u);
}

// With turn_id, the same answer carries the turn: what a stream that starts from a turn
// needs, in one call. A turn of another session, or any id of another tenant, is
// NOT_FOUND; a malformed id is refused before any query.
TEST_F(Events, GetLastSeqWithATurnAnswersForTheSessionsTurnOnly) {
  auto enqueued = Enqueue(session_id_, "hello");
  ASSERT_TRUE(enqueued.ok()) << enqueued.status();
  store_pb::GetLastSeqRequest request;
  request.set_tenant_id(kTenant);
  request.set_session_id(session_id_);
  request.set_turn_id(enqueued->turn().id());
  auto answer = Call(&Stub::GetLastSeq, request);
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->epoch(), 1u);
  EXPECT_EQ(answer->turn().id(), enqueued->turn().id());
  EXPECT_EQ(answer->turn().status(), v1::TURN_STATUS_QUEUED);

  store_pb::GetLastSeqRequest other_session = request;
  other_session.set_session_id(CreateSession(kTenant).id());
  EXPECT_EQ(Call(&Stub::GetLastSeq, other_session).status().code(), absl::StatusCode::kNotFound);
  store_pb::GetLastSeqRequest other_tenant = request;
  other_tenant.set_tenant_id("tenant_b");
  EXPECT_EQ(Call(&Stub::GetLastSeq, other_tenant).status().code(), absl::StatusCode::kNotFound);
  store_pb::GetLastSeqRequest malformed = request;
  malformed.set_turn_id("turn\nwith a control character");
  auto refused = Call(&Stub::GetLastSeq, malformed);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Violation(refused.status()).field(), "turn_id");
}

TEST_F(Events, AdvanceEpochIsACompareAndSet) {
  ASSERT_TRUE(AppendEvents(session_id_, ATurnOf(session_id_, 3)).ok());
  store_pb::AdvanceEpochRequest request;
  request.set_tenant_id(kTenant);
  request.set_session_id(session_id_);
  request.set_expected_epoch(1);
  request.set_reason("redis flushed");

  auto first = Call(&Stub::AdvanceEpoch, request);
  auto second = Call(&Stub::AdvanceEpoch, request);  // A second detector, same view.
  ASSERT_TRUE(first.ok() && second.ok()) << first.status() << second.status();
  EXPECT_TRUE(first->advanced());
  EXPECT_EQ(first->epoch(), 2u);
  EXPECT_EQ(first->resume_after_seq(), 3u);
  EXPECT_FALSE(second->advanced());
  EXPECT_EQ(second->epoch(), 2u);
  EXPECT_EQ(GetSession(session_id_)->epoch(), 2u);
}

TEST_F(Events, AnEpochChangeWaitsForAnAppendInFlight) {
  // An append holds the session's event-log lock from reading the epoch to committing;
  // the epoch change must queue behind it, or the append would commit old-epoch events
  // past the new epoch's resume point. The lock is held here by hand, as an append would.
  ASSERT_TRUE(AppendEvents(session_id_, ATurnOf(session_id_, 3)).ok());
  pqxx::connection holder(database_url());
  pqxx::work held(holder);
  held.exec_params("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", session_id_);

  store_pb::AdvanceEpochRequest request;
  request.set_tenant_id(kTenant);
  request.set_session_id(session_id_);
  request.set_expected_epoch(1);
  absl::StatusOr<store_pb::AdvanceEpochResponse> advanced;
  std::thread advance([&] { advanced = Call(&Stub::AdvanceEpoch, request); });
  // Wait until Postgres shows the change blocked on the advisory lock (a state, not a
  // duration), then let the "append" commit one more event and release the lock.
  pqxx::connection observer(database_url());
  bool waiting = false;
  for (int i = 0; i < 3000 && !waiting; ++i) {
    pqxx::nontransaction look(observer);
    // Only this test's database: tests running beside it take advisory locks too.
    waiting = look.exec(
                      "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                      "AND database = (SELECT oid FROM pg_database WHERE datname = "
                      "current_database())")
                  .size() > 0;
    if (!waiting) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(waiting) << "AdvanceEpoch did not wait for the event-log lock";
  held.exec_params(
      "INSERT INTO events (session_id, seq, tenant_id, epoch, payload) VALUES ($1, 4, $2, 1, "
      "'\\x00')",
      session_id_, kTenant);
  held.commit();
  advance.join();
  ASSERT_TRUE(advanced.ok()) << advanced.status();
  EXPECT_TRUE(advanced->advanced());
  EXPECT_EQ(advanced->resume_after_seq(), 4u);  // After the append that was in flight.
}

// Fencing after lost history: once AdvanceEpoch moved the session to epoch 2, a writer
// still on epoch 1 (it has not heard of the change) is refused and stores nothing, while
// epoch 2 continues after the resume point.
TEST_F(Events, AnAppendWithTheOldEpochAfterAdvanceEpochIsRefused) {
  ASSERT_TRUE(AppendEvents(session_id_, ATurnOf(session_id_, 3)).ok());
  store_pb::AdvanceEpochRequest advance;
  advance.set_tenant_id(kTenant);
  advance.set_session_id(session_id_);
  advance.set_expected_epoch(1);
  auto advanced = Call(&Stub::AdvanceEpoch, advance);
  ASSERT_TRUE(advanced.ok()) << advanced.status();
  ASSERT_TRUE(advanced->advanced());
  ASSERT_EQ(advanced->epoch(), 2u);
  ASSERT_EQ(advanced->resume_after_seq(), 3u);

  auto stale = AppendEvents(session_id_, {TextEvent(session_id_, 4, "stale", /*epoch=*/1)});
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition) << stale.status();
  EXPECT_EQ(Reason(stale.status()), "EPOCH_MISMATCH");
  EXPECT_EQ(ReasonMetadata(stale.status(), "epoch"), "2");
  auto read = ReadEvents(session_id_);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_THAT(Seqs(*read), ElementsAre(1, 2, 3));

  auto current = AppendEvents(session_id_, {TextEvent(session_id_, 4, "fresh", /*epoch=*/2)});
  ASSERT_TRUE(current.ok()) << current.status();
  EXPECT_EQ(current->last_seq(), 4u);
}

TEST_F(Events, EventsOfAnotherEpochAreEpochMismatch) {
  auto mismatch = AppendEvents(session_id_, {TextEvent(session_id_, 1, "x", /*epoch=*/2)});
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kFailedPrecondition) << mismatch.status();
  EXPECT_EQ(Reason(mismatch.status()), "EPOCH_MISMATCH");
  EXPECT_EQ(ReasonMetadata(mismatch.status(), "epoch"), "1");
  EXPECT_EQ(ReadEvents(session_id_)->events_size(), 0);
}

}  // namespace
}  // namespace parley::store::testing
