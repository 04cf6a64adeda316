// AgentRunner: the agent loop — the TurnRunner that runs every turn in production.
//
// A turn is a sequence of model steps. Each step sends the conversation (the session's
// history, the user's message and the turn's earlier steps) to the session's model
// provider and streams its answer out as events; when the model asks for tools, they
// run in the session's sandbox, their results join the conversation, and the next step
// begins. The turn ends when a step asks for no tool, or at a limit (max steps, max
// duration, max output tokens), a cancel, or an error. Each finished step is committed
// (TurnOutput::EndStep) before the next begins.
//
//   AgentRunner runner(options, providers, store, &sandbox_replicas, RealClock::Get());
//   TurnExecutor executor(executor_options, store, runner, clock, logger);
//
// Failed model requests are retried (429, 5xx, resets) with capped exponential backoff
// and jitter, honouring Retry-After, each announced by a transient RetryScheduled
// event, within the session's retry budget. A request that fails after its step had
// streamed output is not retried: the turn fails with a PROVIDER error, so no client
// ever sees text twice (session-svc/README.md, "The agent loop").
//
// Thread-safe: one runner serves every slot; each Run() keeps its state on its stack.
#pragma once

#include <memory>
#include <string>

#include "absl/time/time.h"
#include "common/clock.h"
#include "session-svc/agent/history.h"
#include "session-svc/agent/turn_telemetry.h"
#include "session-svc/model/registry.h"
#include "session-svc/store_call.h"
#include "session-svc/tools/session_sandbox.h"
#include "session-svc/turn/turn_runner.h"

namespace parley::session {

struct AgentOptions {
  // Wall-clock limit of one tool call (bash may ask for less).
  absl::Duration tool_timeout = absl::Minutes(10);
  // What goes back to the model of a tool's output (head and tail kept); the whole
  // output is in the tool's events.
  size_t max_tool_result_bytes = 16 << 10;
  // Retry backoff: the first delay, doubled per retry up to the cap, with jitter.
  absl::Duration retry_first_backoff = absl::Milliseconds(500);
  absl::Duration retry_max_backoff = absl::Seconds(30);
  // Defaults of the session's retry budget (AgentConfig.retry_max_*).
  uint32_t retry_max_attempts = 10;
  absl::Duration retry_max_duration = absl::Minutes(10);
  // Estimated tokens of stored history a request may carry; older whole turns are left
  // out (HistoryTrimmed). 0: no budget.
  uint64_t history_token_budget = 100000;
  // How history is fitted to that budget (must outlive the runner).
  const HistoryPolicy* history_policy = &DropOldestTurns::Get();
  // Sandbox template when the session names none (empty: sandbox-svc's default).
  std::string default_sandbox_template;
  // Starts the turn's GenAI spans and records its metrics (turn_telemetry.h); null:
  // none are recorded. Both must outlive the runner.
  const telemetry::Tracer* tracer = nullptr;
  const TurnMetrics* metrics = nullptr;
  // Opt in: each sampled chat span also carries the provider request (headers and body)
  // and response body, credentials redacted, each cut to this many bytes
  // (TurnTelemetry::EndChat names the attributes). 0: never captured.
  size_t capture_model_bodies_bytes = 0;
};

class AgentRunner final : public TurnRunner {
 public:
  // `providers`, `store`, `sandbox` (may be null: sandbox tools then fail the turn) and
  // `clock` must outlive the runner.
  AgentRunner(AgentOptions options, const model::ProviderRegistry& providers, StoreStub& store,
              tools::SandboxReplicas* sandbox, Clock& clock);

  absl::StatusOr<RunOutcome> Run(const TurnInput& input, TurnOutput& output) override;
  std::string ModelName(const v1::AgentConfig& config) const override;

 private:
  friend class TurnLoop;
  const AgentOptions options_;
  const model::ProviderRegistry& providers_;
  StoreStub& store_;
  tools::SandboxReplicas* sandbox_;
  Clock& clock_;
};

}  // namespace parley::session
