// Turn scheduling in the store: the agent configuration a turn was enqueued with, the
// fair order between tenants, the per-tenant cap on running turns (exact under
// concurrent claimers), handing a running turn back (ReleaseTurn), and the queue and
// lease state GetSession reports.
#include <gmock/gmock.h>
#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>

#include <atomic>
#include <pqxx/pqxx>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/barrier.h"
#include "absl/synchronization/mutex.h"
#include "store-svc/api/rows.h"
#include "tests/store/store_test_helpers.h"

namespace parley::store::testing {
namespace {

using ::testing::IsEmpty;

class Scheduling : public StoreTest {
 protected:
  absl::StatusOr<store_pb::ClaimNextTurnResponse> ClaimUnderCap(uint32_t max_running_per_tenant,
                                                                const std::string& owner = kOwner) {
    store_pb::ClaimNextTurnRequest request;
    request.set_owner(owner);
    request.set_lease_ttl_ms(kLeaseTtlMs);
    request.set_max_running_per_tenant(max_running_per_tenant);
    return Call(&Stub::ClaimNextTurn, request);
  }

  absl::StatusOr<store_pb::ReleaseTurnResponse> Release(
      const store_pb::ClaimNextTurnResponse& claim, const std::string& owner = kOwner,
      const std::string& reason = "drain") {
    store_pb::ReleaseTurnRequest request;
    request.set_tenant_id(claim.session().tenant_id());
    request.set_turn_id(claim.turn().id());
    request.set_owner(owner);
    request.set_lease_epoch(claim.lease_epoch());
    request.set_reason(reason);
    return Call(&Stub::ReleaseTurn, request);
  }

  absl::StatusOr<store_pb::GetSessionResponse> GetSessionState(const std::string& session_id) {
    store_pb::GetSessionRequest request;
    request.set_tenant_id(kTenant);
    request.set_session_id(session_id);
    return Call(&Stub::GetSession, request);
  }

  absl::Status SetSystemPrompt(const std::string& session_id, const std::string& prompt) {
    store_pb::UpdateSessionRequest request;
    request.set_tenant_id(kTenant);
    request.mutable_request()->set_session_id(session_id);
    request.mutable_request()->mutable_session()->mutable_agent_config()->set_system_prompt(prompt);
    request.mutable_request()->mutable_update_mask()->add_paths("agent_config.system_prompt");
    return Call(&Stub::UpdateSession, request).status();
  }

  // `count` sessions of `tenant`, each with one queued turn, enqueued from 4 threads;
  // returns the sessions' ids.
  std::vector<std::string> SessionsWithAQueuedTurn(const std::string& tenant, int count) {
    CreateTenant(tenant);
    std::vector<std::string> ids(count);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int i = t; i < count; i += 4) {
          ids[i] = CreateSession(tenant).id();
          auto enqueued = Enqueue(ids[i], "hello", "", v1::MULTITASK_POLICY_UNSPECIFIED, tenant);
          EXPECT_TRUE(enqueued.ok()) << enqueued.status();
        }
      });
    }
    for (std::thread& t : threads) t.join();
    return ids;
  }

  // Rows of `sql` (one bigint column) read straight from the database.
  int64_t CountInDatabase(const std::string& sql) {
    pqxx::connection connection(database_url());
    pqxx::work tx(connection);
    return tx.exec(sql)[0][0].as<int64_t>();
  }
};

// ---- Agent configuration ----

TEST_F(Scheduling, AgentConfigIsCapturedAtEnqueue) {
  v1::CreateSessionRequest fields;
  fields.mutable_agent_config()->set_provider("scripted");
  fields.mutable_agent_config()->set_system_prompt("old");
  std::string session_id = CreateSession(kTenant, fields).id();
  ASSERT_TRUE(Enqueue(session_id, "first").ok());
  ASSERT_TRUE(SetSystemPrompt(session_id, "new").ok());
  ASSERT_TRUE(Enqueue(session_id, "second").ok());

  auto first = Claim();
  ASSERT_TRUE(first.ok() && first->has_turn()) << first.status();
  EXPECT_EQ(first->agent_config().system_prompt(), "old");
  EXPECT_EQ(first->agent_config().provider(), "scripted");
  ASSERT_TRUE(Complete(Completion(*first)).ok());
  auto second = Claim();
  ASSERT_TRUE(second.ok() && second->has_turn()) << second.status();
  EXPECT_EQ(second->agent_config().system_prompt(), "new");
  EXPECT_EQ(second->agent_config().provider(), "scripted");
}

// ---- Fair order between tenants ----

TEST_F(Scheduling, ClaimIsFairAcrossTenants) {
  SessionsWithAQueuedTurn("tenant_big", 200);  // All waiting longer than tenant_small's.
  std::string small = SessionsWithAQueuedTurn("tenant_small", 1)[0];

  std::vector<std::string> sessions;
  for (int i = 0; i < 2; ++i) {
    auto claim = Claim();
    ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();
    sessions.push_back(claim->session().id());
  }
  EXPECT_THAT(sessions, ::testing::Contains(small));
}

TEST_F(Scheduling, TenantsTakeTurnsWhileBothHaveWork) {
  SessionsWithAQueuedTurn("tenant_big", 20);
  SessionsWithAQueuedTurn("tenant_small", 3);

  std::vector<std::string> tenants;
  for (int i = 0; i < 8; ++i) {
    auto claim = Claim();
    ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();
    tenants.push_back(claim->session().tenant_id());
  }
  // The tenant with fewer running turns goes next; on a tie, the longer waiting one.
  EXPECT_THAT(tenants,
              ::testing::ElementsAre("tenant_big", "tenant_small", "tenant_big", "tenant_small",
                                     "tenant_big", "tenant_small", "tenant_big", "tenant_big"));
}

// ---- Per-tenant cap ----

TEST_F(Scheduling, TenantCapIsExactUnderConcurrentClaimers) {
  SessionsWithAQueuedTurn(kTenant, 20);
  constexpr int kClaimers = 8;
  // Each claimer tries three times, all starting at once; returns the claims with the
  // owner that made them.
  auto claim_concurrently = [&] {
    absl::Mutex mu;
    std::vector<std::pair<std::string, store_pb::ClaimNextTurnResponse>> claimed;
    std::vector<absl::Status> failures;
    absl::Barrier* start = new absl::Barrier(kClaimers);
    std::vector<std::thread> threads;
    for (int i = 0; i < kClaimers; ++i) {
      threads.emplace_back([&, i] {
        if (start->Block()) delete start;
        const std::string owner = absl::StrCat("worker-", i);
        for (int attempt = 0; attempt < 3; ++attempt) {
          auto claim = ClaimUnderCap(/*max_running_per_tenant=*/2, owner);
          absl::MutexLock lock(&mu);
          if (!claim.ok()) failures.push_back(claim.status());
          if (claim.ok() && claim->has_turn()) claimed.emplace_back(owner, *claim);
        }
      });
    }
    for (std::thread& t : threads) t.join();
    EXPECT_THAT(failures, IsEmpty());
    return claimed;
  };

  auto claimed = claim_concurrently();
  ASSERT_EQ(claimed.size(), 2u);
  EXPECT_EQ(CountInDatabase("SELECT count(*) FROM turns WHERE status = 2"), 2);

  const auto& [owner, claim] = claimed[0];
  ASSERT_TRUE(Complete(Completion(claim, owner)).ok());
  EXPECT_EQ(claim_concurrently().size(), 1u);
  EXPECT_EQ(CountInDatabase("SELECT count(*) FROM turns WHERE status = 2"), 2);
}

TEST_F(Scheduling, ATenantAtItsCapLeavesTheClaimToOthers) {
  SessionsWithAQueuedTurn("tenant_busy", 5);  // Waiting longer than tenant_idle's.
  std::string idle = SessionsWithAQueuedTurn("tenant_idle", 1)[0];
  auto first = ClaimUnderCap(1);
  ASSERT_TRUE(first.ok() && first->has_turn()) << first.status();
  EXPECT_EQ(first->session().tenant_id(), "tenant_busy");

  auto second = ClaimUnderCap(1);
  ASSERT_TRUE(second.ok() && second->has_turn()) << second.status();
  EXPECT_EQ(second->session().id(), idle);
  auto third = ClaimUnderCap(1);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_FALSE(third->has_turn());  // Both tenants at the cap.
  auto uncapped = Claim();
  ASSERT_TRUE(uncapped.ok()) << uncapped.status();
  EXPECT_TRUE(uncapped->has_turn());  // The cap is the caller's, not the tenant's.
}

TEST_F(Scheduling, ACapOver100000IsInvalidArgumentAndClaimsNothing) {
  std::string session_id = CreateSession(kTenant).id();
  std::string turn_id = Enqueue(session_id, "hello")->turn().id();

  auto claim = ClaimUnderCap(100'001);
  EXPECT_EQ(claim.status().code(), absl::StatusCode::kInvalidArgument) << claim.status();
  EXPECT_EQ(Violation(claim.status()).field(), "max_running_per_tenant");
  EXPECT_EQ(Violation(claim.status()).limit(), "100000");
  EXPECT_EQ(GetTurn(turn_id)->status(), v1::TURN_STATUS_QUEUED);
}

// ---- ReleaseTurn ----

TEST_F(Scheduling, ReleaseTurnRequeuesAtHeadAndFences) {
  std::string session_id = CreateSession(kTenant).id();
  std::string first_turn = Enqueue(session_id, "first")->turn().id();
  std::string second_turn = Enqueue(session_id, "second")->turn().id();
  auto claim = Claim();
  ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();
  ASSERT_EQ(claim->turn().id(), first_turn);

  store_pb::ClaimNextTurnResponse stale = *claim;
  stale.set_lease_epoch(claim->lease_epoch() - 1);
  for (const auto& refused : {Release(stale), Release(*claim, "intruder")}) {
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
    EXPECT_EQ(Reason(refused.status()), "LEASE_LOST");
    EXPECT_EQ(ReasonMetadata(refused.status(), "lease_epoch"),
              std::to_string(claim->lease_epoch()));
  }
  EXPECT_EQ(GetTurn(first_turn)->status(), v1::TURN_STATUS_RUNNING);

  auto released = Release(*claim);
  ASSERT_TRUE(released.ok()) << released.status();
  EXPECT_EQ(released->turn().id(), first_turn);
  EXPECT_EQ(released->turn().status(), v1::TURN_STATUS_QUEUED);
  EXPECT_EQ(released->turn().attempt(), 1u);
  EXPECT_THAT(GetSession(session_id)->current_turn_id(), IsEmpty());

  auto again = Claim("worker-2");
  ASSERT_TRUE(again.ok() && again->has_turn()) << again.status();
  EXPECT_EQ(again->turn().id(), first_turn);  // Before the session's later turn.
  EXPECT_EQ(again->turn().attempt(), 2u);
  EXPECT_FALSE(again->recovery());
  EXPECT_EQ(again->lease_epoch(), claim->lease_epoch() + 1);
  EXPECT_EQ(GetTurn(second_turn)->status(), v1::TURN_STATUS_QUEUED);

  auto late = Release(*claim);  // The old lease, after the turn was claimed again.
  EXPECT_EQ(Reason(late.status()), "LEASE_LOST") << late.status();
  EXPECT_TRUE(Complete(Completion(*again, "worker-2")).ok());
}

TEST_F(Scheduling, ReleaseOfAnotherTenantsTurnIsNotFound) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "hello").ok());
  auto claim = Claim();
  ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();
  CreateTenant("tenant_b");

  store_pb::ClaimNextTurnResponse foreign = *claim;
  foreign.mutable_session()->set_tenant_id("tenant_b");
  EXPECT_EQ(Release(foreign).status().code(), absl::StatusCode::kNotFound);
  store_pb::ClaimNextTurnResponse unknown = *claim;
  unknown.mutable_turn()->set_id(NewId("turn"));
  EXPECT_EQ(Release(unknown).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(GetTurn(claim->turn().id())->status(), v1::TURN_STATUS_RUNNING);
}

TEST_F(Scheduling, ReleaseReasonOver256BytesIsInvalidArgumentAndChangesNothing) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "hello").ok());
  auto claim = Claim();
  ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();

  auto released = Release(*claim, kOwner, std::string(257, 'r'));
  EXPECT_EQ(released.status().code(), absl::StatusCode::kInvalidArgument) << released.status();
  EXPECT_EQ(Violation(released.status()).field(), "reason");
  EXPECT_EQ(Violation(released.status()).limit(), "256 bytes");
  EXPECT_EQ(GetTurn(claim->turn().id())->status(), v1::TURN_STATUS_RUNNING);
  EXPECT_EQ(GetSession(session_id)->current_turn_id(), claim->turn().id());
}

// ---- GetSession ----

TEST_F(Scheduling, GetSessionReportsQueueAndLease) {
  std::string session_id = CreateSession(kTenant).id();
  for (const char* text : {"one", "two", "three"}) ASSERT_TRUE(Enqueue(session_id, text).ok());
  auto waiting = GetSessionState(session_id);
  ASSERT_TRUE(waiting.ok()) << waiting.status();
  EXPECT_EQ(waiting->queued_turns(), 3u);
  EXPECT_THAT(waiting->lease_owner(), IsEmpty());
  EXPECT_EQ(waiting->lease_epoch(), 0u);
  EXPECT_FALSE(waiting->has_lease_expiry());

  auto claim = Claim();
  ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();
  auto running = GetSessionState(session_id);
  ASSERT_TRUE(running.ok()) << running.status();
  EXPECT_EQ(running->queued_turns(), 2u);
  EXPECT_EQ(running->lease_owner(), kOwner);
  EXPECT_EQ(running->lease_epoch(), claim->lease_epoch());
  EXPECT_EQ(Dump(running->lease_expiry()), Dump(claim->lease_expiry()));
  EXPECT_EQ(running->session().current_turn_id(), claim->turn().id());

  ASSERT_TRUE(Complete(Completion(*claim)).ok());
  auto between = GetSessionState(session_id);
  ASSERT_TRUE(between.ok()) << between.status();
  EXPECT_EQ(between->queued_turns(), 2u);
  EXPECT_THAT(between->lease_owner(), IsEmpty());
  EXPECT_EQ(between->lease_epoch(), claim->lease_epoch());  // The epoch stays.
  EXPECT_FALSE(between->has_lease_expiry());
}

TEST_F(Scheduling, GetSessionReadsTheQueueWhereTheSessionColumnsEnd) {
  pqxx::connection connection(database_url());
  pqxx::work tx(connection);
  EXPECT_EQ(tx.exec(absl::StrCat("SELECT ", kSessionColumns, " FROM sessions LIMIT 0")).columns(),
            static_cast<pqxx::row::size_type>(kSessionColumnCount));
}

// ---- Turn errors ----

TEST_F(Scheduling, AFailedTurnKeepsItsErrorReason) {
  std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(Enqueue(session_id, "hello").ok());
  auto claim = Claim();
  ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();
  store_pb::CompleteTurnRequest failure = Completion(*claim);
  failure.set_status(v1::TURN_STATUS_FAILED);
  failure.set_finish_reason(v1::FINISH_REASON_ERROR);
  failure.mutable_error()->set_kind(v1::TURN_ERROR_KIND_INTERNAL);
  failure.mutable_error()->set_reason("WORKER_SHUTDOWN");
  ASSERT_TRUE(Complete(failure).ok());
  EXPECT_EQ(GetTurn(claim->turn().id())->error().reason(), "WORKER_SHUTDOWN");
}

}  // namespace
}  // namespace parley::store::testing
