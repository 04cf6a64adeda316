// The Sandbox object's transitions: each legal move is taken, each illegal one is
// refused with SANDBOX_GONE and changes nothing (sandbox-svc/manager/sandbox.h).
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include "common/status.h"
#include "sandbox-svc/manager/sandbox.h"

namespace parley::sandbox {
namespace {

namespace sandbox_pb = ::parley::sandbox::v1;

const absl::Time kNow = absl::FromUnixSeconds(1'765'000'000);

Sandbox Make(sandbox_pb::SandboxState state, bool pooled = false) {
  SandboxRecord record;
  record.sandbox.set_id("sbx_test");
  record.sandbox.set_state(state);
  record.pooled = pooled;
  record.provider_state["pid"] = "42";
  return Sandbox(std::move(record));
}

// `before` is the record as it was before the refused move.
void ExpectRefusedAndUnchanged(const Sandbox& sandbox, const absl::Status& status,
                               const SandboxRecord& before) {
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  auto info = GetErrorInfo(status);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->reason(), "SANDBOX_GONE");
  const SandboxRecord after = sandbox.Record();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(after.sandbox, before.sandbox))
      << after.sandbox.DebugString();
  EXPECT_EQ(after.pooled, before.pooled);
  EXPECT_EQ(after.provider_state, before.provider_state);
}

TEST(SandboxState, CreatingBecomesReadyThenPausedThenReadyAgain) {
  Sandbox sandbox = Make(sandbox_pb::SANDBOX_STATE_CREATING);
  ASSERT_TRUE(sandbox.Ready(nullptr, "", kNow).ok());
  ASSERT_TRUE(sandbox.Paused({}, "paused by request", kNow).ok());
  EXPECT_EQ(sandbox.Record().sandbox.state(), sandbox_pb::SANDBOX_STATE_PAUSED);
  ASSERT_TRUE(sandbox.Ready(nullptr, "", kNow).ok());
  EXPECT_EQ(sandbox.Record().sandbox.state(), sandbox_pb::SANDBOX_STATE_READY);
}

TEST(SandboxState, ReadyIsRefusedFromReadyFailedAndDestroyed) {
  for (sandbox_pb::SandboxState from :
       {sandbox_pb::SANDBOX_STATE_READY, sandbox_pb::SANDBOX_STATE_FAILED,
        sandbox_pb::SANDBOX_STATE_DESTROYED}) {
    Sandbox sandbox = Make(from);
    const SandboxRecord before = sandbox.Record();
    ExpectRefusedAndUnchanged(sandbox, sandbox.Ready(nullptr, "", kNow), before);
  }
}

TEST(SandboxState, PausedIsRefusedUnlessReady) {
  for (sandbox_pb::SandboxState from :
       {sandbox_pb::SANDBOX_STATE_CREATING, sandbox_pb::SANDBOX_STATE_PAUSED,
        sandbox_pb::SANDBOX_STATE_FAILED, sandbox_pb::SANDBOX_STATE_DESTROYED}) {
    Sandbox sandbox = Make(from);
    const SandboxRecord before = sandbox.Record();
    ExpectRefusedAndUnchanged(sandbox, sandbox.Paused({}, "paused", kNow), before);
  }
}

TEST(SandboxState, NothingLeavesDestroyed) {
  Sandbox sandbox = Make(sandbox_pb::SANDBOX_STATE_READY);
  ASSERT_TRUE(sandbox.Destroyed("destroyed by request", kNow).ok());
  EXPECT_TRUE(sandbox.Record().provider_state.empty());
  const SandboxRecord destroyed = sandbox.Record();
  const absl::Time later = kNow + absl::Minutes(1);  // A refused move stamps nothing.
  ExpectRefusedAndUnchanged(sandbox, sandbox.Destroyed("again", later), destroyed);
  ExpectRefusedAndUnchanged(sandbox, sandbox.Failed("late failure", true, later), destroyed);
  ExpectRefusedAndUnchanged(sandbox, sandbox.FailedAsIs("late failure", later), destroyed);
  EXPECT_EQ(sandbox.Record().sandbox.state_message(), "destroyed by request");
}

TEST(SandboxState, FailedKeepsItsResourcesOnlyWhenNotCleaned) {
  Sandbox cleaned = Make(sandbox_pb::SANDBOX_STATE_READY);
  ASSERT_TRUE(cleaned.Failed("daemon died", /*cleaned=*/true, kNow).ok());
  EXPECT_TRUE(cleaned.Record().provider_state.empty());
  Sandbox kept = Make(sandbox_pb::SANDBOX_STATE_READY);
  ASSERT_TRUE(kept.Failed("daemon died", /*cleaned=*/false, kNow).ok());
  EXPECT_EQ(kept.Record().sandbox.state(), sandbox_pb::SANDBOX_STATE_FAILED);
  EXPECT_FALSE(kept.Record().provider_state.empty());
}

TEST(SandboxState, OnlyAReadyWarmSandboxIsClaimed) {
  const SandboxTerms terms{.tenant_id = "tenant_a", .session_id = "ses_1", .ttl_s = 60};
  Sandbox not_warm = Make(sandbox_pb::SANDBOX_STATE_READY, /*pooled=*/false);
  EXPECT_FALSE(not_warm.Claim(terms, kNow));
  Sandbox destroyed = Make(sandbox_pb::SANDBOX_STATE_DESTROYED, /*pooled=*/true);
  EXPECT_FALSE(destroyed.Claim(terms, kNow));
  EXPECT_TRUE(destroyed.Record().sandbox.tenant_id().empty());
  Sandbox failed = Make(sandbox_pb::SANDBOX_STATE_FAILED, /*pooled=*/true);
  EXPECT_FALSE(failed.Claim(terms, kNow));

  Sandbox warm = Make(sandbox_pb::SANDBOX_STATE_READY, /*pooled=*/true);
  ASSERT_TRUE(warm.Claim(terms, kNow));
  EXPECT_TRUE(warm.BelongsTo("tenant_a"));
  EXPECT_FALSE(warm.Record().pooled);
  EXPECT_FALSE(warm.Claim(terms, kNow)) << "claimed twice";
}

}  // namespace
}  // namespace parley::sandbox
