// The agent loop's waits — a retry's backoff, a Retry-After, the turn's time limit, a
// stalled model — are measured by the injected Clock: with a FakeClock a turn that would
// wait an hour finishes at once, and the test can see exactly how long it waited.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "session-svc/agent/agent_runner.h"
#include "session-svc/model/scripted.h"
#include "tests/runtime/recording_output.h"

namespace parley::session {
namespace {

class LoopClockTest : public ::testing::Test {
 protected:
  LoopClockTest() : providers_("scripted") {
    providers_.Add(std::make_unique<model::ScriptedProvider>(model::ScriptedOptions{}));
    // The scripted model reads no history and these turns call no tool: nothing is
    // ever dialled.
    store_ = store::v1::StoreService::NewStub(
        grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials()));
    turn_.set_id("turn_1");
    session_.set_id("ses_1");
    session_.set_tenant_id("tenant");
  }

  absl::StatusOr<RunOutcome> Run(const std::string& text, RecordingOutput& output) {
    AgentRunner runner(options_, providers_, *store_, /*sandbox=*/nullptr, clock_);
    v1::Message user;
    user.set_role(v1::ROLE_USER);
    user.add_parts()->set_text(text);
    return runner.Run({.turn = turn_, .session = session_, .config = config_, .user_message = user},
                      output);
  }

  std::vector<v1::RetryScheduled> Retries(const RecordingOutput& output) {
    std::vector<v1::RetryScheduled> retries;
    for (const v1::Event& event : output.events) {
      if (event.has_retry_scheduled()) retries.push_back(event.retry_scheduled());
    }
    return retries;
  }

  std::string Text(const RecordingOutput& output) {
    std::string text;
    for (const v1::Event& event : output.events) {
      if (event.has_text_delta()) text += event.text_delta().text();
    }
    return text;
  }

  FakeClock clock_;
  model::ProviderRegistry providers_;
  std::unique_ptr<store::v1::StoreService::Stub> store_;
  AgentOptions options_;
  v1::Turn turn_;
  v1::Session session_;
  v1::AgentConfig config_;
};

TEST_F(LoopClockTest, RetryAfterIsWaitedOnTheClock) {
  RecordingOutput output(clock_);
  // Four minutes apart, two failures stay inside the default ten-minute retry budget.
  absl::StatusOr<RunOutcome> outcome =
      Run("@fail 429 x2\n@retry_after_ms 240000\n@say recovered", output);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(outcome->finish_reason, v1::FINISH_REASON_STOP);
  EXPECT_EQ(Text(output), "recovered");
  std::vector<v1::RetryScheduled> retries = Retries(output);
  ASSERT_EQ(retries.size(), 2u);
  EXPECT_EQ(retries[0].delay_ms(), 240000u);
  EXPECT_EQ(retries[1].delay_ms(), 240000u);
  EXPECT_EQ(clock_.sleeps(), (std::vector<absl::Duration>{absl::Minutes(4), absl::Minutes(4)}));
}

TEST_F(LoopClockTest, TheRetryBudgetsDurationIsClockTime) {
  RecordingOutput output(clock_);
  // Failures come at 0, 4, 8 and 12 minutes: the first three are inside the default
  // budget of ten minutes and are retried; the fourth is past it, and the turn fails.
  absl::StatusOr<RunOutcome> outcome =
      Run("@fail 503 x4\n@retry_after_ms 240000\n@say never", output);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(outcome->finish_reason, v1::FINISH_REASON_ERROR);
  ASSERT_TRUE(outcome->error.has_value());
  EXPECT_NE(outcome->error->message().find("gave up after 3 retries"), std::string::npos)
      << outcome->error->message();
  EXPECT_EQ(Retries(output).size(), 3u);
  EXPECT_EQ(clock_.total_slept(), absl::Minutes(12));
  EXPECT_EQ(Text(output), "");
}

TEST_F(LoopClockTest, TheTurnsTimeLimitIsClockTime) {
  config_.set_max_turn_duration_ms(60'000);
  RecordingOutput output(clock_);
  // The model stalls for an hour before its first word.
  absl::StatusOr<RunOutcome> outcome = Run("@stall_ms 3600000\n@say too late", output);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(outcome->finish_reason, v1::FINISH_REASON_MAX_DURATION);
  EXPECT_EQ(clock_.total_slept(), absl::Minutes(1));
  EXPECT_EQ(Text(output), "");
}

TEST(TurnControlClock, AWaitSleepsOnTheClockUnlessTheTurnIsStopping) {
  FakeClock clock;
  TurnControl control(clock);
  EXPECT_TRUE(control.WaitFor(absl::Minutes(3)));
  EXPECT_EQ(clock.total_slept(), absl::Minutes(3));
  control.Stop(StopReason::kCancelled, "CANCELLED");
  EXPECT_FALSE(control.WaitFor(absl::Minutes(3)));
  EXPECT_EQ(clock.total_slept(), absl::Minutes(3));
}

}  // namespace
}  // namespace parley::session
