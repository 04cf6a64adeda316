// The telemetry of one turn: its OpenTelemetry GenAI spans and the agent-loop metrics,
// recorded at the same points of the loop.
//
// Spans (semantic conventions for generative AI):
//
//   invoke_agent                 the whole agent loop (child of the stored trace context
//   ├─ chat {model}              of the SendMessage that enqueued the turn)
//   │    event gen_ai.first_token    one per model request, CLIENT
//   ├─ execute_tool {name}       one per tool call; sandbox-svc calls are its children
//   └─ (store-svc calls: history, step commits)
//
// Every span carries gen_ai.operation.name, gen_ai.provider.name, gen_ai.request.model
// and gen_ai.conversation.id (the session id), so a turn is found from any of its spans.
// Usage, response model and finish reasons go on the chat spans and (summed) on
// invoke_agent; tool name and call id on execute_tool; error.type on whatever failed.
//
// Metrics (TurnMetrics; labels never hold ids): time to first token, turn duration and
// steps by provider, turns by finish reason, tokens by provider and type, tool duration
// by tool, model retries by reason.
//
//   TurnTelemetry telemetry(tracer, &metrics, input, provider.name(), model);
//   telemetry::ContextScope scope(telemetry.context());   // store/sandbox calls join it
//   telemetry::Span chat = telemetry.StartChat();
//   ...
//   telemetry.EndChat(chat, outcome);
//
// A null tracer records no span (context() is then the caller's scope); null metrics
// record no metric. Not thread-safe except StartTool/EndTool (parallel read-only tools),
// which touch only their own span and thread-safe metrics.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "session-svc/model/model.h"
#include "session-svc/turn/turn_runner.h"
#include "telemetry/metrics.h"
#include "telemetry/tracer.h"

namespace parley::session {

// The agent loop's metric families, registered once per process.
struct TurnMetrics {
  explicit TurnMetrics(telemetry::Registry& registry);
  telemetry::HistogramFamily& time_to_first_token;  // {provider}
  telemetry::HistogramFamily& turn_duration;        // {provider}
  telemetry::HistogramFamily& steps;                // {provider}
  telemetry::CounterFamily& turns;                  // {finish_reason}
  telemetry::CounterFamily& tokens;                 // {provider, type}
  telemetry::HistogramFamily& tool_duration;        // {tool}
  telemetry::CounterFamily& retries;                // {reason}
};

class TurnTelemetry {
 public:
  TurnTelemetry(const telemetry::Tracer* tracer, const TurnMetrics* metrics, const TurnInput& input,
                std::string provider, std::string model);

  // What calls made for the turn should be children of.
  std::optional<telemetry::TraceContext> context() const;
  // What calls made for `span` (a chat or tool span) should be children of.
  std::optional<telemetry::TraceContext> ScopeFor(const telemetry::Span& span) const {
    return tracer_ == nullptr ? context() : std::optional(span.context());
  }

  telemetry::Span StartChat();
  // The request's first streamed piece, `since_step_start` after its step began.
  void FirstToken(telemetry::Span& chat, absl::Duration since_step_start);
  // With `capture` (body capture on), the chat span also gets, all strings, redacted:
  //   parley.gen_ai.request.headers      "Name: value" lines (credential values redacted)
  //   parley.gen_ai.request.body         the JSON body sent to the provider
  //   parley.gen_ai.response.body        the response: the SSE stream or the error body
  //   parley.gen_ai.request.body.truncated, parley.gen_ai.response.body.truncated  bools
  void EndChat(telemetry::Span& chat, const model::StepOutcome& outcome,
               const model::BodyCapture* capture = nullptr);
  // A failed model request will be retried.
  void Retry(absl::string_view reason);

  telemetry::Span StartTool(const v1::ToolCall& call) const;
  // `tool` is the tool's name when it exists (else the metric says "unknown": a model
  // may name anything, and labels must stay a small set).
  void EndTool(telemetry::Span& span, const std::string* tool, absl::Duration duration,
               const v1::ToolResult* result) const;

  // Ends invoke_agent with the turn's outcome, its usage over every step and its steps.
  void EndTurn(const absl::StatusOr<RunOutcome>& outcome, const v1::Usage& usage, uint32_t steps);

 private:
  telemetry::Span Start(std::string name, telemetry::SpanKind kind,
                        absl::string_view operation) const;

  const telemetry::Tracer* tracer_;
  const TurnMetrics* metrics_;
  const std::string session_id_;
  const std::string turn_id_;
  const std::string provider_;
  const std::string model_;
  const absl::Time start_ = absl::Now();
  std::string response_model_;  // The latest a provider reported.
  telemetry::Span turn_;
};

// "stop", "tool_calls", "max_steps", ... — the finish reason as GenAI spans spell it.
std::string FinishReasonText(v1::FinishReason reason);

}  // namespace parley::session
