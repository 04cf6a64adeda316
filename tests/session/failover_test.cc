// parley-session replicas dying, freezing and draining mid-turn, and Redis losing its
// data, end to end. Each test says first what it proves and how it makes sure the
// failure really hit the turn (owner identified from the store's lease, output or its
// absence checked before the fault).
#include <gtest/gtest.h>
#include <signal.h>

#include <iostream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/redis_cluster.h"
#include "tests/session/session_fixture.h"

namespace parley::session::testing {
namespace {

class SessionFailover : public SessionFixture {
 protected:
  // Waits until `turn_id` has published at least `count` TextDeltas.
  void WaitForOutput(const std::string& session, const std::string& turn_id, int count) {
    auto events = WaitForEvents(
        kTenantA, session,
        [&](const std::vector<v1::Event>& events) {
          return CountTextDeltas(events, turn_id) >= count;
        },
        absl::StrCat(count, " TextDeltas of ", turn_id));
    ASSERT_TRUE(events.ok()) << events.status();
  }

  // Kills (-9) the replica whose lease holds `turn_id` and waits for it to exit; sets
  // `*killed` to its index.
  void KillOwnerOf(const std::string& session, const std::string& turn_id, int* killed) {
    absl::StatusOr<int> owner = WaitForOwner(kTenantA, session, turn_id);
    ASSERT_TRUE(owner.ok()) << owner.status();
    replica(*owner).Signal(SIGKILL);
    ASSERT_TRUE(replica(*owner).WaitForExit(absl::Seconds(10)).ok());
    *killed = *owner;
  }

  void WaitForStartedAttempts(const std::string& session, const std::string& turn_id,
                              std::vector<uint32_t> attempts, absl::Duration timeout) {
    auto events = WaitForEvents(
        kTenantA, session,
        [&](const std::vector<v1::Event>& events) {
          return StartedAttempts(events, turn_id) == attempts;
        },
        absl::StrCat("TurnStarted attempts ", attempts.size(), " of ", turn_id), timeout);
    ASSERT_TRUE(events.ok()) << events.status();
  }

  // The live subscriber received exactly the session's events 1..N.
  void ExpectSubscriberSawEverything(LiveSubscriber& subscriber, const std::string& session) {
    absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
    ASSERT_TRUE(events.ok()) << events.status();
    const size_t n = events->size();
    EXPECT_TRUE(subscriber.WaitFor(
        [&](const std::vector<v1::Event>& seen) { return seen.size() >= n; }, absl::Seconds(20)))
        << "the subscriber received " << subscriber.events().size() << " of " << n
        << " events; stream status: " << Describe(subscriber.status());
    std::vector<v1::Event> seen = subscriber.events();
    for (size_t i = 0; i < seen.size(); ++i) {
      ASSERT_EQ(seen[i].seq(), i + 1) << "the subscriber saw a gap or a duplicate";
      if (i < n) {
        EXPECT_EQ(seen[i].SerializeAsString(), (*events)[i].SerializeAsString());
      }
    }
    EXPECT_EQ(seen.size(), n);
  }

  // Every acknowledged user message is stored.
  void ExpectUserMessagesStored(const std::string& session, const std::vector<std::string>& turns) {
    absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, session);
    ASSERT_TRUE(messages.ok()) << messages.status();
    for (const std::string& turn : turns) {
      EXPECT_EQ(MessagesOf(*messages, turn, v1::ROLE_USER).size(), 1u) << turn;
    }
  }
};

// Every Redis user on a six-node Redis Cluster (redis+cluster://): session-svc's
// publisher (SPUBLISH, one slot per session), wake-ups and leases, the gateway's
// sharded subscriber and history reads, store-svc's persister. Two turns run end to
// end; a live subscriber sees 1..N exactly and the messages are stored.
TEST_F(SessionFailover, TurnsOnARedisClusterReachASubscriberAndTheStore) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 2, .redis_cluster = true, .gateway = true}));
  const std::string session = CreateSession(kTenantA);
  LiveSubscriber subscriber(gateway()->grpc_target(), session);
  absl::StatusOr<std::string> first = SubmitTurn(kTenantA, session, "@words 40\n@delay_ms 5");
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::string> second = SubmitTurn(kTenantA, session, "@delay_ms 0\non a cluster");
  ASSERT_TRUE(second.ok()) << second.status();
  for (const std::string& turn : {*first, *second}) {
    absl::StatusOr<v1::Turn> ended = WaitForTurnEnd(kTenantA, session, turn);
    ASSERT_TRUE(ended.ok()) << ended.status();
    EXPECT_EQ(ended->status(), v1::TURN_STATUS_SUCCEEDED) << turn;
  }
  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  const std::string words = TextOf(*events, *first);
  EXPECT_TRUE(absl::StartsWith(words, "w1 ") && absl::StrContains(words, "w40")) << words;
  EXPECT_EQ(TextOf(*events, *second), "Echo: on a cluster");
  ASSERT_NO_FATAL_FAILURE(ExpectSubscriberSawEverything(subscriber, session));
  ASSERT_NO_FATAL_FAILURE(ExpectUserMessagesStored(session, {*first, *second}));
}

// A turn survives a kill -9 of the Redis Cluster primary that owns its session's slot,
// mid-stream: the replica takes over, and whatever the kill did to the publish in
// flight (ran with its reply lost, never ran, or acknowledged events the replica never
// got) the executor reconciles with the stream instead of stopping. The primary's
// replica is frozen (SIGSTOP) before the kill and continued right after it: every
// publish then spends the WAIT timeout (50 ms) waiting for it after its script ran, so
// the kill most likely cuts off a publish that ran — which, sent again blindly, would
// be refused as SEQ_MISMATCH. Which case the kill produces is still up to timing;
// tests/fanout/publish_check_test.cc forces each one against a real Redis. The turn ends
// SUCCEEDED and sealed; a live StreamEvents subscriber sees exactly 1..K; Postgres holds
// the same K events; the text is every word once, in order. The kill lands mid-turn for
// sure: it happens after 40 of 400 words are in the stream (each word 10 ms apart, so
// about 3.6 s of output remain), the turn is checked to be still RUNNING just before,
// and afterwards the turn must have published events beyond the last seq seen then.
TEST_F(SessionFailover, ATurnOnARedisClusterSurvivesItsPrimaryKilledMidStream) {
  ASSERT_NO_FATAL_FAILURE(StartCluster(
      {.replicas = 2, .lease_ttl = absl::Seconds(10), .redis_cluster = true, .gateway = true}));
  const std::string session = CreateSession(kTenantA);
  LiveSubscriber subscriber(gateway()->grpc_target(), session);
  constexpr int kWords = 400;
  absl::StatusOr<std::string> turn =
      SubmitTurn(kTenantA, session, absl::StrCat("@words ", kWords, "\n@delay_ms 10"));
  ASSERT_TRUE(turn.ok()) << turn.status();
  ASSERT_NO_FATAL_FAILURE(WaitForOutput(session, *turn, 40));

  absl::StatusOr<std::vector<v1::Event>> before = ReadRedisEvents(redis(), session);
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_FALSE(before->empty());
  const uint64_t seq_at_kill = before->back().seq();
  absl::StatusOr<v1::Turn> running = GetTurn(kTenantA, *turn);
  ASSERT_TRUE(running.ok()) << running.status();
  ASSERT_EQ(running->status(), v1::TURN_STATUS_RUNNING) << "the turn ended before the kill";
  const uint16_t slot = RedisKeySlot(keys().EventStream(session));
  absl::Status frozen = redis_cluster()->FreezeReplicaOf(slot);
  ASSERT_TRUE(frozen.ok()) << frozen;
  absl::SleepFor(absl::Milliseconds(300));  // A few publishes wait out their WAIT.
  absl::StatusOr<int> killed = redis_cluster()->KillPrimaryOf(slot, absl::Seconds(30));
  ASSERT_TRUE(killed.ok()) << killed.status();

  absl::StatusOr<v1::Turn> ended = WaitForTurnEnd(kTenantA, session, *turn, absl::Seconds(60));
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->status(), v1::TURN_STATUS_SUCCEEDED) << ended->DebugString();
  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_GT(events->back().seq(), seq_at_kill + 10) << "the turn published little after the kill";
  EXPECT_TRUE(events->back().has_turn_sealed()) << events->back().DebugString();
  std::string expected;
  for (int i = 1; i <= kWords; ++i) absl::StrAppend(&expected, i == 1 ? "" : " ", "w", i);
  EXPECT_EQ(TextOf(*events, *turn), expected);
  ASSERT_NO_FATAL_FAILURE(ExpectSubscriberSawEverything(subscriber, session));
  // What the kill did, for the record (timing decides it; not asserted).
  for (int i = 0; i < replica_count(); ++i) {
    const std::string output = replica(i).Output();
    for (const char* line : {"a publish lost its reply", "redis lost acknowledged events"}) {
      if (absl::StrContains(output, line)) std::cout << "replica " << i << ": " << line << "\n";
    }
  }

  // The persisted log: every event, the same bytes (the persister runs on its own).
  const size_t count = events->size();
  absl::StatusOr<std::vector<v1::Event>> stored;
  for (const absl::Time deadline = absl::Now() + absl::Seconds(30); absl::Now() < deadline;
       absl::SleepFor(absl::Milliseconds(100))) {
    stored = ReadStoredEvents(kTenantA, session);
    if (stored.ok() && stored->size() >= count) break;
  }
  ASSERT_TRUE(stored.ok()) << stored.status();
  ASSERT_EQ(stored->size(), count) << "Postgres holds " << stored->size() << " of " << count;
  for (size_t i = 0; i < count; ++i) {
    EXPECT_EQ((*stored)[i].SerializeAsString(), (*events)[i].SerializeAsString())
        << "seq " << i + 1;
  }
}

// kill -9 of the replica running a turn that has emitted nothing but TurnStarted: after
// the lease expires another replica runs it again (TurnStarted attempt 2), the queued
// turn behind it still runs, and a live subscriber sees 1..N. The failure hits for
// sure: the owner is read from the store's lease and killed while the turn stalls for
// 10 minutes. The stall applies to the retry too, so the retry is cancelled once its
// TurnStarted is out: the test does not depend on how long anything takes.
TEST_F(SessionFailover, KilledOwnerOfATurnWithoutOutputIsRetriedOnAnotherReplica) {
  ASSERT_NO_FATAL_FAILURE(
      StartCluster({.replicas = 3, .lease_ttl = absl::Seconds(2), .gateway = true}));
  const std::string session = CreateSession(kTenantA);
  LiveSubscriber subscriber(gateway()->grpc_target(), session);
  absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, session, "@stall_ms 600000");
  ASSERT_TRUE(turn.ok()) << turn.status();
  absl::StatusOr<std::string> next = SubmitTurn(kTenantA, session, "@delay_ms 0\nafter failover");
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_NO_FATAL_FAILURE(WaitForStartedAttempts(session, *turn, {1}, absl::Seconds(30)));
  int owner = -1;
  ASSERT_NO_FATAL_FAILURE(KillOwnerOf(session, *turn, &owner));
  ASSERT_NO_FATAL_FAILURE(WaitForStartedAttempts(session, *turn, {1, 2}, absl::Seconds(30)));
  absl::StatusOr<int> new_owner = WaitForOwner(kTenantA, session, *turn);
  ASSERT_TRUE(new_owner.ok()) << new_owner.status();
  EXPECT_NE(*new_owner, owner);
  absl::StatusOr<std::vector<v1::Event>> before_cancel = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(before_cancel.ok()) << before_cancel.status();
  EXPECT_EQ(CountTextDeltas(*before_cancel, *turn), 0);

  v1::CancelTurnResponse cancelled;
  grpc::Status status = CancelTurn(kTenantA, session, *turn, &cancelled, *new_owner);
  ASSERT_TRUE(status.ok()) << Describe(status);
  absl::StatusOr<v1::Turn> ended = WaitForTurnEnd(kTenantA, session, *turn);
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->status(), v1::TURN_STATUS_CANCELLED);
  EXPECT_EQ(ended->attempt(), 2u);
  absl::StatusOr<v1::Turn> after = WaitForTurnEnd(kTenantA, session, *next);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->status(), v1::TURN_STATUS_SUCCEEDED);

  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_EQ(StartedAttempts(*events, *turn), (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ(CountSealed(*events, *turn), 1);
  EXPECT_EQ(TextOf(*events, *next), "Echo: after failover");
  ASSERT_NO_FATAL_FAILURE(ExpectSubscriberSawEverything(subscriber, session));
  ASSERT_NO_FATAL_FAILURE(ExpectUserMessagesStored(session, {*turn, *next}));
}

// kill -9 of the replica running a turn that has already streamed words: another
// replica ends it FAILED {INTERNAL, WORKER_LOST}, commits the partial output as the
// assistant message, seals it, and runs the next turn; a live subscriber sees 1..N. The
// turn would stream 200 words over 10 s; the kill comes after the third word, and the
// test checks that fewer than 200 were streamed, so the owner did die mid-output.
TEST_F(SessionFailover, KilledOwnerAfterOutputEndsTheTurnWorkerLostAndKeepsItsOutput) {
  ASSERT_NO_FATAL_FAILURE(
      StartCluster({.replicas = 3, .lease_ttl = absl::Seconds(2), .gateway = true}));
  const std::string session = CreateSession(kTenantA);
  LiveSubscriber subscriber(gateway()->grpc_target(), session);
  absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, session, "@words 200\n@delay_ms 50");
  ASSERT_TRUE(turn.ok()) << turn.status();
  absl::StatusOr<std::string> next = SubmitTurn(kTenantA, session, "@delay_ms 0\nstill here");
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_NO_FATAL_FAILURE(WaitForOutput(session, *turn, 3));
  int owner = -1;
  ASSERT_NO_FATAL_FAILURE(KillOwnerOf(session, *turn, &owner));
  absl::StatusOr<v1::Turn> ended = WaitForTurnEnd(kTenantA, session, *turn);
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->status(), v1::TURN_STATUS_FAILED);
  EXPECT_EQ(ended->error().kind(), v1::TURN_ERROR_KIND_INTERNAL);
  EXPECT_EQ(ended->error().reason(), "WORKER_LOST");
  // The second worker took the turn over (attempt 2) but did not run it again: only one
  // TurnStarted (checked with the stream below) and its output kept.
  EXPECT_EQ(ended->attempt(), 2u);

  absl::StatusOr<v1::Turn> after = WaitForTurnEnd(kTenantA, session, *next);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->status(), v1::TURN_STATUS_SUCCEEDED);
  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  const int words = CountTextDeltas(*events, *turn);
  EXPECT_GE(words, 3);
  EXPECT_LT(words, 200) << "the kill came after the turn had finished: nothing was tested";
  EXPECT_EQ(StartedAttempts(*events, *turn), std::vector<uint32_t>{1});
  EXPECT_EQ(CountSealed(*events, *turn), 1);
  const v1::TurnCompleted* completed = CompletedOf(*events, *turn);
  ASSERT_NE(completed, nullptr);
  EXPECT_EQ(completed->status(), v1::TURN_STATUS_FAILED);
  EXPECT_EQ(completed->error().reason(), "WORKER_LOST");

  absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok()) << messages.status();
  std::vector<v1::Message> partial = MessagesOf(*messages, *turn, v1::ROLE_ASSISTANT);
  ASSERT_EQ(partial.size(), 1u) << "the partial output is committed once";
  EXPECT_EQ(MessageText(partial[0]), TextOf(*events, *turn));
  ASSERT_NO_FATAL_FAILURE(ExpectSubscriberSawEverything(subscriber, session));
  ASSERT_NO_FATAL_FAILURE(ExpectUserMessagesStored(session, {*turn, *next}));
}

// The owner dies while a tool runs: the call has no result. The turn ends WORKER_LOST
// and the replica that ends it closes the call with a synthetic error result (in the
// stream and in the committed messages), so the next model call sees every call
// answered.
TEST_F(SessionFailover, KilledOwnerDuringAToolCallClosesItWithASyntheticErrorResult) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 2, .lease_ttl = absl::Seconds(2)}));
  const std::string session = CreateSession(kTenantA);
  absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, session, "@words 2\n@tool_ms 600000");
  ASSERT_TRUE(turn.ok()) << turn.status();
  absl::StatusOr<std::vector<v1::Event>> called = WaitForEvents(
      kTenantA, session,
      [&](const std::vector<v1::Event>& events) {
        for (const v1::Event& event : EventsOfTurn(events, *turn)) {
          if (event.has_tool_call()) return true;
        }
        return false;
      },
      "the tool call");
  ASSERT_TRUE(called.ok()) << called.status();
  int owner = -1;
  ASSERT_NO_FATAL_FAILURE(KillOwnerOf(session, *turn, &owner));
  absl::StatusOr<v1::Turn> ended = WaitForTurnEnd(kTenantA, session, *turn);
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->status(), v1::TURN_STATUS_FAILED);
  EXPECT_EQ(ended->error().reason(), "WORKER_LOST");

  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  std::string call_id;
  std::vector<v1::ToolResult> results;
  for (const v1::Event& event : EventsOfTurn(*events, *turn)) {
    if (event.has_tool_call()) call_id = event.tool_call().call_id();
    if (event.has_tool_result()) results.push_back(event.tool_result());
  }
  ASSERT_FALSE(call_id.empty());
  ASSERT_EQ(results.size(), 1u) << "exactly one result closes the call";
  EXPECT_EQ(results[0].call_id(), call_id);
  EXPECT_TRUE(results[0].is_error());
  EXPECT_EQ(results[0].duration_ms(), 0u) << "a synthetic result";
  EXPECT_NE(results[0].output().find("interrupted"), std::string::npos) << results[0].output();

  // Committed: the assistant message holds the call, a tool message its result.
  absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok()) << messages.status();
  std::vector<v1::Message> assistant = MessagesOf(*messages, *turn, v1::ROLE_ASSISTANT);
  std::vector<v1::Message> tool = MessagesOf(*messages, *turn, v1::ROLE_TOOL);
  ASSERT_EQ(assistant.size(), 1u);
  ASSERT_EQ(tool.size(), 1u);
  int calls = 0;
  for (const v1::Part& part : assistant[0].parts()) {
    calls += part.has_tool_call() && part.tool_call().call_id() == call_id;
  }
  EXPECT_EQ(calls, 1);
  ASSERT_EQ(tool[0].parts_size(), 1);
  EXPECT_EQ(tool[0].parts(0).tool_result().call_id(), call_id);
  EXPECT_TRUE(tool[0].parts(0).tool_result().is_error());
}

// A zombie: the owner is frozen (SIGSTOP) mid-output past its lease, another replica
// takes the turn over and ends it (WORKER_LOST), then the old owner resumes (SIGCONT)
// and carries on where it stopped. None of its events or writes may get through: the
// stream stays exactly what the new owner left, and the stored outcome is the new
// owner's. Each replica has one slot, so once the resumed zombie claims a new turn its
// old turn's thread has run to its end (it had to give the slot back): that is when
// the stream is compared, with no sleep.
TEST_F(SessionFailover, ZombieOwnerResumedAfterTakeoverWritesNothing) {
  ASSERT_NO_FATAL_FAILURE(
      StartCluster({.replicas = 2, .turn_slots = 1, .lease_ttl = absl::Seconds(2)}));
  const std::string session = CreateSession(kTenantA);
  absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, session, "@words 400\n@delay_ms 50");
  ASSERT_TRUE(turn.ok()) << turn.status();
  ASSERT_NO_FATAL_FAILURE(WaitForOutput(session, *turn, 3));
  absl::StatusOr<int> zombie = WaitForOwner(kTenantA, session, *turn);
  ASSERT_TRUE(zombie.ok()) << zombie.status();
  const int survivor = 1 - *zombie;

  replica(*zombie).Signal(SIGSTOP);
  absl::StatusOr<v1::Turn> ended = WaitForTurnEnd(kTenantA, session, *turn);
  if (!ended.ok()) replica(*zombie).Signal(SIGCONT);
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->status(), v1::TURN_STATUS_FAILED);
  EXPECT_EQ(ended->error().reason(), "WORKER_LOST");
  absl::StatusOr<std::vector<v1::Event>> at_takeover = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(at_takeover.ok()) << at_takeover.status();
  absl::StatusOr<std::vector<v1::Message>> messages_at_takeover = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages_at_takeover.ok());

  replica(*zombie).Signal(SIGCONT);
  // Two stalled probes: the survivor's single slot takes one, so the other can only
  // run on the zombie once its old turn let go of its slot.
  std::vector<std::pair<std::string, std::string>> probes;
  for (int i = 0; i < 2; ++i) {
    const std::string probe_session = CreateSession(kTenantA);
    absl::StatusOr<std::string> probe =
        SubmitTurn(kTenantA, probe_session, "@stall_ms 600000", {.replica = survivor});
    ASSERT_TRUE(probe.ok()) << probe.status();
    probes.emplace_back(probe_session, *probe);
  }
  bool zombie_claimed = false;
  ASSERT_TRUE(WaitUntil(
      [&] {
        for (const auto& [probe_session, probe] : probes) {
          auto state = GetSession(kTenantA, probe_session);
          if (state.ok() && state->lease_owner() == worker_id(*zombie)) zombie_claimed = true;
        }
        return zombie_claimed;
      },
      absl::Seconds(30)))
      << "the resumed zombie never claimed again: its old turn still holds its only slot";

  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), at_takeover->size()) << "the zombie added events";
  for (size_t i = 0; i < events->size(); ++i) {
    EXPECT_EQ((*events)[i].SerializeAsString(), (*at_takeover)[i].SerializeAsString())
        << "seq " << i + 1 << " changed after the zombie resumed";
  }
  absl::StatusOr<v1::Turn> final_state = GetTurn(kTenantA, *turn);
  ASSERT_TRUE(final_state.ok());
  EXPECT_EQ(final_state->SerializeAsString(), ended->SerializeAsString())
      << "the zombie changed the stored turn: " << final_state->ShortDebugString();
  absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok());
  EXPECT_EQ(messages->size(), messages_at_takeover->size()) << "the zombie stored a message";
  std::vector<v1::Message> partial = MessagesOf(*messages, *turn, v1::ROLE_ASSISTANT);
  ASSERT_EQ(partial.size(), 1u);
  EXPECT_EQ(MessageText(partial[0]), TextOf(*events, *turn));
  EXPECT_LT(CountTextDeltas(*events, *turn), 400);
  absl::StatusOr<store::v1::GetSessionResponse> state = GetSession(kTenantA, session);
  ASSERT_TRUE(state.ok());
  EXPECT_TRUE(state->lease_owner().empty()) << "still leased by " << state->lease_owner();

  for (const auto& [probe_session, probe] : probes) {
    v1::CancelTurnResponse cancelled;
    EXPECT_TRUE(CancelTurn(kTenantA, probe_session, probe, &cancelled, survivor).ok());
  }
}

// SIGTERM of the replica running a turn that has emitted nothing: the drain
// (--drain_timeout=1s) hands the turn back at once and another replica runs it as
// attempt 2. The lease is 30 s, so a retry within 15 s cannot come from lease expiry:
// it proves the hand-back. The retry stalls again and is then cancelled.
TEST_F(SessionFailover, DrainHandsBackATurnWithoutOutputToAnotherReplica) {
  ASSERT_NO_FATAL_FAILURE(StartCluster(
      {.replicas = 2, .lease_ttl = absl::Seconds(30), .drain_timeout = absl::Seconds(1)}));
  const std::string session = CreateSession(kTenantA);
  absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, session, "@stall_ms 600000");
  ASSERT_TRUE(turn.ok()) << turn.status();
  ASSERT_NO_FATAL_FAILURE(WaitForStartedAttempts(session, *turn, {1}, absl::Seconds(30)));
  absl::StatusOr<int> owner = WaitForOwner(kTenantA, session, *turn);
  ASSERT_TRUE(owner.ok()) << owner.status();

  replica(*owner).Signal(SIGTERM);
  ASSERT_NO_FATAL_FAILURE(WaitForStartedAttempts(session, *turn, {1, 2}, absl::Seconds(15)));
  absl::StatusOr<int> exit_code = replica(*owner).WaitForExit(absl::Seconds(20));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0);
  absl::StatusOr<int> new_owner = WaitForOwner(kTenantA, session, *turn);
  ASSERT_TRUE(new_owner.ok()) << new_owner.status();
  EXPECT_NE(*new_owner, *owner);

  v1::CancelTurnResponse cancelled;
  grpc::Status status = CancelTurn(kTenantA, session, *turn, &cancelled, *new_owner);
  ASSERT_TRUE(status.ok()) << Describe(status);
  absl::StatusOr<v1::Turn> ended = WaitForTurnEnd(kTenantA, session, *turn);
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->status(), v1::TURN_STATUS_CANCELLED);
  EXPECT_EQ(ended->attempt(), 2u);
  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_EQ(CountSealed(*events, *turn), 1);
}

// SIGTERM of the replica running a turn that is streaming: after --drain_timeout=1s the
// turn (which would need 20 s) ends FAILED {WORKER_SHUTDOWN} with its partial output
// committed, by the draining replica itself (the lease is 30 s and the end comes within
// 15 s, so no takeover did it), and the next queued turn runs on the other replica.
TEST_F(SessionFailover, DrainEndsATurnWithOutputWorkerShutdownAndKeepsItsOutput) {
  ASSERT_NO_FATAL_FAILURE(StartCluster(
      {.replicas = 2, .lease_ttl = absl::Seconds(30), .drain_timeout = absl::Seconds(1)}));
  const std::string session = CreateSession(kTenantA);
  absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, session, "@words 400\n@delay_ms 50");
  ASSERT_TRUE(turn.ok()) << turn.status();
  absl::StatusOr<std::string> next = SubmitTurn(kTenantA, session, "@delay_ms 0\nafter drain");
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_NO_FATAL_FAILURE(WaitForOutput(session, *turn, 3));
  absl::StatusOr<int> owner = WaitForOwner(kTenantA, session, *turn);
  ASSERT_TRUE(owner.ok()) << owner.status();

  replica(*owner).Signal(SIGTERM);
  absl::StatusOr<v1::Turn> ended = WaitForTurnEnd(kTenantA, session, *turn, absl::Seconds(15));
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->status(), v1::TURN_STATUS_FAILED);
  EXPECT_EQ(ended->error().reason(), "WORKER_SHUTDOWN");
  absl::StatusOr<int> exit_code = replica(*owner).WaitForExit(absl::Seconds(20));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0);

  absl::StatusOr<v1::Turn> after = WaitForTurnEnd(kTenantA, session, *next);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->status(), v1::TURN_STATUS_SUCCEEDED);
  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_LT(CountTextDeltas(*events, *turn), 400);
  EXPECT_EQ(CountSealed(*events, *turn), 1);
  absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok());
  std::vector<v1::Message> partial = MessagesOf(*messages, *turn, v1::ROLE_ASSISTANT);
  ASSERT_EQ(partial.size(), 1u);
  EXPECT_FALSE(MessageText(partial[0]).empty());
  EXPECT_EQ(MessageText(partial[0]), TextOf(*events, *turn));
}

// Redis loses everything (FLUSHALL on a Redis of the test's own) between two turns, with
// the first turn's events already persisted. session-svc alone notices (no test writes
// an epoch) and moves the session to epoch 2: the second turn's events continue after
// the durable last seq, in epoch 2, and the store agrees.
TEST_F(SessionFailover, RedisFlushIsRecoveredBySessionSvcWithANewEpoch) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 2, .private_redis = true}));
  const std::string session = CreateSession(kTenantA);
  absl::StatusOr<std::string> first = SubmitTurn(kTenantA, session, "@delay_ms 0\nbefore");
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(WaitForTurnEnd(kTenantA, session, *first).ok());
  absl::StatusOr<std::vector<v1::Event>> before = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(before.ok()) << before.status();
  const uint64_t durable = before->size();
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto last = GetLastSeq(kTenantA, session);
        return last.ok() && last->last_seq() == durable;
      },
      absl::Seconds(20)))
      << "the store never persisted the first turn's " << durable << " events";

  ASSERT_TRUE(redis().Command({"FLUSHALL"}).ok());
  absl::StatusOr<std::string> second = SubmitTurn(kTenantA, session, "@delay_ms 0\nafter");
  ASSERT_TRUE(second.ok()) << second.status();
  absl::StatusOr<v1::Turn> ended = WaitForTurnEnd(kTenantA, session, *second);
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->status(), v1::TURN_STATUS_SUCCEEDED);

  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_GT(events->size(), durable);
  for (size_t i = 0; i < events->size(); ++i) {
    const v1::Event& event = (*events)[i];
    if (i < durable) {
      EXPECT_EQ(event.epoch(), 1u) << "seq " << event.seq();
      EXPECT_EQ(event.SerializeAsString(), (*before)[i].SerializeAsString());
    } else {
      EXPECT_EQ(event.epoch(), 2u) << "seq " << event.seq();
      EXPECT_EQ(event.turn_id(), *second) << "seq " << event.seq();
    }
  }
  EXPECT_EQ(StartedAttempts(*events, *second), std::vector<uint32_t>{1});
  EXPECT_EQ(TextOf(*events, *second), "Echo: after");
  EXPECT_TRUE(WaitUntil(
      [&] {
        auto last = GetLastSeq(kTenantA, session);
        return last.ok() && last->epoch() == 2 && last->last_seq() == events->size();
      },
      absl::Seconds(20)))
      << "the store did not reach epoch 2 with every event persisted";
}

}  // namespace
}  // namespace parley::session::testing
