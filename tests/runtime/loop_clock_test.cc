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
#include "session-svc/turn/transcript.h"
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
  // Failures come at 0, 4 and 8 minutes, each asking for 4 more: the first two retries
  // are inside the default budget of ten minutes; the third would start at 12, past
  // it, so the turn fails at 8 rather than wait 4 minutes for nothing.
  absl::StatusOr<RunOutcome> outcome =
      Run("@fail 503 x4\n@retry_after_ms 240000\n@say never", output);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(outcome->finish_reason, v1::FINISH_REASON_ERROR);
  ASSERT_TRUE(outcome->error.has_value());
  EXPECT_NE(outcome->error->message().find("gave up after 2 retries: the next one, in 4m, would "
                                           "have been past the retry budget of 10m"),
            std::string::npos)
      << outcome->error->message();
  EXPECT_EQ(Retries(output).size(), 2u);
  EXPECT_EQ(clock_.total_slept(), absl::Minutes(8));
  EXPECT_EQ(Text(output), "");
}

TEST_F(LoopClockTest, ARetryAfterLongerThanTheWholeBudgetFailsAtOnce) {
  RecordingOutput output(clock_);
  absl::StatusOr<RunOutcome> outcome =
      Run("@fail 429 x1\n@retry_after_ms 3600000\n@say never", output);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(outcome->finish_reason, v1::FINISH_REASON_ERROR);
  EXPECT_TRUE(Retries(output).empty());
  EXPECT_EQ(clock_.total_slept(), absl::ZeroDuration());
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

// Each step reports its time to first token (request to first output) and its decode
// time (first output to the end of the stream), on the clock; the turn's decode time is
// their sum.
TEST_F(LoopClockTest, StepsReportTimeToFirstTokenAndDecodeTimeAndTheTurnSumsThem) {
  RecordingOutput output(clock_);
  absl::StatusOr<RunOutcome> outcome = Run(
      "@delay_ms 100\n@stall_ms 3000\n@say one two three\n@tool_ms 500\n@say four five", output);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  ASSERT_EQ(outcome->finish_reason, v1::FINISH_REASON_STOP);
  std::vector<v1::StepCompleted> steps;
  Transcript transcript;
  for (const v1::Event& event : output.events) {
    if (event.has_step_completed()) steps.push_back(event.step_completed());
    transcript.Add(event);
  }
  ASSERT_EQ(steps.size(), 2u);
  EXPECT_EQ(steps[0].time_to_first_token_ms(), 3000u);  // The stall.
  EXPECT_EQ(steps[0].decode_ms(), 200u);                // Two gaps between three words.
  EXPECT_EQ(steps[1].time_to_first_token_ms(), 0u);
  EXPECT_EQ(steps[1].decode_ms(), 100u);
  EXPECT_EQ(transcript.decode_ms(), 300u);
}

// The scripted model, keeping every request it is sent.
class RecordingProvider final : public model::ModelProvider {
 public:
  const std::string& name() const override { return name_; }
  const std::string& default_model() const override { return scripted_.default_model(); }
  absl::Status CheckConfig(const std::string& model,
                           const std::map<std::string, std::string>& options) const override {
    return scripted_.CheckConfig(model, options);
  }
  bool needs_history() const override { return false; }
  std::vector<std::string> own_tools() const override { return scripted_.own_tools(); }
  model::StepOutcome Stream(const model::ModelRequest& request, model::StepSink& sink) override {
    requests.push_back(request);
    model::StepOutcome outcome = scripted_.Stream(request, sink);
    // As a provider with prompt caching reports it.
    outcome.usage.set_cache_read_tokens(cache_read_per_step);
    outcome.usage.set_cache_write_tokens(cache_write_per_step);
    return outcome;
  }

  std::vector<model::ModelRequest> requests;
  uint64_t cache_read_per_step = 0;
  uint64_t cache_write_per_step = 0;

 private:
  const std::string name_ = "recorder";
  model::ScriptedProvider scripted_{model::ScriptedOptions{}};
};

// A call the model made with arguments that are not JSON gets an error result, and the
// next request of the same turn carries it repaired ("{}"), as stored history would be:
// a provider that needs an object there (Anthropic's tool_use input) never sees it.
TEST_F(LoopClockTest, TheTurnsOwnStepsAreRepairedBeforeTheNextRequest) {
  auto recorder = std::make_unique<RecordingProvider>();
  RecordingProvider* requests = recorder.get();
  providers_.Add(std::move(recorder));
  config_.set_provider("recorder");
  RecordingOutput output(clock_);
  absl::StatusOr<RunOutcome> outcome = Run("@tool scripted_wait {not json\n@say after", output);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  ASSERT_EQ(outcome->finish_reason, v1::FINISH_REASON_STOP);
  ASSERT_EQ(requests->requests.size(), 2u);
  const std::vector<v1::Message>& sent = requests->requests[1].messages;
  ASSERT_EQ(sent.size(), 3u);  // The user's message, the call, its result.
  ASSERT_EQ(sent[1].parts_size(), 1);
  EXPECT_EQ(sent[1].parts(0).tool_call().arguments_json(), "{}");
  EXPECT_TRUE(sent[2].parts(0).tool_result().is_error());
  EXPECT_NE(sent[2].parts(0).tool_result().output().find("not valid JSON"), std::string::npos)
      << sent[2].parts(0).tool_result().output();
}

// A sandbox tool called with invalid arguments never runs, so it needs no sandbox: with
// none to be had (here no sandbox service at all) it is still an error result for the
// model, not a failed turn.
TEST_F(LoopClockTest, AnInvalidCallNeedsNoSandboxAndGoesBackToTheModel) {
  config_.add_tools("bash");
  RecordingOutput output(clock_);
  absl::StatusOr<RunOutcome> outcome = Run("@tool bash {\"command\": 7}\n@say fine", output);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(outcome->finish_reason, v1::FINISH_REASON_STOP)
      << (outcome->error ? outcome->error->message() : "");
  std::vector<v1::ToolResult> results;
  for (const v1::Event& event : output.events) {
    if (event.has_tool_result()) results.push_back(event.tool_result());
  }
  ASSERT_EQ(results.size(), 1u);
  EXPECT_TRUE(results[0].is_error());
  EXPECT_NE(results[0].output().find("arguments.command: must be string"), std::string::npos)
      << results[0].output();
  EXPECT_EQ(Text(output), "fine");
}

// Each step's usage is a Usage event carrying its step, the same figures are on its
// StepCompleted, and the turn's usage sums them (cache tokens included); the context
// size is the last step's input (cached or not) plus its output.
TEST_F(LoopClockTest, UsageIsReportedPerStepAndSummedForTheTurn) {
  auto recorder = std::make_unique<RecordingProvider>();
  recorder->cache_read_per_step = 100;
  recorder->cache_write_per_step = 20;
  providers_.Add(std::move(recorder));
  config_.set_provider("recorder");
  RecordingOutput output(clock_);
  absl::StatusOr<RunOutcome> outcome = Run("@say one two\n@tool_ms 1\n@say three", output);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  ASSERT_EQ(outcome->finish_reason, v1::FINISH_REASON_STOP);
  std::vector<v1::Event> usage;
  std::vector<v1::StepCompleted> steps;
  Transcript transcript;
  for (const v1::Event& event : output.events) {
    if (event.has_usage()) usage.push_back(event);
    if (event.has_step_completed()) steps.push_back(event.step_completed());
    transcript.Add(event);
  }
  ASSERT_EQ(usage.size(), 2u);
  ASSERT_EQ(steps.size(), 2u);
  uint64_t input = 0, output_tokens = 0;
  for (uint32_t i = 0; i < 2; ++i) {
    EXPECT_EQ(usage[i].step(), i);
    EXPECT_EQ(usage[i].usage().cache_read_tokens(), 100u);
    EXPECT_EQ(usage[i].usage().cache_write_tokens(), 20u);
    EXPECT_GT(usage[i].usage().input_tokens(), 0u);
    EXPECT_EQ(steps[i].usage().SerializeAsString(), usage[i].usage().SerializeAsString());
    input += usage[i].usage().input_tokens();
    output_tokens += usage[i].usage().output_tokens();
  }
  EXPECT_EQ(usage[0].usage().output_tokens(), 3u);  // "one", "two" and the tool call.
  EXPECT_EQ(usage[1].usage().output_tokens(), 1u);
  EXPECT_EQ(transcript.usage().input_tokens(), input);
  EXPECT_EQ(transcript.usage().output_tokens(), output_tokens);
  EXPECT_EQ(transcript.usage().cache_read_tokens(), 200u);
  EXPECT_EQ(transcript.usage().cache_write_tokens(), 40u);
  EXPECT_EQ(transcript.context_tokens(), usage[1].usage().input_tokens() + 100 + 20 + 1);
}

// The scripted model's reasoning and connection reset: the reset before any output is
// retried as a transport failure, and the retried step streams its reasoning and text
// once each.
TEST_F(LoopClockTest, AScriptedResetIsRetriedAndTheReasoningStreamsOnce) {
  RecordingOutput output(clock_);
  absl::StatusOr<RunOutcome> outcome = Run("@think Let me see.\n@reset x1\n@say All good.", output);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(outcome->finish_reason, v1::FINISH_REASON_STOP);
  std::vector<v1::RetryScheduled> retries = Retries(output);
  ASSERT_EQ(retries.size(), 1u);
  EXPECT_EQ(retries[0].attempt(), 2u);
  std::string reasoning;
  for (const v1::Event& event : output.events) {
    if (event.has_reasoning_delta()) reasoning += event.reasoning_delta().text();
  }
  EXPECT_EQ(reasoning, "Let me see.");
  EXPECT_EQ(Text(output), "All good.");
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
