// Turn scheduling across parley-session replicas, end to end (real Postgres, Redis and
// processes): every turn runs exactly once, FIFO within its session, sessions in
// parallel; tenants cannot starve each other; the per-tenant cap holds across replicas;
// a turn that waited past the queue TTL is not run.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/session/session_fixture.h"

namespace parley::session::testing {
namespace {

class SessionScheduling : public SessionFixture {};

struct Interval {
  absl::Time start;
  absl::Time end;
  std::string session;
  std::string turn;
};

// Turns of different sessions whose [start, end] overlap: proof that sessions ran in
// parallel. `intervals` sorted by start.
int CountCrossSessionOverlaps(const std::vector<Interval>& intervals) {
  int overlaps = 0;
  for (size_t i = 1; i < intervals.size(); ++i) {
    for (size_t j = i; j-- > 0 && i - j <= 64;) {
      if (intervals[j].session != intervals[i].session && intervals[j].end > intervals[i].start) {
        ++overlaps;
        break;
      }
    }
  }
  return overlaps;
}

// The positions of `turns` in the event order must be one block per turn, in the
// given order: all of turn i's events precede turn i+1's.
::testing::AssertionResult EventsAreFifo(const std::vector<v1::Event>& events,
                                         const std::vector<std::string>& turns) {
  std::map<std::string, size_t> round;
  for (size_t i = 0; i < turns.size(); ++i) round[turns[i]] = i;
  size_t highest = 0;
  for (const v1::Event& event : events) {
    if (event.turn_id().empty()) continue;
    auto it = round.find(event.turn_id());
    if (it == round.end()) {
      return ::testing::AssertionFailure()
             << "seq " << event.seq() << " names unknown turn " << event.turn_id();
    }
    if (it->second < highest) {
      return ::testing::AssertionFailure() << "seq " << event.seq() << " of turn #" << it->second
                                           << " follows events of turn #" << highest;
    }
    highest = it->second;
  }
  return ::testing::AssertionSuccess();
}

// 3 replicas, 1,000 turns over 100 sessions, submitted through all replicas at once.
TEST_F(SessionScheduling, ThousandTurnsOverHundredSessionsRunOnceInOrderAndInParallel) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 3, .turn_slots = 16}));
  constexpr int kSessions = 100;
  constexpr int kRounds = 10;
  constexpr int kSubmitters = 10;
  std::vector<std::string> sessions;
  for (int i = 0; i < kSessions; ++i) sessions.push_back(CreateSession(kTenantA));
  std::vector<std::vector<std::string>> turns(kSessions, std::vector<std::string>(kRounds));

  const absl::Time start = absl::Now();
  // Each submitter owns every kSubmitters-th session, so a session's messages are
  // submitted in order while the sessions' messages interleave across replicas.
  std::vector<std::thread> submitters;
  std::atomic<int> failures{0};
  for (int t = 0; t < kSubmitters; ++t) {
    submitters.emplace_back([&, t] {
      for (int round = 0; round < kRounds; ++round) {
        for (int s = t; s < kSessions; s += kSubmitters) {
          absl::StatusOr<std::string> turn = SubmitTurn(
              kTenantA, sessions[s], absl::StrCat("@delay_ms 0\nsession ", s, " round ", round),
              {.idempotency_key = absl::StrCat("s", s, "-r", round)});
          if (!turn.ok()) {
            ADD_FAILURE() << "submit " << s << "/" << round << ": " << turn.status();
            ++failures;
            continue;
          }
          turns[s][round] = *turn;
        }
      }
    });
  }
  for (auto& thread : submitters) thread.join();
  ASSERT_EQ(failures.load(), 0);
  const absl::Duration submit_time = absl::Now() - start;

  // FIFO makes the last turn of a session its last to end.
  std::vector<bool> done(kSessions, false);
  ASSERT_TRUE(WaitUntil(
      [&] {
        bool all = true;
        for (int s = 0; s < kSessions; ++s) {
          if (done[s]) continue;
          absl::StatusOr<v1::Turn> last = GetTurn(kTenantA, turns[s][kRounds - 1]);
          done[s] = last.ok() && IsTerminal(last->status());
          all = all && done[s];
        }
        return all;
      },
      absl::Seconds(120), absl::Milliseconds(200)))
      << "not every session's last turn ended within 120 s";
  const absl::Duration run_time = absl::Now() - start;
  std::cout << "1,000 turns: submitted in " << submit_time << ", all ended after " << run_time
            << "\n";

  std::vector<Interval> intervals;
  for (int s = 0; s < kSessions; ++s) {
    SCOPED_TRACE(absl::StrCat("session #", s, " ", sessions[s]));
    absl::StatusOr<v1::Turn> last = WaitForTurnEnd(kTenantA, sessions[s], turns[s][kRounds - 1]);
    if (!last.ok()) {
      ADD_FAILURE() << last.status();
      continue;
    }
    absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, sessions[s]);
    if (!events.ok()) {  // 1..N, no gap, no duplicate.
      ADD_FAILURE() << events.status();
      continue;
    }
    EXPECT_TRUE(EventsAreFifo(*events, turns[s]));

    absl::StatusOr<std::vector<v1::Turn>> stored = ListTurns(kTenantA, sessions[s]);
    ASSERT_TRUE(stored.ok()) << stored.status();
    ASSERT_EQ(stored->size(), static_cast<size_t>(kRounds));
    absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, sessions[s]);
    ASSERT_TRUE(messages.ok()) << messages.status();
    for (int round = 0; round < kRounds; ++round) {
      const std::string& id = turns[s][round];
      const v1::Turn& turn = (*stored)[round];
      SCOPED_TRACE(absl::StrCat("round ", round, " turn ", id));
      EXPECT_EQ(turn.id(), id) << "turns are listed in submission order";
      EXPECT_EQ(turn.status(), v1::TURN_STATUS_SUCCEEDED);
      EXPECT_EQ(turn.attempt(), 1u);
      EXPECT_EQ(StartedAttempts(*events, id), std::vector<uint32_t>{1}) << "ran exactly once";
      EXPECT_EQ(CountSealed(*events, id), 1);
      const v1::TurnCompleted* completed = CompletedOf(*events, id);
      ASSERT_NE(completed, nullptr);
      EXPECT_EQ(completed->status(), v1::TURN_STATUS_SUCCEEDED);
      EXPECT_EQ(MessagesOf(*messages, id, v1::ROLE_USER).size(), 1u);
      std::vector<v1::Message> answers = MessagesOf(*messages, id, v1::ROLE_ASSISTANT);
      ASSERT_EQ(answers.size(), 1u);
      EXPECT_EQ(MessageText(answers[0]), TextOf(*events, id));
      EXPECT_EQ(TextOf(*events, id), absl::StrCat("Echo: session ", s, " round ", round));
      if (round > 0) {
        EXPECT_GE(FromTimestamp(turn.start_time()), FromTimestamp((*stored)[round - 1].end_time()))
            << "a session runs one turn at a time";
      }
      intervals.push_back(
          {FromTimestamp(turn.start_time()), FromTimestamp(turn.end_time()), sessions[s], id});
    }
  }
  std::sort(intervals.begin(), intervals.end(),
            [](const Interval& a, const Interval& b) { return a.start < b.start; });
  const int overlaps = CountCrossSessionOverlaps(intervals);
  std::cout << overlaps << " turns started while another session's turn ran\n";
  EXPECT_GT(overlaps, 0) << "sessions never ran in parallel";
}

// Tenant A queues 1,000 turns over 200 sessions before tenant B sends one; with one
// slot, the claim order is the start order. A running blocker turn holds the slot while
// everything is queued, so the claims race nothing: they begin when it is cancelled.
TEST_F(SessionScheduling, AnotherTenantsSingleTurnIsNotStarvedByAThousandQueuedTurns) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 1, .turn_slots = 1}));
  const std::string blocker_session = CreateSession(kTenantA);
  absl::StatusOr<std::string> blocker = SubmitTurn(kTenantA, blocker_session, "@stall_ms 600000");
  ASSERT_TRUE(blocker.ok()) << blocker.status();
  ASSERT_TRUE(WaitForTurnStatus(kTenantA, *blocker, v1::TURN_STATUS_RUNNING).ok());

  constexpr int kSessions = 200;
  constexpr int kTurnsPerSession = 5;
  std::vector<std::string> sessions;
  for (int i = 0; i < kSessions; ++i) sessions.push_back(CreateSession(kTenantA));
  std::vector<std::string> a_turns(kSessions * kTurnsPerSession);
  std::vector<std::thread> submitters;
  for (int t = 0; t < 4; ++t) {
    submitters.emplace_back([&, t] {
      for (int round = 0; round < kTurnsPerSession; ++round) {
        for (int s = t; s < kSessions; s += 4) {
          absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, sessions[s], "@delay_ms 0\na");
          if (!turn.ok()) {
            ADD_FAILURE() << turn.status();
            continue;
          }
          a_turns[round * kSessions + s] = *turn;
        }
      }
    });
  }
  for (auto& thread : submitters) thread.join();
  const std::string b_session = CreateSession(kTenantB);
  absl::StatusOr<std::string> b_turn = SubmitTurn(kTenantB, b_session, "@delay_ms 0\nb");
  ASSERT_TRUE(b_turn.ok()) << b_turn.status();

  v1::CancelTurnResponse cancelled;
  grpc::Status status = CancelTurn(kTenantA, blocker_session, *blocker, &cancelled);
  ASSERT_TRUE(status.ok()) << Describe(status);
  absl::StatusOr<v1::Turn> b = WaitForTurnEnd(kTenantB, b_session, *b_turn, absl::Seconds(60));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->status(), v1::TURN_STATUS_SUCCEEDED);

  absl::StatusOr<v1::Turn> blocker_state = GetTurn(kTenantA, *blocker);
  ASSERT_TRUE(blocker_state.ok());
  int a_started_before_b = 0;
  absl::Time first_a_start = absl::InfiniteFuture();
  for (const std::string& id : a_turns) {
    absl::StatusOr<v1::Turn> a = GetTurn(kTenantA, id);
    ASSERT_TRUE(a.ok()) << a.status();
    if (!a->has_start_time()) continue;
    first_a_start = std::min(first_a_start, FromTimestamp(a->start_time()));
    if (FromTimestamp(a->start_time()) < FromTimestamp(b->start_time())) ++a_started_before_b;
  }
  const absl::Time blocker_end = FromTimestamp(blocker_state->end_time());
  std::cout << a_started_before_b << " of tenant A's queued turns started before tenant B's\n";
  ASSERT_GE(first_a_start, blocker_end)
      << "tenant A's turns started " << (blocker_end - first_a_start)
      << " before the blocker released the only slot: the claim order was not tested";
  EXPECT_LT(a_started_before_b, 10)
      << "tenant B's single turn waited behind " << a_started_before_b
      << " of tenant A's; B started " << (FromTimestamp(b->start_time()) - blocker_end)
      << " after the slot was freed";
}

// --max_running_per_tenant=1 over two replicas: tenant A's turns (three sessions, two
// slow turns each) never overlap, while tenant B's turn runs beside them (the cap is per
// tenant, not global). Start and end times come from the store's clock (the claim and
// the completion); a real violation overlaps by most of a 600 ms turn, the 100 ms
// tolerance covers a claim statement that began just before the previous turn's
// completion committed.
TEST_F(SessionScheduling, PerTenantCapNeverRunsTwoTurnsOfATenantAtOnce) {
  ASSERT_NO_FATAL_FAILURE(
      StartCluster({.replicas = 2, .turn_slots = 4, .max_running_per_tenant = 1}));
  std::vector<std::pair<std::string, std::string>> a_turns;  // (session, turn)
  std::vector<std::string> a_sessions;
  for (int i = 0; i < 3; ++i) a_sessions.push_back(CreateSession(kTenantA));
  const std::string b_session = CreateSession(kTenantB);
  for (int round = 0; round < 2; ++round) {
    for (const std::string& session : a_sessions) {
      absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, session, "@words 4\n@delay_ms 150");
      ASSERT_TRUE(turn.ok()) << turn.status();
      a_turns.emplace_back(session, *turn);
    }
  }
  absl::StatusOr<std::string> b_turn = SubmitTurn(kTenantB, b_session, "@words 8\n@delay_ms 150");
  ASSERT_TRUE(b_turn.ok()) << b_turn.status();

  std::vector<Interval> a_intervals;
  for (const auto& [session, id] : a_turns) {
    absl::StatusOr<v1::Turn> turn = WaitForTurnEnd(kTenantA, session, id, absl::Seconds(60));
    ASSERT_TRUE(turn.ok()) << turn.status();
    EXPECT_EQ(turn->status(), v1::TURN_STATUS_SUCCEEDED);
    a_intervals.push_back(
        {FromTimestamp(turn->start_time()), FromTimestamp(turn->end_time()), session, id});
  }
  absl::StatusOr<v1::Turn> b = WaitForTurnEnd(kTenantB, b_session, *b_turn, absl::Seconds(60));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->status(), v1::TURN_STATUS_SUCCEEDED);

  std::sort(a_intervals.begin(), a_intervals.end(),
            [](const Interval& x, const Interval& y) { return x.start < y.start; });
  for (size_t i = 1; i < a_intervals.size(); ++i) {
    EXPECT_GE(a_intervals[i].start + absl::Milliseconds(100), a_intervals[i - 1].end)
        << "turn " << a_intervals[i].turn << " started "
        << (a_intervals[i - 1].end - a_intervals[i].start) << " before turn "
        << a_intervals[i - 1].turn << " of the same tenant ended";
  }
  bool b_overlapped_a = false;
  for (const Interval& a : a_intervals) {
    if (a.start < FromTimestamp(b->end_time()) && FromTimestamp(b->start_time()) < a.end)
      b_overlapped_a = true;
  }
  EXPECT_TRUE(b_overlapped_a) << "tenant B's turn waited for tenant A's: the cap acted globally";
}

// --queued_turn_ttl=1s: a turn that waits behind a stalled turn for longer is not run
// when it reaches the head of its session; it ends CANCELLED QUEUED_TTL_EXPIRED, and the
// session goes on with the next turn. The stalled head is cancelled only once the
// queued turn is older than the TTL (read from its create_time), so expiry is certain.
TEST_F(SessionScheduling, ATurnQueuedLongerThanTheTtlEndsCancelledWhenItReachesTheHead) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 2, .queued_turn_ttl = absl::Seconds(1)}));
  const std::string session = CreateSession(kTenantA);
  absl::StatusOr<std::string> head = SubmitTurn(kTenantA, session, "@stall_ms 600000");
  ASSERT_TRUE(head.ok()) << head.status();
  ASSERT_TRUE(WaitForTurnStatus(kTenantA, *head, v1::TURN_STATUS_RUNNING).ok());
  absl::StatusOr<std::string> late = SubmitTurn(kTenantA, session, "@delay_ms 0\ntoo late");
  ASSERT_TRUE(late.ok()) << late.status();
  absl::StatusOr<v1::Turn> queued = GetTurn(kTenantA, *late);
  ASSERT_TRUE(queued.ok()) << queued.status();
  ASSERT_EQ(queued->status(), v1::TURN_STATUS_QUEUED);
  const absl::Time expired_at = FromTimestamp(queued->create_time()) + absl::Seconds(1);
  ASSERT_TRUE(WaitUntil([&] { return absl::Now() > expired_at + absl::Milliseconds(300); },
                        absl::Seconds(10)));

  v1::CancelTurnResponse cancelled;
  grpc::Status status = CancelTurn(kTenantA, session, *head, &cancelled);
  ASSERT_TRUE(status.ok()) << Describe(status);
  absl::StatusOr<v1::Turn> expired = WaitForTurn(
      kTenantA, *late, [](const v1::Turn& t) { return IsTerminal(t.status()); }, "ended");
  ASSERT_TRUE(expired.ok()) << expired.status();
  EXPECT_EQ(expired->status(), v1::TURN_STATUS_CANCELLED);
  EXPECT_EQ(expired->error().reason(), "QUEUED_TTL_EXPIRED");

  // The session carries on: a fresh turn runs.
  absl::StatusOr<std::string> next = SubmitTurn(kTenantA, session, "@delay_ms 0\nnext");
  ASSERT_TRUE(next.ok()) << next.status();
  absl::StatusOr<v1::Turn> ran = WaitForTurnEnd(kTenantA, session, *next);
  ASSERT_TRUE(ran.ok()) << ran.status();
  EXPECT_EQ(ran->status(), v1::TURN_STATUS_SUCCEEDED);
  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_EQ(CountTextDeltas(*events, *late), 0) << "the expired turn must not run";
  EXPECT_LE(CountSealed(*events, *late), 1);
  absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok());
  EXPECT_TRUE(MessagesOf(*messages, *late, v1::ROLE_ASSISTANT).empty());
  EXPECT_EQ(MessagesOf(*messages, *late, v1::ROLE_USER).size(), 1u)
      << "the acknowledged user message stays";
}

}  // namespace
}  // namespace parley::session::testing
