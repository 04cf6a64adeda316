// Messages and the turn queue in the store: idempotent appends and enqueues, message
// cursors, multitask policies, FIFO claims with at most one running turn per session,
// leases with fencing epochs, recovery of expired leases, completion and cancel.
#include <gmock/gmock.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <pqxx/pqxx>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/proto_time.h"
#include "store-svc/api/rows.h"
#include "tests/store/store_test_helpers.h"

namespace parley::store::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

MATCHER_P(EqualsProto, expected, expected.ShortDebugString()) {
  return google::protobuf::util::MessageDifferencer::Equals(arg, expected);
}

std::vector<std::string> Texts(const store_pb::ListMessagesResponse& page) {
  std::vector<std::string> texts;
  for (const v1::Message& m : page.messages()) texts.push_back(m.parts(0).text());
  return texts;
}

class Messages : public StoreTest {
 protected:
  // A session holding system messages "m1" … "m5", in that order.
  std::string SessionWithFiveMessages() {
    std::string session_id = CreateSession(kTenant).id();
    for (int i = 1; i <= 5; ++i) {
      auto appended = AppendMessage(session_id, "m" + std::to_string(i));
      EXPECT_TRUE(appended.ok()) << appended.status();
      if (appended.ok()) ids_.push_back(appended->message().id());
    }
    return session_id;
  }

  v1::ListMessagesRequest Cursor(const std::string& session_id, uint32_t limit) {
    v1::ListMessagesRequest cursor;
    cursor.set_session_id(session_id);
    cursor.set_limit(limit);
    return cursor;
  }

  std::vector<std::string> ids_;  // Of SessionWithFiveMessages' messages.
};

class Turns : public StoreTest {};

// ---- Messages ----

TEST_F(Messages, AppendWithAKnownIdempotencyKeyReturnsTheFirstMessage) {
  std::string session_id = CreateSession(kTenant).id();
  auto first = AppendMessage(session_id, "first", "key-1");
  auto retry = AppendMessage(session_id, "retry", "key-1");
  ASSERT_TRUE(first.ok() && retry.ok()) << first.status() << retry.status();
  EXPECT_FALSE(first->duplicate());
  EXPECT_TRUE(retry->duplicate());
  EXPECT_EQ(Dump(retry->message()), Dump(first->message()));
  EXPECT_EQ(AllMessages(session_id).size(), 1u);
}

TEST_F(Messages, ConcurrentAppendsWithOneIdempotencyKeyStoreOneMessage) {
  std::string session_id = CreateSession(kTenant).id();
  constexpr int kCallers = 8;
  std::vector<absl::StatusOr<store_pb::AppendMessageResponse>> results(kCallers,
                                                                       absl::UnknownError("unrun"));
  std::vector<std::thread> threads;
  for (int i = 0; i < kCallers; ++i) {
    threads.emplace_back(
        [&, i] { results[i] = AppendMessage(session_id, "attempt " + std::to_string(i), "k"); });
  }
  for (std::thread& t : threads) t.join();

  int originals = 0;
  for (const auto& result : results) {
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(Dump(result->message()), Dump(results[0]->message()));
    originals += result->duplicate() ? 0 : 1;
  }
  EXPECT_EQ(originals, 1);
  EXPECT_EQ(AllMessages(session_id).size(), 1u);
}

TEST_F(Messages, AppendToAClosedSessionIsSessionClosed) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(CloseSession(session_id).ok());
  auto appended = AppendMessage(session_id, "too late");
  EXPECT_EQ(appended.status().code(), absl::StatusCode::kFailedPrecondition) << appended.status();
  EXPECT_EQ(Reason(appended.status()), "SESSION_CLOSED");
}

TEST_F(Messages, ListReadsForwardFromTheFirstMessage) {
  std::string session_id = SessionWithFiveMessages();
  auto page = ListMessages(Cursor(session_id, 2));
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_THAT(Texts(*page), ElementsAre("m1", "m2"));
  EXPECT_TRUE(page->has_more());
  auto all = ListMessages(Cursor(session_id, 5));
  EXPECT_THAT(Texts(*all), ElementsAre("m1", "m2", "m3", "m4", "m5"));
  EXPECT_FALSE(all->has_more());
}

// What it proves: a page of large messages stops at the store's byte budget and says
// has_more, in both directions, so no page outgrows a client's 4 MiB receive limit
// (the test's own channel keeps gRPC's default: five 900 KiB messages in one answer
// used to fail with RESOURCE_EXHAUSTED).
TEST_F(Messages, APageOfLargeMessagesStopsAtTheByteBudgetInBothDirections) {
  const std::string session_id = CreateSession(kTenant).id();
  for (int i = 1; i <= 5; ++i) {
    ASSERT_TRUE(AppendMessage(session_id, std::to_string(i) + std::string(900 << 10, 'x')).ok());
  }
  auto first = [](const store_pb::ListMessagesResponse& page) {
    std::vector<char> heads;
    for (const v1::Message& m : page.messages()) heads.push_back(m.parts(0).text()[0]);
    return heads;
  };
  auto forward = ListMessages(Cursor(session_id, 50));
  ASSERT_TRUE(forward.ok()) << forward.status();
  EXPECT_THAT(first(*forward), ElementsAre('1', '2'));
  EXPECT_TRUE(forward->has_more());
  EXPECT_LE(static_cast<int64_t>(forward->ByteSizeLong()), limits_.max_page_bytes);

  v1::ListMessagesRequest latest = Cursor(session_id, 50);
  latest.set_latest(true);
  auto backward = ListMessages(latest);
  ASSERT_TRUE(backward.ok()) << backward.status();
  EXPECT_THAT(first(*backward), ElementsAre('4', '5'));  // The newest, oldest first.
  EXPECT_TRUE(backward->has_more());

  // Paging on from the last message read brings the rest.
  v1::ListMessagesRequest rest = Cursor(session_id, 50);
  rest.set_after_message_id(forward->messages(1).id());
  auto next = ListMessages(rest);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_THAT(first(*next), ElementsAre('3', '4'));
  EXPECT_TRUE(next->has_more());
}

TEST_F(Messages, ListAfterAMessageReadsTheFollowingOnes) {
  std::string session_id = SessionWithFiveMessages();
  v1::ListMessagesRequest cursor = Cursor(session_id, 2);
  cursor.set_after_message_id(ids_[1]);
  auto page = ListMessages(cursor);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_THAT(Texts(*page), ElementsAre("m3", "m4"));
  EXPECT_TRUE(page->has_more());
  cursor.set_after_message_id(ids_[2]);
  cursor.set_limit(10);
  auto rest = ListMessages(cursor);
  EXPECT_THAT(Texts(*rest), ElementsAre("m4", "m5"));
  EXPECT_FALSE(rest->has_more());
}

TEST_F(Messages, ListBeforeAMessageReadsThePrecedingOnesInChronologicalOrder) {
  std::string session_id = SessionWithFiveMessages();
  v1::ListMessagesRequest cursor = Cursor(session_id, 2);
  cursor.set_before_message_id(ids_[4]);
  auto page = ListMessages(cursor);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_THAT(Texts(*page), ElementsAre("m3", "m4"));
  EXPECT_TRUE(page->has_more());
  cursor.set_before_message_id(ids_[1]);
  auto start = ListMessages(cursor);
  EXPECT_THAT(Texts(*start), ElementsAre("m1"));
  EXPECT_FALSE(start->has_more());
}

TEST_F(Messages, ListLatestReadsTheNewestInChronologicalOrder) {
  std::string session_id = SessionWithFiveMessages();
  v1::ListMessagesRequest cursor = Cursor(session_id, 3);
  cursor.set_latest(true);
  auto page = ListMessages(cursor);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_THAT(Texts(*page), ElementsAre("m3", "m4", "m5"));
  EXPECT_TRUE(page->has_more());
}

TEST_F(Messages, ListWithAnUnknownCursorMessageIsNotFound) {
  std::string session_id = SessionWithFiveMessages();
  v1::ListMessagesRequest cursor = Cursor(session_id, 2);
  cursor.set_after_message_id(NewId("msg"));
  EXPECT_EQ(ListMessages(cursor).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(Messages, ListOfAnEmptySessionIsAnEmptyPageNotAnError) {
  std::string session_id = CreateSession(kTenant).id();
  for (bool latest : {false, true}) {
    v1::ListMessagesRequest cursor = Cursor(session_id, 10);
    cursor.set_latest(latest);
    auto page = ListMessages(cursor);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_THAT(page->messages(), IsEmpty());
    EXPECT_FALSE(page->has_more());
  }
}

TEST_F(Messages, ListPastEitherEndIsAnEmptyPageNotAnError) {
  std::string session_id = SessionWithFiveMessages();
  v1::ListMessagesRequest after = Cursor(session_id, 2);
  after.set_after_message_id(ids_[4]);
  v1::ListMessagesRequest before = Cursor(session_id, 2);
  before.set_before_message_id(ids_[0]);
  for (const v1::ListMessagesRequest& cursor : {after, before}) {
    auto page = ListMessages(cursor);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_THAT(page->messages(), IsEmpty());
    EXPECT_FALSE(page->has_more());
  }
}

TEST_F(Messages, ACursorFromAnotherSessionIsNotFound) {
  std::string session_id = SessionWithFiveMessages();
  std::string other_session = CreateSession(kTenant).id();
  v1::ListMessagesRequest cursor = Cursor(other_session, 2);
  cursor.set_before_message_id(ids_[2]);
  auto page = ListMessages(cursor);
  EXPECT_EQ(page.status().code(), absl::StatusCode::kNotFound) << page.status();
  EXPECT_THAT(std::string(page.status().message()), ::testing::HasSubstr("cursor"));
}

TEST_F(Messages, ListLimitOver1000IsInvalidArgument) {
  std::string session_id = CreateSession(kTenant).id();
  auto page = ListMessages(Cursor(session_id, 1001));
  EXPECT_EQ(page.status().code(), absl::StatusCode::kInvalidArgument) << page.status();
  EXPECT_EQ(Violation(page.status()).field(), "limit");
  EXPECT_EQ(Violation(page.status()).limit(), "1000");
}

// ---- Enqueue ----

// The message, the turn and the session's counters are written by one statement; what
// the enqueue answers is what is stored, and the next enqueue counts on from it.
TEST_F(Turns, EnqueueAnswersTheMessageAndTurnItStoredAndCountsOn) {
  std::string session_id = CreateSession(kTenant).id();
  auto first = Enqueue(session_id, "hello", "key-1");
  auto second = Enqueue(session_id, "again");
  ASSERT_TRUE(first.ok() && second.ok()) << first.status() << second.status();

  std::vector<v1::Message> messages = AllMessages(session_id);
  std::vector<v1::Turn> turns = AllTurns(session_id);
  ASSERT_EQ(messages.size(), 2u);
  ASSERT_EQ(turns.size(), 2u);
  EXPECT_THAT(messages[0], EqualsProto(first->message()));
  EXPECT_THAT(messages[1], EqualsProto(second->message()));
  EXPECT_EQ(first->message().idempotency_key(), "key-1");
  EXPECT_EQ(first->message().parts(0).text(), "hello");
  EXPECT_EQ(first->message().turn_id(), first->turn().id());
  EXPECT_EQ(first->turn().user_message_id(), first->message().id());
  EXPECT_EQ(first->turn().status(), v1::TURN_STATUS_QUEUED);
  EXPECT_EQ(second->turn().user_message_id(), second->message().id());
  for (const v1::Turn& turn : turns) {
    EXPECT_THAT(turn,
                EqualsProto(turn.id() == first->turn().id() ? first->turn() : second->turn()));
  }

  store_pb::GetSessionRequest get;
  get.set_tenant_id(kTenant);
  get.set_session_id(session_id);
  auto session = Call(&Stub::GetSession, get);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(session->queued_turns(), 2u);
}

TEST_F(Turns, EnqueueWithAKnownIdempotencyKeyReturnsTheFirstResult) {
  std::string session_id = CreateSession(kTenant).id();
  auto first = Enqueue(session_id, "hello", "key-1");
  auto retry = Enqueue(session_id, "hello", "key-1");
  ASSERT_TRUE(first.ok() && retry.ok()) << first.status() << retry.status();
  EXPECT_FALSE(first->duplicate());
  EXPECT_TRUE(retry->duplicate());
  EXPECT_EQ(retry->message().id(), first->message().id());
  EXPECT_EQ(retry->turn().id(), first->turn().id());
}

TEST_F(Turns, ConcurrentRetriesWithOneKeyStoreOneMessageAndOneTurn) {
  std::string session_id = CreateSession(kTenant).id();
  std::vector<absl::StatusOr<store_pb::EnqueueTurnResponse>> results(8,
                                                                     absl::UnknownError("unrun"));
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] { results[i] = Enqueue(session_id, "hello", "key-1"); });
  }
  for (std::thread& t : threads) t.join();

  int originals = 0;
  for (const auto& result : results) {
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->turn().id(), results[0]->turn().id());
    EXPECT_EQ(result->message().id(), results[0]->message().id());
    originals += result->duplicate() ? 0 : 1;
  }
  EXPECT_EQ(originals, 1);
  EXPECT_EQ(AllMessages(session_id).size(), 1u);
  EXPECT_EQ(AllTurns(session_id).size(), 1u);
}

TEST_F(Turns, IdempotencyKeyOver256BytesIsInvalidArgumentAndStoresNothing) {
  std::string session_id = CreateSession(kTenant).id();
  auto enqueued = Enqueue(session_id, "hello", std::string(300, 'k'));
  EXPECT_EQ(enqueued.status().code(), absl::StatusCode::kInvalidArgument) << enqueued.status();
  EXPECT_EQ(Violation(enqueued.status()).field(), "idempotency_key");
  EXPECT_EQ(Violation(enqueued.status()).limit(), "256 bytes");
  EXPECT_THAT(AllMessages(session_id), IsEmpty());
  EXPECT_THAT(AllTurns(session_id), IsEmpty());
}

// The enqueuing call's trace context is kept with the turn for whichever worker claims
// it; anything but a W3C traceparent is refused and stores nothing.
TEST_F(Turns, TraceparentIsStoredWithTheTurnAndHandedToItsClaim) {
  const std::string traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  std::string session_id = CreateSession(kTenant).id();
  store_pb::EnqueueTurnRequest request = EnqueueRequest(session_id, "hello");
  request.set_traceparent(traceparent);
  ASSERT_TRUE(Call(&Stub::EnqueueTurn, request).ok());
  auto claim = Claim(kOwner, session_id);
  ASSERT_TRUE(claim.ok()) << claim.status();
  EXPECT_EQ(claim->traceparent(), traceparent);

  std::string other = CreateSession(kTenant).id();
  request = EnqueueRequest(other, "hello");
  request.set_traceparent("00-not-a-trace-01");
  auto refused = Call(&Stub::EnqueueTurn, request);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_EQ(Violation(refused.status()).field(), "traceparent");
  EXPECT_THAT(AllMessages(other), IsEmpty());
  EXPECT_THAT(AllTurns(other), IsEmpty());
}

TEST_F(Turns, EnqueueOnAClosedSessionIsSessionClosed) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(CloseSession(session_id).ok());
  auto enqueued = Enqueue(session_id, "hello");
  EXPECT_EQ(enqueued.status().code(), absl::StatusCode::kFailedPrecondition) << enqueued.status();
  EXPECT_EQ(Reason(enqueued.status()), "SESSION_CLOSED");
}

// ---- Multitask policies ----

TEST_F(Turns, RejectPolicyRefusesAMessageWhileATurnIsQueued) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "first").ok());
  auto rejected = Enqueue(session_id, "second", "", v1::MULTITASK_POLICY_REJECT);
  EXPECT_EQ(rejected.status().code(), absl::StatusCode::kFailedPrecondition) << rejected.status();
  EXPECT_EQ(Reason(rejected.status()), "SESSION_BUSY");
  EXPECT_EQ(AllMessages(session_id).size(), 1u);
  EXPECT_EQ(AllTurns(session_id).size(), 1u);
}

TEST_F(Turns, RejectPolicyOfTheSessionRefusesAMessageWhileATurnRuns) {
  v1::CreateSessionRequest fields;
  fields.mutable_agent_config()->set_multitask_policy(v1::MULTITASK_POLICY_REJECT);
  std::string session_id = CreateSession(kTenant, fields).id();
  std::string running = Enqueue(session_id, "first")->turn().id();
  ASSERT_EQ(Claim()->turn().id(), running);

  auto rejected = Enqueue(session_id, "second");
  EXPECT_EQ(rejected.status().code(), absl::StatusCode::kFailedPrecondition) << rejected.status();
  EXPECT_EQ(Reason(rejected.status()), "SESSION_BUSY");
  EXPECT_EQ(ReasonMetadata(rejected.status(), "turn_id"), running);
}

TEST_F(Turns, InterruptPolicyFlagsTheRunningTurnAndQueuesTheNewOne) {
  std::string session_id = CreateSession(kTenant).id();
  std::string running = Enqueue(session_id, "first")->turn().id();
  ASSERT_EQ(Claim()->turn().id(), running);

  auto interrupting = Enqueue(session_id, "second", "", v1::MULTITASK_POLICY_INTERRUPT);
  ASSERT_TRUE(interrupting.ok()) << interrupting.status();
  EXPECT_EQ(interrupting->interrupted_turn_id(), running);
  EXPECT_EQ(interrupting->turn().status(), v1::TURN_STATUS_QUEUED);
  EXPECT_TRUE(GetTurn(running)->cancel_requested());
}

TEST_F(Turns, InterruptPolicyCancelsAQueuedTurnOutright) {
  std::string session_id = CreateSession(kTenant).id();
  std::string queued = Enqueue(session_id, "first")->turn().id();

  auto interrupting = Enqueue(session_id, "second", "", v1::MULTITASK_POLICY_INTERRUPT);
  ASSERT_TRUE(interrupting.ok()) << interrupting.status();
  EXPECT_EQ(GetTurn(queued)->status(), v1::TURN_STATUS_CANCELLED);
  EXPECT_EQ(interrupting->interrupted_turn_id(), queued);
  EXPECT_EQ(Claim()->turn().id(), interrupting->turn().id());
}

TEST_F(Turns, EnqueuePolicyQueuesBehindTheRunningTurn) {
  std::string session_id = CreateSession(kTenant).id();
  std::string running = Enqueue(session_id, "first")->turn().id();
  ASSERT_EQ(Claim()->turn().id(), running);

  auto queued = Enqueue(session_id, "second", "", v1::MULTITASK_POLICY_ENQUEUE);
  ASSERT_TRUE(queued.ok()) << queued.status();
  EXPECT_EQ(queued->turn().status(), v1::TURN_STATUS_QUEUED);
  EXPECT_THAT(queued->interrupted_turn_id(), IsEmpty());
  EXPECT_FALSE(GetTurn(running)->cancel_requested());
}

// ---- Claim on enqueue ----

class ClaimOnEnqueue : public StoreTest {
 protected:
  // Enqueues `text` asking the store to claim the new turn for `owner`.
  absl::StatusOr<store_pb::EnqueueTurnResponse> EnqueueClaiming(const std::string& session_id,
                                                                const std::string& text,
                                                                const std::string& key = "",
                                                                const std::string& owner = kOwner) {
    store_pb::EnqueueTurnRequest request = EnqueueRequest(session_id, text, key);
    request.mutable_claim()->set_owner(owner);
    request.mutable_claim()->set_lease_ttl_ms(kLeaseTtlMs);
    return Call(&Stub::EnqueueTurn, request);
  }
};

// An idle session's new turn is claimed as it is enqueued, exactly as ClaimNextTurn
// would have handed it out: RUNNING under a new fencing epoch that heartbeats and
// completes, the session recording it, nothing left for the claimers.
TEST_F(ClaimOnEnqueue, AnIdleSessionsTurnIsClaimedAsItIsEnqueuedWhenNothingElseWaits) {
  std::string session_id = CreateSession(kTenant).id();
  auto enqueued = EnqueueClaiming(session_id, "hello");
  ASSERT_TRUE(enqueued.ok()) << enqueued.status();
  ASSERT_TRUE(enqueued->claim().has_turn());
  const store_pb::ClaimNextTurnResponse& claim = enqueued->claim();
  EXPECT_EQ(claim.turn().id(), enqueued->turn().id());
  EXPECT_EQ(claim.turn().status(), v1::TURN_STATUS_RUNNING);
  EXPECT_EQ(enqueued->turn().status(), v1::TURN_STATUS_RUNNING);
  EXPECT_EQ(claim.turn().attempt(), 1u);
  EXPECT_GE(claim.lease_epoch(), 1u);
  EXPECT_FALSE(claim.recovery());
  EXPECT_EQ(claim.session().id(), session_id);
  EXPECT_EQ(claim.session().current_turn_id(), claim.turn().id());
  EXPECT_EQ(claim.user_message().id(), enqueued->message().id());
  EXPECT_TRUE(claim.has_lease_expiry());
  EXPECT_FALSE(Claim()->has_turn()) << "the claimers find nothing left";
  EXPECT_TRUE(Heartbeat(claim.turn().id(), kOwner, claim.lease_epoch()).ok());
  ASSERT_TRUE(Complete(Completion(claim)).ok());
  EXPECT_EQ(GetTurn(claim.turn().id())->status(), v1::TURN_STATUS_SUCCEEDED);

  // The next turn of the session takes a greater epoch, claimed on enqueue as well.
  auto next = EnqueueClaiming(session_id, "again");
  ASSERT_TRUE(next.ok() && next->claim().has_turn()) << next.status();
  EXPECT_GT(next->claim().lease_epoch(), claim.lease_epoch());
}

// A retried enqueue (same idempotency key) whose answer was lost gets the claim again,
// for the same worker only and only while the turn has published nothing, so the turn
// need not wait for its lease to expire.
TEST_F(ClaimOnEnqueue, ARetryGetsItsUnstartedClaimAgainButNoOtherWorkerDoes) {
  std::string session_id = CreateSession(kTenant).id();
  auto first = EnqueueClaiming(session_id, "hello", "key-1");
  ASSERT_TRUE(first.ok() && first->claim().has_turn()) << first.status();
  auto again = EnqueueClaiming(session_id, "hello", "key-1");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->duplicate());
  ASSERT_TRUE(again->claim().has_turn());
  EXPECT_EQ(again->claim().turn().id(), first->claim().turn().id());
  EXPECT_EQ(again->claim().lease_epoch(), first->claim().lease_epoch());
  EXPECT_EQ(again->claim().user_message().id(), first->message().id());
  auto other = EnqueueClaiming(session_id, "hello", "key-1", "worker-2");
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_TRUE(other->duplicate());
  EXPECT_FALSE(other->claim().has_turn());
  // Once it has published (its first seq reported), a retry gets no claim.
  ASSERT_TRUE(Heartbeat(first->claim().turn().id(), kOwner, first->claim().lease_epoch()).ok());
  store_pb::HeartbeatTurnRequest progress;
  progress.set_tenant_id(kTenant);
  progress.set_turn_id(first->claim().turn().id());
  progress.set_owner(kOwner);
  progress.set_lease_epoch(first->claim().lease_epoch());
  progress.set_lease_ttl_ms(kLeaseTtlMs);
  progress.set_first_seq(1);
  progress.set_last_seq(1);
  ASSERT_TRUE(Call(&Stub::HeartbeatTurn, progress).ok());
  auto late = EnqueueClaiming(session_id, "hello", "key-1");
  ASSERT_TRUE(late.ok()) << late.status();
  EXPECT_FALSE(late->claim().has_turn());
}

// It never jumps a queue: not behind a running or queued turn of its session, and not
// while another session waits for a worker. Those turns stay QUEUED for the claimers.
TEST_F(ClaimOnEnqueue, ATurnIsNeverClaimedBehindWorkOrAheadOfAWaitingSession) {
  std::string busy = CreateSession(kTenant).id();
  auto running = EnqueueClaiming(busy, "first");
  ASSERT_TRUE(running.ok() && running->claim().has_turn()) << running.status();
  auto behind = EnqueueClaiming(busy, "second");
  ASSERT_TRUE(behind.ok()) << behind.status();
  EXPECT_FALSE(behind->claim().has_turn());
  EXPECT_EQ(behind->turn().status(), v1::TURN_STATUS_QUEUED);

  std::string waiting = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(waiting, "waits").ok());  // Runnable, unclaimed.
  std::string idle = CreateSession(kTenant).id();
  auto jumper = EnqueueClaiming(idle, "me first?");
  ASSERT_TRUE(jumper.ok()) << jumper.status();
  EXPECT_FALSE(jumper->claim().has_turn());
  EXPECT_EQ(jumper->turn().status(), v1::TURN_STATUS_QUEUED);
  // The claimers take the waiting session first.
  auto claimed = Claim();
  ASSERT_TRUE(claimed.ok() && claimed->has_turn());
  EXPECT_EQ(claimed->turn().session_id(), waiting);

  // A malformed claim request is refused before anything is written.
  store_pb::EnqueueTurnRequest bad = EnqueueRequest(idle, "x");
  bad.mutable_claim()->set_owner(kOwner);
  bad.mutable_claim()->set_lease_ttl_ms(0);
  EXPECT_EQ(Call(&Stub::EnqueueTurn, bad).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AllTurns(idle).size(), 1u);
}

// ---- Claims ----

TEST_F(Turns, TurnsOfOneSessionAreClaimedInOrderEachAfterThePreviousEnds) {
  std::string session_id = CreateSession(kTenant).id();
  std::vector<std::string> enqueued;
  for (const char* text : {"one", "two", "three"}) {
    enqueued.push_back(Enqueue(session_id, text)->turn().id());
  }
  for (const std::string& expected : enqueued) {
    auto claim = Claim();
    ASSERT_TRUE(claim.ok()) << claim.status();
    EXPECT_EQ(claim->turn().id(), expected);
    EXPECT_FALSE(Claim()->has_turn());  // The next waits for this one to end.
    ASSERT_TRUE(Complete(Completion(*claim)).ok());
  }
  EXPECT_FALSE(Claim()->has_turn());
}

// Messages sent while a turn runs are stored at once, before that turn's answer. When
// their turns run, they move behind it, so each queued turn's history holds every answer
// before its message, and the stored conversation reads in the order it happened.
TEST_F(Turns, AMessageSentWhileATurnRanMovesBehindThatTurnsAnswerWhenItsTurnRuns) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "first").ok());
  auto first = Claim();
  ASSERT_TRUE(first.ok() && first->has_turn()) << first.status();
  auto second = Enqueue(session_id, "second");
  auto third = Enqueue(session_id, "third");
  ASSERT_TRUE(second.ok() && third.ok());
  auto texts = [&] {
    std::vector<std::string> out;
    for (const v1::Message& m : AllMessages(session_id)) out.push_back(m.parts(0).text());
    return out;
  };
  auto answer = [&](const store_pb::ClaimNextTurnResponse& claim, const std::string& text) {
    store_pb::CompleteTurnRequest completion = Completion(claim);
    v1::Message* message = completion.add_messages();
    message->set_role(v1::ROLE_ASSISTANT);
    *message->add_parts() = TextPart(text);
    ASSERT_TRUE(Complete(completion).ok());
  };
  answer(*first, "answer one");
  EXPECT_THAT(texts(), ElementsAre("first", "second", "third", "answer one"));

  auto claimed = Claim();
  ASSERT_TRUE(claimed.ok() && claimed->turn().id() == second->turn().id()) << claimed.status();
  EXPECT_THAT(texts(), ElementsAre("first", "answer one", "second", "third"));
  // What the running turn's history reads: everything before its own message.
  v1::ListMessagesRequest cursor;
  cursor.set_session_id(session_id);
  cursor.set_before_message_id(second->message().id());
  auto before = ListMessages(cursor);
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_EQ(before->messages_size(), 2);
  EXPECT_EQ(before->messages(1).parts(0).text(), "answer one");

  answer(*claimed, "answer two");
  claimed = Claim();
  ASSERT_TRUE(claimed.ok() && claimed->turn().id() == third->turn().id()) << claimed.status();
  EXPECT_THAT(texts(), ElementsAre("first", "answer one", "second", "answer two", "third"));
  answer(*claimed, "answer three");
  EXPECT_THAT(texts(),
              ElementsAre("first", "answer one", "second", "answer two", "third", "answer three"));
}

TEST_F(Turns, ASessionNeverHasTwoRunningTurns) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "one").ok());
  ASSERT_TRUE(Enqueue(session_id, "two").ok());
  auto first = Claim("worker-1");
  ASSERT_TRUE(first.ok() && first->has_turn()) << first.status();
  auto second = Claim("worker-2");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(second->has_turn());
  EXPECT_EQ(GetSession(session_id)->current_turn_id(), first->turn().id());
}

TEST_F(Turns, TurnsOfDifferentSessionsRunInParallel) {
  std::string a = CreateSession(kTenant).id();
  std::string b = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(a, "hello").ok());
  ASSERT_TRUE(Enqueue(b, "hello").ok());
  auto first = Claim("worker-1");
  auto second = Claim("worker-2");
  ASSERT_TRUE(first.ok() && second.ok()) << first.status() << second.status();
  ASSERT_TRUE(first->has_turn() && second->has_turn());
  EXPECT_NE(first->turn().session_id(), second->turn().session_id());
}

TEST_F(Turns, ConcurrentClaimersNeverShareATurnNorRunTwoInOneSession) {
  constexpr int kSessions = 20, kTurnsPerSession = 3, kTotal = kSessions * kTurnsPerSession;
  std::map<std::string, std::vector<std::string>> enqueued;  // Session -> turns, in order.
  for (int s = 0; s < kSessions; ++s) {
    std::string session_id = CreateSession(kTenant).id();
    for (int t = 0; t < kTurnsPerSession; ++t) {
      enqueued[session_id].push_back(Enqueue(session_id, "hello")->turn().id());
    }
  }

  absl::Mutex mu;
  std::map<std::string, std::vector<std::string>> claimed;  // Session -> turns, in order.
  std::set<std::string> running_sessions;
  int overlaps = 0;
  std::atomic<int> completed = 0;
  std::vector<absl::Status> failures;
  auto fail = [&](const absl::Status& status) {
    absl::MutexLock lock(&mu);
    failures.push_back(status);
  };
  auto work = [&](const std::string& owner) {
    for (int i = 0; i < 2000 && completed < kTotal; ++i) {
      auto claim = Claim(owner);
      if (!claim.ok()) fail(claim.status());
      if (!claim.ok() || !claim->has_turn()) {
        absl::SleepFor(absl::Milliseconds(2));
        continue;
      }
      const std::string& session_id = claim->turn().session_id();
      {
        absl::MutexLock lock(&mu);
        claimed[session_id].push_back(claim->turn().id());
        if (!running_sessions.insert(session_id).second) ++overlaps;
      }
      auto beat = Heartbeat(claim->turn().id(), owner, claim->lease_epoch());
      if (!beat.ok()) fail(beat.status());
      {
        // Leave the set before completing: the session's next claim can only follow
        // the completion, so a second entry is always a real overlap.
        absl::MutexLock lock(&mu);
        running_sessions.erase(session_id);
      }
      auto done = Complete(Completion(*claim, owner));
      if (!done.ok()) fail(done.status());
      ++completed;
    }
  };
  std::vector<std::thread> claimers;
  for (int i = 0; i < 8; ++i) claimers.emplace_back(work, "worker-" + std::to_string(i));
  for (std::thread& t : claimers) t.join();

  EXPECT_THAT(failures, IsEmpty());
  EXPECT_EQ(completed.load(), kTotal);
  EXPECT_EQ(overlaps, 0);
  EXPECT_EQ(claimed, enqueued);  // Each turn exactly once, FIFO within its session.
  // And never two at once, by the server's own clock: each turn started after the one
  // before it in its session ended (the client-side check above cannot see a claim
  // that lands between a heartbeat and its completion).
  for (const auto& [session_id, turn_ids] : enqueued) {
    std::vector<v1::Turn> turns = AllTurns(session_id);
    ASSERT_EQ(turns.size(), turn_ids.size());
    for (size_t i = 1; i < turns.size(); ++i) {
      EXPECT_GE(FromTimestamp(turns[i].start_time()), FromTimestamp(turns[i - 1].end_time()))
          << session_id << " turn " << i;
    }
  }
}

TEST_F(Turns, ClaimsRacingCancelsNeverStartACancelledTurn) {
  // Every session gets two turns; four threads claim and complete while another
  // cancels each session's second turn. A turn cancelled while QUEUED must never run,
  // and the queue bookkeeping must come out consistent: nothing left to claim, and a
  // fresh turn in every session is claimable. (The narrowest interleaving — a cancel
  // committing between a claim's snapshot and its session lock — is rarely hit here;
  // the claim's status re-check in ClaimSql is what covers it.)
  constexpr int kSessions = 30;
  std::vector<std::string> sessions;
  std::vector<std::string> second_turns;
  for (int s = 0; s < kSessions; ++s) {
    sessions.push_back(CreateSession(kTenant).id());
    ASSERT_TRUE(Enqueue(sessions.back(), "first").ok());
    second_turns.push_back(Enqueue(sessions.back(), "second")->turn().id());
  }
  absl::Mutex mu;
  std::set<std::string> claimed;
  std::set<std::string> cancelled_while_queued;
  std::vector<absl::Status> failures;
  std::atomic<bool> cancels_done = false;
  std::thread canceller([&] {
    for (int s = 0; s < kSessions; ++s) {
      auto cancelled = CancelTurn(sessions[s], second_turns[s]);
      absl::MutexLock lock(&mu);
      if (!cancelled.ok()) {
        failures.push_back(cancelled.status());
      } else if (cancelled->turn().status() == v1::TURN_STATUS_CANCELLED) {
        // Not the turns that had already run, nor a running one (only flagged).
        cancelled_while_queued.insert(second_turns[s]);
      }
    }
    cancels_done = true;
  });
  auto work = [&](const std::string& owner) {
    for (int i = 0; i < 2000; ++i) {
      auto claim = Claim(owner);
      if (!claim.ok() || !claim->has_turn()) {
        if (!claim.ok()) {
          absl::MutexLock lock(&mu);
          failures.push_back(claim.status());
        }
        if (cancels_done) return;
        absl::SleepFor(absl::Milliseconds(1));
        continue;
      }
      {
        absl::MutexLock lock(&mu);
        claimed.insert(claim->turn().id());
      }
      auto done = Complete(Completion(*claim, owner));
      if (!done.ok()) {
        absl::MutexLock lock(&mu);
        failures.push_back(done.status());
      }
    }
  };
  std::vector<std::thread> claimers;
  for (int i = 0; i < 4; ++i) claimers.emplace_back(work, "worker-" + std::to_string(i));
  canceller.join();
  for (std::thread& t : claimers) t.join();

  EXPECT_THAT(failures, IsEmpty());
  for (const std::string& turn_id : cancelled_while_queued) {
    EXPECT_FALSE(claimed.contains(turn_id)) << turn_id << " was cancelled while queued, then run";
    EXPECT_EQ(GetTurn(turn_id)->status(), v1::TURN_STATUS_CANCELLED);
  }
  EXPECT_FALSE(Claim()->has_turn());
  std::set<std::string> fresh;
  for (const std::string& session_id : sessions) {
    fresh.insert(Enqueue(session_id, "third")->turn().id());
  }
  std::set<std::string> fresh_claimed;
  for (int i = 0; i < kSessions; ++i) {
    auto claim = Claim();
    ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status() << " after " << i;
    fresh_claimed.insert(claim->turn().id());
  }
  EXPECT_EQ(fresh_claimed, fresh);
}

TEST_F(Turns, ClaimsRacingCloseSessionNeverHandOutATurnOfAClosedSession) {
  // Proves: while workers claim, a CloseSession never lets a turn of the closed session
  // start: no claim answers with a CLOSED session, no turn the close cancelled is ever
  // claimed, and whatever was running when it closed is flagged for cancellation.
  // Making sure the race hit: closing starts once claims are under way, and every third
  // session is pinned mid-queue — its closer waits for one of its turns to be claimed and
  // the claimer holds that turn until the close has answered (at most two claimers hold
  // at a time, so the pinned session being waited for can always be claimed) — so some
  // session is closed between two of its turns, whatever the scheduling. The rest race
  // freely.
  constexpr int kSessions = 30;
  std::vector<std::string> sessions;
  std::set<std::string> pinned;
  for (int s = 0; s < kSessions; ++s) {
    sessions.push_back(CreateSession(kTenant).id());
    if (s % 3 == 0) pinned.insert(sessions.back());
    // Enough queued work that closes land while sessions still have turns waiting.
    for (int t = 0; t < 4; ++t) ASSERT_TRUE(Enqueue(sessions.back(), "turn").ok());
  }
  absl::Mutex mu;
  std::map<std::string, std::string> claimed;  // turn -> session
  std::vector<std::string> claims_of_closed_sessions;
  std::map<std::string, store_pb::CloseSessionResponse> closes;  // session -> its close
  std::set<std::string> close_answered;                          // sessions, failed closes too
  std::vector<absl::Status> failures;
  std::atomic<bool> closes_done = false;
  int holders = 0;  // Claimers holding a pinned session's turn (under mu).
  auto claimed_from = [&](const std::string& session_id) {  // under mu while claimers run
    for (const auto& [turn_id, owner_session] : claimed) {
      if (owner_session == session_id) return true;
    }
    return false;
  };
  auto work = [&](const std::string& owner) {
    for (int i = 0; i < 2000; ++i) {
      auto claim = Claim(owner);
      if (!claim.ok() || !claim->has_turn()) {
        if (!claim.ok()) {
          absl::MutexLock lock(&mu);
          failures.push_back(claim.status());
        }
        if (closes_done) return;
        absl::SleepFor(absl::Milliseconds(1));
        continue;
      }
      const std::string session_id = claim->turn().session_id();
      bool hold = false;
      {
        absl::MutexLock lock(&mu);
        claimed[claim->turn().id()] = session_id;
        if (claim->session().status() == v1::SESSION_STATUS_CLOSED) {
          claims_of_closed_sessions.push_back(claim->turn().id());
        }
        // A pinned session's turn is held until its close has answered, so the close
        // lands between two of its turns. At most two claimers hold at once: the others
        // stay free to claim the pinned session the closer is waiting for.
        hold = pinned.contains(session_id) && !close_answered.contains(session_id) && holders < 2;
        if (hold) ++holders;
      }
      if (hold) {
        (void)parley::testing::WaitFor(absl::Seconds(120), [&] {
          absl::MutexLock lock(&mu);
          return close_answered.contains(session_id);
        });
        absl::MutexLock lock(&mu);
        --holders;
      }
      // The owner finishes the turn; a close in between only flags it.
      (void)Complete(Completion(*claim, owner));
    }
  };
  std::vector<std::thread> claimers;
  for (int i = 0; i < 4; ++i) claimers.emplace_back(work, "worker-" + std::to_string(i));
  const bool under_way = parley::testing::WaitFor(absl::Seconds(30), [&] {
    absl::MutexLock lock(&mu);
    return claimed.size() >= 5u;
  });
  bool pinned_sessions_claimed = true;
  for (const std::string& session_id : sessions) {
    if (pinned.contains(session_id)) {
      pinned_sessions_claimed &= parley::testing::WaitFor(absl::Seconds(60), [&] {
        absl::MutexLock lock(&mu);
        return claimed_from(session_id);
      });
    }
    auto closed = CloseSession(session_id);
    absl::MutexLock lock(&mu);
    close_answered.insert(session_id);
    if (closed.ok()) {
      closes[session_id] = *closed;
    } else {
      failures.push_back(closed.status());
    }
  }
  closes_done = true;
  for (std::thread& t : claimers) t.join();

  ASSERT_TRUE(under_way) << "no claims before the closes began";
  EXPECT_TRUE(pinned_sessions_claimed) << "a pinned session was never claimed";
  EXPECT_THAT(failures, IsEmpty());
  EXPECT_THAT(claims_of_closed_sessions, IsEmpty());
  bool claimed_then_cancelled = false;
  for (const auto& [session_id, close] : closes) {
    const bool session_had_a_claim = claimed_from(session_id);
    for (const std::string& turn_id : close.cancelled_turn_ids()) {
      EXPECT_FALSE(claimed.contains(turn_id)) << turn_id << " was cancelled by the close, then run";
      EXPECT_EQ(GetTurn(turn_id)->status(), v1::TURN_STATUS_CANCELLED) << turn_id;
      claimed_then_cancelled = claimed_then_cancelled || session_had_a_claim;
    }
    if (!close.running_turn_id().empty()) {
      EXPECT_TRUE(claimed.contains(close.running_turn_id()));
      EXPECT_TRUE(GetTurn(close.running_turn_id())->cancel_requested());
    }
  }
  EXPECT_TRUE(claimed_then_cancelled) << "no session was closed between two of its turns";
  for (const std::string& session_id : sessions) {
    for (const v1::Turn& turn : AllTurns(session_id)) {
      EXPECT_NE(turn.status(), v1::TURN_STATUS_QUEUED) << turn.id();
      if (turn.status() == v1::TURN_STATUS_RUNNING) {
        EXPECT_TRUE(turn.cancel_requested()) << turn.id();
      }
    }
  }
  EXPECT_FALSE(Claim()->has_turn());
}

TEST_F(Turns, ASessionWhoseCountersClaimWorkItDoesNotHaveIsRepaired) {
  // Bookkeeping drift (a row edited by hand, a bug fixed since) must not wedge the
  // queue: the claim finds no turn behind the counters, repairs them and moves on.
  std::string broken = CreateSession(kTenant).id();
  std::string healthy = CreateSession(kTenant).id();
  {
    pqxx::connection connection(database_url());
    pqxx::work tx(connection);
    tx.exec_params(
        "UPDATE sessions SET queued_turns = 2, waiting_since = now() - interval '1 hour' "
        "WHERE id = $1",
        broken);
    tx.commit();
  }
  std::string turn_id = Enqueue(healthy, "hello")->turn().id();
  auto claim = Claim();
  ASSERT_TRUE(claim.ok()) << claim.status();
  ASSERT_TRUE(claim->has_turn());
  EXPECT_EQ(claim->turn().id(), turn_id);
  pqxx::connection connection(database_url());
  pqxx::work tx(connection);
  EXPECT_EQ(
      tx.exec_params("SELECT queued_turns FROM sessions WHERE id = $1", broken)[0][0].as<int>(), 0);
}

TEST_F(Turns, TheClaimReadsTheSessionWhereTheTurnColumnsEnd) {
  // ClaimSql's row is a turn followed by a session, split at kTurnColumnCount.
  pqxx::connection connection(database_url());
  pqxx::work tx(connection);
  EXPECT_EQ(tx.exec(absl::StrCat("SELECT ", kTurnColumns, " FROM turns LIMIT 0")).columns(),
            static_cast<pqxx::row::size_type>(kTurnColumnCount));
}

// ---- Leases ----

TEST_F(Turns, HeartbeatExtendsTheLease) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "hello").ok());
  auto claim = Claim(kOwner, "", /*lease_ttl_ms=*/1000);
  ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();

  auto beat = Heartbeat(claim->turn().id(), kOwner, claim->lease_epoch(), /*lease_ttl_ms=*/600'000);
  ASSERT_TRUE(beat.ok()) << beat.status();
  EXPECT_GT(beat->lease_expiry().seconds(), claim->lease_expiry().seconds() + 500);
  EXPECT_FALSE(beat->cancel_requested());
}

TEST_F(Turns, HeartbeatReportsACancelRequest) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "hello").ok());
  auto claim = Claim();
  ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();
  ASSERT_TRUE(CancelTurn(session_id, claim->turn().id()).ok());

  auto beat = Heartbeat(claim->turn().id(), kOwner, claim->lease_epoch());
  ASSERT_TRUE(beat.ok()) << beat.status();
  EXPECT_TRUE(beat->cancel_requested());
}

TEST_F(Turns, HeartbeatWithAnOlderEpochIsLeaseLost) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "hello").ok());
  auto claim = Claim();
  ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();

  auto beat = Heartbeat(claim->turn().id(), kOwner, claim->lease_epoch() - 1);
  EXPECT_EQ(beat.status().code(), absl::StatusCode::kFailedPrecondition) << beat.status();
  EXPECT_EQ(Reason(beat.status()), "LEASE_LOST");
  EXPECT_EQ(ReasonMetadata(beat.status(), "lease_epoch"), std::to_string(claim->lease_epoch()));
}

TEST_F(Turns, HeartbeatFromAnotherOwnerIsLeaseLost) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "hello").ok());
  auto claim = Claim();
  ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();

  auto beat = Heartbeat(claim->turn().id(), "intruder", claim->lease_epoch());
  EXPECT_EQ(beat.status().code(), absl::StatusCode::kFailedPrecondition) << beat.status();
  EXPECT_EQ(Reason(beat.status()), "LEASE_LOST");
}

TEST_F(Turns, CompleteWithAnOlderEpochIsLeaseLostAndChangesNothing) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "hello").ok());
  auto claim = Claim();
  ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();

  store_pb::CompleteTurnRequest stale = Completion(*claim);
  stale.set_lease_epoch(claim->lease_epoch() - 1);
  auto done = Complete(stale);
  EXPECT_EQ(done.status().code(), absl::StatusCode::kFailedPrecondition) << done.status();
  EXPECT_EQ(Reason(done.status()), "LEASE_LOST");
  EXPECT_EQ(GetTurn(claim->turn().id())->status(), v1::TURN_STATUS_RUNNING);
}

TEST_F(Turns, CompleteFromAnotherOwnerIsLeaseLostAndChangesNothing) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "hello").ok());
  auto claim = Claim();
  ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();

  auto done = Complete(Completion(*claim, "intruder"));
  EXPECT_EQ(done.status().code(), absl::StatusCode::kFailedPrecondition) << done.status();
  EXPECT_EQ(Reason(done.status()), "LEASE_LOST");
  EXPECT_EQ(GetTurn(claim->turn().id())->status(), v1::TURN_STATUS_RUNNING);
}

TEST_F(Turns, AnExpiredLeaseIsReclaimedAndClaimedAgainAsARecovery) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "hello").ok());
  auto first = Claim("worker-1", "", /*lease_ttl_ms=*/1000);
  ASSERT_TRUE(first.ok() && first->has_turn()) << first.status();

  auto reclaimed = ReclaimAfterExpiry();
  ASSERT_TRUE(reclaimed.ok()) << reclaimed.status();
  ASSERT_EQ(reclaimed->turns_size(), 1);
  EXPECT_EQ(reclaimed->turns(0).id(), first->turn().id());

  auto second = Claim("worker-2");
  ASSERT_TRUE(second.ok() && second->has_turn()) << second.status();
  EXPECT_EQ(second->turn().id(), first->turn().id());
  EXPECT_TRUE(second->recovery());
  EXPECT_GT(second->lease_epoch(), first->lease_epoch());
  EXPECT_EQ(second->turn().attempt(), first->turn().attempt() + 1);
}

TEST_F(Turns, TheOldOwnerCannotCompleteAReclaimedTurn) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "hello").ok());
  auto first = Claim("worker-1", "", /*lease_ttl_ms=*/1000);
  ASSERT_TRUE(first.ok() && first->has_turn()) << first.status();
  ASSERT_TRUE(ReclaimAfterExpiry().ok());
  auto second = Claim("worker-2");
  ASSERT_TRUE(second.ok() && second->has_turn()) << second.status();

  auto late = Complete(Completion(*first, "worker-1"));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition) << late.status();
  EXPECT_EQ(Reason(late.status()), "LEASE_LOST");
  EXPECT_EQ(ReasonMetadata(late.status(), "lease_epoch"), std::to_string(second->lease_epoch()));
  EXPECT_TRUE(Complete(Completion(*second, "worker-2")).ok());
}

// ---- Complete and cancel ----

TEST_F(Turns, CompleteStoresTheAssistantMessagesUsageAndStatus) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "what is 2+2?").ok());
  auto claim = Claim();
  ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();

  store_pb::CompleteTurnRequest completion = Completion(*claim);
  completion.mutable_usage()->set_input_tokens(10);
  completion.mutable_usage()->set_output_tokens(20);
  completion.set_steps(1);
  v1::Message* answer = completion.add_messages();
  answer->set_role(v1::ROLE_ASSISTANT);
  *answer->add_parts() = TextPart("4");
  auto done = Complete(completion);
  ASSERT_TRUE(done.ok()) << done.status();

  EXPECT_EQ(done->turn().status(), v1::TURN_STATUS_SUCCEEDED);
  EXPECT_EQ(done->turn().finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(done->turn().usage().input_tokens(), 10u);
  EXPECT_EQ(done->turn().usage().output_tokens(), 20u);
  EXPECT_TRUE(done->turn().has_end_time());
  EXPECT_EQ(Dump(*GetTurn(claim->turn().id())), Dump(done->turn()));
  ASSERT_EQ(done->messages_size(), 1);
  std::vector<v1::Message> messages = AllMessages(session_id);
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[1].role(), v1::ROLE_ASSISTANT);
  EXPECT_EQ(messages[1].turn_id(), claim->turn().id());
  EXPECT_EQ(messages[1].id(), done->messages(0).id());
  EXPECT_THAT(GetSession(session_id)->current_turn_id(), IsEmpty());
}

TEST_F(Turns, CompleteIsIdempotentForTheSameOwnerAndEpoch) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "hello").ok());
  auto claim = Claim();
  ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();
  store_pb::CompleteTurnRequest completion = Completion(*claim);
  v1::Message* answer = completion.add_messages();
  answer->set_role(v1::ROLE_ASSISTANT);
  *answer->add_parts() = TextPart("hi");

  auto first = Complete(completion);
  auto retry = Complete(completion);
  ASSERT_TRUE(first.ok() && retry.ok()) << first.status() << retry.status();
  EXPECT_EQ(Dump(*retry), Dump(*first));
  EXPECT_EQ(AllMessages(session_id).size(), 2u);
}

TEST_F(Turns, CancelOfAQueuedTurnCancelsItAtOnce) {
  std::string session_id = CreateSession(kTenant).id();
  std::string turn_id = Enqueue(session_id, "hello")->turn().id();

  auto cancelled = CancelTurn(session_id, turn_id);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->turn().status(), v1::TURN_STATUS_CANCELLED);
  EXPECT_EQ(cancelled->turn().finish_reason(), v1::FINISH_REASON_CANCELLED);
  EXPECT_FALSE(cancelled->was_running());
  EXPECT_FALSE(Claim()->has_turn());
}

TEST_F(Turns, CancelOfARunningTurnFlagsIt) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "hello").ok());
  auto claim = Claim();
  ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();

  auto cancelled = CancelTurn(session_id, /*turn_id=*/"");  // The running one.
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_TRUE(cancelled->was_running());
  EXPECT_EQ(cancelled->turn().id(), claim->turn().id());
  EXPECT_EQ(cancelled->turn().status(), v1::TURN_STATUS_RUNNING);
  EXPECT_TRUE(cancelled->turn().cancel_requested());
}

TEST_F(Turns, CancelWithoutATurnIdWhenNoneRunsIsNoRunningTurn) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "hello").ok());
  auto cancelled = CancelTurn(session_id, "");
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kFailedPrecondition) << cancelled.status();
  EXPECT_EQ(Reason(cancelled.status()), "NO_RUNNING_TURN");
}

}  // namespace
}  // namespace parley::store::testing
