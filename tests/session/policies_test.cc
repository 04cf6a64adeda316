// What a caller can do to a session's turns through SessionRouter, end to end:
// multitask policies (INTERRUPT, REJECT), cancel of a queued and of a running turn,
// close with turns queued, idempotent submits, the status snapshot, and bad input on
// every call (INVALID_ARGUMENT naming the field, nothing written).
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/session/session_fixture.h"

namespace parley::session::testing {
namespace {

class SessionPolicies : public SessionFixture {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 2})); }

  void WaitForOutput(const std::string& session, const std::string& turn_id, int count) {
    auto events = WaitForEvents(
        kTenantA, session,
        [&](const std::vector<v1::Event>& events) {
          return CountTextDeltas(events, turn_id) >= count;
        },
        absl::StrCat(count, " TextDeltas of ", turn_id));
    ASSERT_TRUE(events.ok()) << events.status();
  }
};

// INTERRUPT while a turn streams: the running turn ends CANCELLED {INTERRUPTED} with its
// partial output stored, then the new turn runs; all of the old turn's events precede
// the new one's. The old turn would stream 400 words over 20 s; fewer than 400 prove the
// interrupt cut it.
TEST_F(SessionPolicies, InterruptCancelsTheRunningTurnKeepsItsOutputAndRunsTheNewOne) {
  const std::string session = CreateSession(kTenantA);
  absl::StatusOr<std::string> old_turn = SubmitTurn(kTenantA, session, "@words 400\n@delay_ms 50");
  ASSERT_TRUE(old_turn.ok()) << old_turn.status();
  ASSERT_NO_FATAL_FAILURE(WaitForOutput(session, *old_turn, 3));

  v1::SendMessageResponse sent;
  grpc::Status status = Submit(kTenantA, session, "@delay_ms 0\nnew question", &sent,
                               {.policy = v1::MULTITASK_POLICY_INTERRUPT});
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(sent.interrupted_turn_id(), *old_turn);
  absl::StatusOr<v1::Turn> interrupted = WaitForTurnEnd(kTenantA, session, *old_turn);
  ASSERT_TRUE(interrupted.ok()) << interrupted.status();
  EXPECT_EQ(interrupted->status(), v1::TURN_STATUS_CANCELLED);
  EXPECT_EQ(interrupted->finish_reason(), v1::FINISH_REASON_CANCELLED);
  EXPECT_EQ(interrupted->error().reason(), "INTERRUPTED");
  absl::StatusOr<v1::Turn> fresh = WaitForTurnEnd(kTenantA, session, sent.turn().id());
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(fresh->status(), v1::TURN_STATUS_SUCCEEDED);

  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_LT(CountTextDeltas(*events, *old_turn), 400);
  EXPECT_EQ(CountSealed(*events, *old_turn), 1);
  uint64_t last_old = 0, first_new = UINT64_MAX;
  for (const v1::Event& event : *events) {
    if (event.turn_id() == *old_turn) last_old = event.seq();
    if (event.turn_id() == sent.turn().id()) first_new = std::min(first_new, event.seq());
  }
  EXPECT_LT(last_old, first_new) << "the new turn started before the interrupted one ended";
  absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok());
  std::vector<v1::Message> partial = MessagesOf(*messages, *old_turn, v1::ROLE_ASSISTANT);
  ASSERT_EQ(partial.size(), 1u) << "the interrupted turn's partial output is kept";
  EXPECT_FALSE(MessageText(partial[0]).empty());
  EXPECT_EQ(MessageText(partial[0]), TextOf(*events, *old_turn));
  EXPECT_EQ(MessageText(MessagesOf(*messages, sent.turn().id(), v1::ROLE_ASSISTANT).at(0)),
            "Echo: new question");
}

// A turn with a tool round trip, run to the end: the stream and the committed messages
// hold, in order, the first step's text and the call, the tool's result, then the
// second step; the turn counts two steps.
TEST_F(SessionPolicies, AToolRoundTripIsCommittedInOrder) {
  const std::string session = CreateSession(kTenantA);
  absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, session, "@words 2\n@tool_ms 10");
  ASSERT_TRUE(turn.ok()) << turn.status();
  absl::StatusOr<v1::Turn> ended = WaitForTurnEnd(kTenantA, session, *turn);
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->status(), v1::TURN_STATUS_SUCCEEDED);
  EXPECT_EQ(ended->steps(), 2u);

  absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok()) << messages.status();
  std::vector<v1::Message> mine;
  for (const v1::Message& message : *messages) {
    if (message.turn_id() == *turn && message.role() != v1::ROLE_USER) mine.push_back(message);
  }
  ASSERT_EQ(mine.size(), 3u);
  EXPECT_EQ(mine[0].role(), v1::ROLE_ASSISTANT);
  ASSERT_EQ(mine[0].parts_size(), 2);
  EXPECT_EQ(mine[0].parts(0).text(), "w1 w2");
  const std::string call_id = mine[0].parts(1).tool_call().call_id();
  EXPECT_FALSE(call_id.empty());
  EXPECT_EQ(mine[0].parts(1).tool_call().name(), "scripted_wait");
  EXPECT_EQ(mine[1].role(), v1::ROLE_TOOL);
  ASSERT_EQ(mine[1].parts_size(), 1);
  EXPECT_EQ(mine[1].parts(0).tool_result().call_id(), call_id);
  EXPECT_FALSE(mine[1].parts(0).tool_result().is_error());
  EXPECT_EQ(mine[1].parts(0).tool_result().output(), "waited 10 ms");
  EXPECT_EQ(mine[2].role(), v1::ROLE_ASSISTANT);
  EXPECT_EQ(MessageText(mine[2]), "done.");
}

// REJECT while a turn runs (as the request's policy, and as the session's own policy):
// FAILED_PRECONDITION {SESSION_BUSY}, and no message, turn or event is stored. Once the
// session is idle the same message is accepted.
TEST_F(SessionPolicies, RejectWhileBusyAnswersSessionBusyAndStoresNothing) {
  const std::string session = CreateSession(kTenantA, v1::MULTITASK_POLICY_REJECT);
  absl::StatusOr<std::string> running = SubmitTurn(kTenantA, session, "@stall_ms 600000");
  ASSERT_TRUE(running.ok()) << running.status();
  ASSERT_TRUE(WaitForTurnStatus(kTenantA, *running, v1::TURN_STATUS_RUNNING).ok());
  ASSERT_TRUE(WaitForEvents(
                  kTenantA, session,
                  [&](const auto& events) { return !StartedAttempts(events, *running).empty(); },
                  "TurnStarted")
                  .ok());
  auto messages_before = ListMessages(kTenantA, session);
  auto turns_before = ListTurns(kTenantA, session);
  auto events_before = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(messages_before.ok() && turns_before.ok() && events_before.ok());

  for (v1::MultitaskPolicy policy :
       {v1::MULTITASK_POLICY_REJECT, v1::MULTITASK_POLICY_UNSPECIFIED}) {
    SCOPED_TRACE(v1::MultitaskPolicy_Name(policy));
    v1::SendMessageResponse sent;
    grpc::Status status = Submit(kTenantA, session, "@delay_ms 0\nbusy?", &sent,
                                 {.policy = policy, .idempotency_key = "reject-me"});
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Describe(status);
    EXPECT_EQ(ErrorReason(status), "SESSION_BUSY");
  }
  auto messages_after = ListMessages(kTenantA, session);
  auto turns_after = ListTurns(kTenantA, session);
  auto events_after = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(messages_after.ok() && turns_after.ok() && events_after.ok());
  EXPECT_EQ(messages_after->size(), messages_before->size());
  EXPECT_EQ(turns_after->size(), turns_before->size());
  EXPECT_EQ(events_after->size(), events_before->size());

  v1::CancelTurnResponse cancelled;
  ASSERT_TRUE(CancelTurn(kTenantA, session, *running, &cancelled).ok());
  ASSERT_TRUE(WaitForTurnEnd(kTenantA, session, *running).ok());
  // The rejected key was never stored, so it is free to use now.
  absl::StatusOr<std::string> accepted =
      SubmitTurn(kTenantA, session, "@delay_ms 0\nidle now", {.idempotency_key = "reject-me"});
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  absl::StatusOr<v1::Turn> ran = WaitForTurnEnd(kTenantA, session, *accepted);
  ASSERT_TRUE(ran.ok()) << ran.status();
  EXPECT_EQ(ran->status(), v1::TURN_STATUS_SUCCEEDED);
}

// CancelTurn of a turn waiting behind a running one: CANCELLED at once, never started
// (no TurnStarted, no answer) once the turns around it have run.
TEST_F(SessionPolicies, CancelOfAQueuedTurnMeansItNeverRuns) {
  const std::string session = CreateSession(kTenantA);
  absl::StatusOr<std::string> head = SubmitTurn(kTenantA, session, "@words 20\n@delay_ms 25");
  absl::StatusOr<std::string> queued = SubmitTurn(kTenantA, session, "@delay_ms 0\nskip me");
  absl::StatusOr<std::string> tail = SubmitTurn(kTenantA, session, "@delay_ms 0\nrun me");
  ASSERT_TRUE(head.ok() && queued.ok() && tail.ok());

  v1::CancelTurnResponse response;
  grpc::Status status = CancelTurn(kTenantA, session, *queued, &response, 1);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(response.turn().id(), *queued);
  EXPECT_EQ(response.turn().status(), v1::TURN_STATUS_CANCELLED);
  absl::StatusOr<v1::Turn> last = WaitForTurnEnd(kTenantA, session, *tail);
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->status(), v1::TURN_STATUS_SUCCEEDED);

  absl::StatusOr<v1::Turn> cancelled = GetTurn(kTenantA, *queued);
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->status(), v1::TURN_STATUS_CANCELLED);
  EXPECT_FALSE(cancelled->has_start_time());
  EXPECT_EQ(cancelled->error().kind(), v1::TURN_ERROR_KIND_CANCELLED)
      << "Turn.error: set for CANCELLED with kind CANCELLED (resources.proto)";
  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_TRUE(StartedAttempts(*events, *queued).empty());
  EXPECT_EQ(CountTextDeltas(*events, *queued), 0);
  EXPECT_EQ(TextOf(*events, *tail), "Echo: run me");
}

// CancelTurn of a streaming turn: its owner stops it, it ends CANCELLED with its partial
// output stored and sealed. Fewer than the 400 words it would stream prove the cut.
TEST_F(SessionPolicies, CancelOfARunningTurnStopsItAndKeepsItsOutput) {
  const std::string session = CreateSession(kTenantA);
  absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, session, "@words 400\n@delay_ms 50");
  ASSERT_TRUE(turn.ok()) << turn.status();
  ASSERT_NO_FATAL_FAILURE(WaitForOutput(session, *turn, 3));

  // Through the replica that does not necessarily own it: the cancel must travel.
  v1::CancelTurnResponse response;
  grpc::Status status = CancelTurn(kTenantA, session, *turn, &response, 1);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_TRUE(response.turn().status() == v1::TURN_STATUS_CANCELLED ||
              response.turn().cancel_requested())
      << response.turn().ShortDebugString();
  absl::StatusOr<v1::Turn> ended = WaitForTurnEnd(kTenantA, session, *turn, absl::Seconds(10));
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->status(), v1::TURN_STATUS_CANCELLED);
  EXPECT_EQ(ended->finish_reason(), v1::FINISH_REASON_CANCELLED);
  EXPECT_EQ(ended->error().kind(), v1::TURN_ERROR_KIND_CANCELLED);

  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_LT(CountTextDeltas(*events, *turn), 400);
  const v1::TurnCompleted* completed = CompletedOf(*events, *turn);
  ASSERT_NE(completed, nullptr);
  EXPECT_EQ(completed->status(), v1::TURN_STATUS_CANCELLED);
  EXPECT_EQ(CountSealed(*events, *turn), 1);
  absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok());
  std::vector<v1::Message> partial = MessagesOf(*messages, *turn, v1::ROLE_ASSISTANT);
  ASSERT_EQ(partial.size(), 1u);
  EXPECT_EQ(MessageText(partial[0]), TextOf(*events, *turn));
}

// CloseSession with a turn streaming and two queued: all three end CANCELLED, the
// session is CLOSED, a SessionStatusChanged ACTIVE → CLOSED is in the stream, and a
// later message is refused with SESSION_CLOSED.
TEST_F(SessionPolicies, CloseSessionCancelsTheRunningAndQueuedTurns) {
  const std::string session = CreateSession(kTenantA);
  absl::StatusOr<std::string> running = SubmitTurn(kTenantA, session, "@words 400\n@delay_ms 50");
  absl::StatusOr<std::string> queued1 = SubmitTurn(kTenantA, session, "@delay_ms 0\none");
  absl::StatusOr<std::string> queued2 = SubmitTurn(kTenantA, session, "@delay_ms 0\ntwo");
  ASSERT_TRUE(running.ok() && queued1.ok() && queued2.ok());
  ASSERT_NO_FATAL_FAILURE(WaitForOutput(session, *running, 3));

  v1::CloseSessionResponse closed;
  grpc::Status status = CloseSession(kTenantA, session, &closed, 1);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(closed.session().status(), v1::SESSION_STATUS_CLOSED);
  for (const std::string& turn : {*running, *queued1, *queued2}) {
    absl::StatusOr<v1::Turn> ended = WaitForTurn(
        kTenantA, turn, [](const v1::Turn& t) { return IsTerminal(t.status()); }, "ended");
    ASSERT_TRUE(ended.ok()) << ended.status();
    EXPECT_EQ(ended->status(), v1::TURN_STATUS_CANCELLED) << turn;
  }
  ASSERT_TRUE(WaitForTurnEnd(kTenantA, session, *running).ok());
  absl::StatusOr<std::vector<v1::Event>> events = WaitForEvents(
      kTenantA, session,
      [](const std::vector<v1::Event>& events) {
        for (const v1::Event& event : events) {
          if (event.has_session_status_changed() &&
              event.session_status_changed().old_status() == v1::SESSION_STATUS_ACTIVE &&
              event.session_status_changed().new_status() == v1::SESSION_STATUS_CLOSED) {
            return true;
          }
        }
        return false;
      },
      "SessionStatusChanged ACTIVE -> CLOSED");
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_TRUE(StartedAttempts(*events, *queued1).empty());
  EXPECT_TRUE(StartedAttempts(*events, *queued2).empty());
  EXPECT_LT(CountTextDeltas(*events, *running), 400);
  absl::StatusOr<store::v1::GetSessionResponse> state = GetSession(kTenantA, session);
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->session().status(), v1::SESSION_STATUS_CLOSED);
  EXPECT_EQ(state->queued_turns(), 0u);

  v1::SendMessageResponse refused;
  status = Submit(kTenantA, session, "anyone?", &refused);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Describe(status);
  EXPECT_EQ(ErrorReason(status), "SESSION_CLOSED");
}

// The same idempotency key twice (through different replicas): one message, one turn,
// the second answer marked duplicate.
TEST_F(SessionPolicies, ARetriedSubmitReturnsTheFirstResult) {
  const std::string session = CreateSession(kTenantA);
  v1::SendMessageResponse first, second;
  ASSERT_TRUE(Submit(kTenantA, session, "@delay_ms 0\nonce", &first,
                     {.idempotency_key = "key-1", .replica = 0})
                  .ok());
  ASSERT_TRUE(Submit(kTenantA, session, "@delay_ms 0\nonce", &second,
                     {.idempotency_key = "key-1", .replica = 1})
                  .ok());
  EXPECT_FALSE(first.duplicate());
  EXPECT_TRUE(second.duplicate());
  EXPECT_EQ(second.message().id(), first.message().id());
  EXPECT_EQ(second.turn().id(), first.turn().id());
  ASSERT_TRUE(WaitForTurnEnd(kTenantA, session, first.turn().id()).ok());
  absl::StatusOr<std::vector<v1::Turn>> turns = ListTurns(kTenantA, session);
  ASSERT_TRUE(turns.ok());
  EXPECT_EQ(turns->size(), 1u);
  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_EQ(StartedAttempts(*events, first.turn().id()), std::vector<uint32_t>{1});
}

// GetSessionStatus while a turn runs and two wait: the snapshot a reconnecting client
// needs.
TEST_F(SessionPolicies, SessionStatusReportsTheRunningTurnQueueAndStreamPosition) {
  const std::string session = CreateSession(kTenantA);
  absl::StatusOr<std::string> running = SubmitTurn(kTenantA, session, "@stall_ms 600000");
  ASSERT_TRUE(running.ok());
  ASSERT_TRUE(SubmitTurn(kTenantA, session, "a").ok());
  ASSERT_TRUE(SubmitTurn(kTenantA, session, "b").ok());
  ASSERT_TRUE(WaitForEvents(
                  kTenantA, session,
                  [&](const auto& events) { return !StartedAttempts(events, *running).empty(); },
                  "TurnStarted")
                  .ok());
  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok());
  router::v1::GetSessionStatusResponse snapshot;
  grpc::Status status = GetSessionStatus(kTenantA, session, &snapshot, 1);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(snapshot.session_id(), session);
  EXPECT_EQ(snapshot.status(), v1::SESSION_STATUS_ACTIVE);
  EXPECT_EQ(snapshot.running_turn_id(), *running);
  EXPECT_GE(ReplicaOfWorker(snapshot.lease_owner()), 0) << snapshot.lease_owner();
  EXPECT_GE(snapshot.lease_epoch(), 1u);
  EXPECT_TRUE(snapshot.has_lease_expiry());
  EXPECT_EQ(snapshot.queued_turns(), 2u);
  EXPECT_EQ(snapshot.last_seq(), events->size());
  EXPECT_EQ(snapshot.epoch(), 1u);
  EXPECT_FALSE(snapshot.has_retry());
}

// ---- Bad input: INVALID_ARGUMENT naming the field, before any side effect ----

class SessionBadInput : public SessionFixture {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 1}));
    session_ = CreateSession(kTenantA);
  }

  grpc::Status RawSubmit(const router::v1::SubmitMessageRequest& request) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    v1::SendMessageResponse response;
    return router(0).SubmitMessage(&context, request, &response);
  }

  router::v1::SubmitMessageRequest ValidSubmit() {
    router::v1::SubmitMessageRequest request;
    request.set_tenant_id(kTenantA);
    request.mutable_request()->set_session_id(session_);
    request.mutable_request()->add_content()->set_text("hello");
    return request;
  }

  // Nothing of the session changed: no message, no turn, no event, no Redis stream.
  void ExpectNothingWritten() {
    auto messages = ListMessages(kTenantA, session_);
    auto turns = ListTurns(kTenantA, session_);
    auto events = ReadSessionEvents(kTenantA, session_);
    ASSERT_TRUE(messages.ok() && turns.ok() && events.ok());
    EXPECT_TRUE(messages->empty());
    EXPECT_TRUE(turns->empty());
    EXPECT_TRUE(events->empty());
    auto exists = redis().Command({"EXISTS", keys().EventStream(session_)});
    ASSERT_TRUE(exists.ok());
    EXPECT_EQ((*exists)->integer, 0);
    auto state = GetSession(kTenantA, session_);
    ASSERT_TRUE(state.ok());
    EXPECT_EQ(state->session().status(), v1::SESSION_STATUS_ACTIVE);
  }

  std::string session_;
};

#define EXPECT_INVALID_FIELD(status, field)                                         \
  do {                                                                              \
    grpc::Status s_ = (status);                                                     \
    EXPECT_EQ(s_.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s_); \
    EXPECT_TRUE(NamesField(s_, field))                                              \
        << "expected a violation of " << field << ": " << Describe(s_);             \
  } while (0)

TEST_F(SessionBadInput, SubmitMessageNamesTheFieldAndStoresNothing) {
  struct Case {
    std::string name;
    std::string field;
    std::function<void(router::v1::SubmitMessageRequest&)> spoil;
  };
  const std::vector<Case> cases = {
      {"no tenant", "tenant_id", [](auto& r) { r.clear_tenant_id(); }},
      {"tenant too long", "tenant_id", [](auto& r) { r.set_tenant_id(std::string(300, 't')); }},
      {"no session", "session_id", [](auto& r) { r.mutable_request()->clear_session_id(); }},
      {"session too long", "session_id",
       [](auto& r) { r.mutable_request()->set_session_id(std::string(300, 's')); }},
      {"no content", "content", [](auto& r) { r.mutable_request()->clear_content(); }},
      {"empty part", "content", [](auto& r) { r.mutable_request()->add_content(); }},
      {"reasoning part", "content",
       [](auto& r) { r.mutable_request()->add_content()->set_reasoning("thinking"); }},
      {"65 parts", "content",
       [](auto& r) {
         for (int i = 0; i < 64; ++i) r.mutable_request()->add_content()->set_text("x");
       }},
      {"over 1 MiB", "content",
       [](auto& r) {
         r.mutable_request()->mutable_content(0)->set_text(std::string(1 << 20, 'x'));
       }},
      {"key too long", "idempotency_key",
       [](auto& r) { r.mutable_request()->set_idempotency_key(std::string(257, 'k')); }},
      {"key not printable", "idempotency_key",
       [](auto& r) { r.mutable_request()->set_idempotency_key("bad\x01key"); }},
      {"unknown policy", "multitask_policy",
       [](auto& r) {
         r.mutable_request()->set_multitask_policy(static_cast<v1::MultitaskPolicy>(99));
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    router::v1::SubmitMessageRequest request = ValidSubmit();
    c.spoil(request);
    EXPECT_INVALID_FIELD(RawSubmit(request), c.field);
  }
  ASSERT_NO_FATAL_FAILURE(ExpectNothingWritten());
}

TEST_F(SessionBadInput, CancelTurnNamesTheFieldAndChangesNothing) {
  absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, session_, "@stall_ms 600000");
  ASSERT_TRUE(turn.ok()) << turn.status();
  ASSERT_TRUE(WaitForTurnStatus(kTenantA, *turn, v1::TURN_STATUS_RUNNING).ok());
  v1::CancelTurnResponse response;
  EXPECT_INVALID_FIELD(CancelTurn("", session_, *turn, &response), "tenant_id");
  EXPECT_INVALID_FIELD(CancelTurn(std::string(300, 't'), session_, *turn, &response), "tenant_id");
  EXPECT_INVALID_FIELD(CancelTurn(kTenantA, "", *turn, &response), "session_id");
  EXPECT_INVALID_FIELD(CancelTurn(kTenantA, session_, std::string(300, 'x'), &response), "turn_id");
  absl::StatusOr<v1::Turn> still = GetTurn(kTenantA, *turn);
  ASSERT_TRUE(still.ok());
  EXPECT_EQ(still->status(), v1::TURN_STATUS_RUNNING);
  EXPECT_FALSE(still->cancel_requested());
  ASSERT_TRUE(CancelTurn(kTenantA, session_, *turn, &response).ok());
}

TEST_F(SessionBadInput, CloseSessionNamesTheFieldAndLeavesTheSessionOpen) {
  v1::CloseSessionResponse response;
  EXPECT_INVALID_FIELD(CloseSession("", session_, &response), "tenant_id");
  EXPECT_INVALID_FIELD(CloseSession(kTenantA, "", &response), "session_id");
  EXPECT_INVALID_FIELD(CloseSession(kTenantA, std::string(300, 's'), &response), "session_id");
  ASSERT_NO_FATAL_FAILURE(ExpectNothingWritten());
}

TEST_F(SessionBadInput, GetSessionStatusNamesTheField) {
  router::v1::GetSessionStatusResponse response;
  EXPECT_INVALID_FIELD(GetSessionStatus("", session_, &response), "tenant_id");
  EXPECT_INVALID_FIELD(GetSessionStatus(kTenantA, "", &response), "session_id");
  EXPECT_INVALID_FIELD(GetSessionStatus(kTenantA, std::string(300, 's'), &response), "session_id");
  ASSERT_NO_FATAL_FAILURE(ExpectNothingWritten());
}

// Another tenant's session behaves like one that does not exist, on every call.
TEST_F(SessionBadInput, AnotherTenantsSessionIsNotFoundAndUntouched) {
  CreateSession(kTenantB);  // Tenant B exists.
  v1::SendMessageResponse sent;
  grpc::Status status = Submit(kTenantB, session_, "hello", &sent);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << Describe(status);
  v1::CancelTurnResponse cancelled;
  status = CancelTurn(kTenantB, session_, "", &cancelled);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << Describe(status);
  v1::CloseSessionResponse closed;
  status = CloseSession(kTenantB, session_, &closed);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << Describe(status);
  router::v1::GetSessionStatusResponse snapshot;
  status = GetSessionStatus(kTenantB, session_, &snapshot);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << Describe(status);
  ASSERT_NO_FATAL_FAILURE(ExpectNothingWritten());
}

}  // namespace
}  // namespace parley::session::testing
