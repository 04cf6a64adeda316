#include "session-svc/agent/turn_telemetry.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace parley::session {

using telemetry::Span;
using telemetry::SpanKind;

std::string FinishReasonText(v1::FinishReason reason) {
  return absl::AsciiStrToLower(absl::StripPrefix(v1::FinishReason_Name(reason), "FINISH_REASON_"));
}

TurnMetrics::TurnMetrics(telemetry::Registry& registry)
    : time_to_first_token(registry.AddHistogram(
          "parley_turn_time_to_first_token_seconds",
          "From a model step's start to its first streamed output, by provider.", {"provider"})),
      turn_duration(registry.AddHistogram("parley_turn_duration_seconds",
                                          "Agent loop time of a turn, by provider.", {"provider"})),
      steps(registry.AddHistogram("parley_turn_steps", "Model steps per turn, by provider.",
                                  {"provider"}, {1, 2, 3, 5, 8, 13, 21, 34, 55, 89})),
      turns(registry.AddCounter("parley_turns_total",
                                "Turns the agent loop ended, by finish reason (interrupted: "
                                "stopped by a cancel, lost lease or drain before it ended).",
                                {"finish_reason"})),
      tokens(registry.AddCounter(
          "parley_turn_tokens_total",
          "Model tokens, by provider and type (input, output, cache_read, cache_write).",
          {"provider", "type"})),
      tool_duration(registry.AddHistogram("parley_tool_duration_seconds",
                                          "Tool call duration, by tool.", {"tool"})),
      retries(registry.AddCounter("parley_model_retries_total",
                                  "Model requests retried, by reason.", {"reason"})) {}

TurnTelemetry::TurnTelemetry(const telemetry::Tracer* tracer, const TurnMetrics* metrics,
                             const TurnInput& input, std::string provider, std::string model)
    : tracer_(tracer),
      metrics_(metrics),
      session_id_(input.session.id()),
      turn_id_(input.turn.id()),
      provider_(std::move(provider)),
      model_(std::move(model)) {
  turn_ = Start("invoke_agent", SpanKind::kInternal, "invoke_agent");
}

std::optional<telemetry::TraceContext> TurnTelemetry::context() const {
  if (tracer_ == nullptr) return telemetry::ContextScope::Current();
  return turn_.context();
}

Span TurnTelemetry::Start(std::string name, SpanKind kind, absl::string_view operation) const {
  if (tracer_ == nullptr) return Span();
  // Children of invoke_agent; invoke_agent itself (started first) of the scope the
  // executor opened on the turn's stored trace context.
  const bool starting_turn = turn_.context().span_id() == telemetry::TraceContext::SpanId{};
  Span span = tracer_->StartSpan(
      std::move(name), kind,
      starting_turn ? telemetry::ContextScope::Current() : std::optional(turn_.context()));
  if (!span.recording()) return span;
  span.SetAttribute("gen_ai.operation.name", std::string(operation));
  span.SetAttribute("gen_ai.provider.name", provider_);
  span.SetAttribute("gen_ai.request.model", model_);
  span.SetAttribute("gen_ai.conversation.id", session_id_);
  span.SetAttribute("parley.turn.id", turn_id_);
  return span;
}

Span TurnTelemetry::StartChat() {
  return Start(absl::StrCat("chat ", model_), SpanKind::kClient, "chat");
}

void TurnTelemetry::FirstToken(Span& chat, absl::Duration since_step_start) {
  chat.AddEvent("gen_ai.first_token");
  if (metrics_ != nullptr) {
    metrics_->time_to_first_token.WithLabels({provider_})
        .Observe(absl::ToDoubleSeconds(since_step_start));
  }
}

void TurnTelemetry::EndChat(Span& chat, const model::StepOutcome& outcome,
                            const model::BodyCapture* capture) {
  if (!outcome.response_model.empty()) response_model_ = outcome.response_model;
  if (metrics_ != nullptr) {
    const v1::Usage& usage = outcome.usage;
    for (const auto& [type, count] :
         {std::pair{"input", usage.input_tokens()}, std::pair{"output", usage.output_tokens()},
          std::pair{"cache_read", usage.cache_read_tokens()},
          std::pair{"cache_write", usage.cache_write_tokens()}}) {
      if (count > 0) {
        metrics_->tokens.WithLabels({provider_, type}).Increment(static_cast<double>(count));
      }
    }
  }
  if (chat.recording() && capture != nullptr) {
    chat.SetAttribute("parley.gen_ai.request.headers", capture->request_headers);
    chat.SetAttribute("parley.gen_ai.request.body", capture->request_body);
    chat.SetAttribute("parley.gen_ai.request.body.truncated", capture->request_truncated);
    chat.SetAttribute("parley.gen_ai.response.body", capture->response_body);
    chat.SetAttribute("parley.gen_ai.response.body.truncated", capture->response_truncated);
  }
  if (chat.recording()) {
    if (!outcome.response_model.empty()) {
      chat.SetAttribute("gen_ai.response.model", outcome.response_model);
    }
    chat.SetAttribute("gen_ai.usage.input_tokens",
                      static_cast<int64_t>(outcome.usage.input_tokens()));
    chat.SetAttribute("gen_ai.usage.output_tokens",
                      static_cast<int64_t>(outcome.usage.output_tokens()));
    chat.SetAttribute("gen_ai.response.finish_reasons",
                      std::vector<std::string>{FinishReasonText(outcome.finish_reason)});
    if (outcome.error) {
      chat.SetError(
          outcome.error->status_code > 0 ? absl::StrCat(outcome.error->status_code) : "transport",
          outcome.error->message);
    }
  }
  chat.End();
}

void TurnTelemetry::Retry(absl::string_view reason) {
  if (metrics_ != nullptr) metrics_->retries.WithLabels({std::string(reason)}).Increment();
}

Span TurnTelemetry::StartTool(const v1::ToolCall& call) const {
  Span span =
      Start(absl::StrCat("execute_tool ", call.name()), SpanKind::kInternal, "execute_tool");
  span.SetAttribute("gen_ai.tool.name", call.name());
  span.SetAttribute("gen_ai.tool.call.id", call.call_id());
  return span;
}

void TurnTelemetry::EndTool(Span& span, const std::string* tool, absl::Duration duration,
                            const v1::ToolResult* result) const {
  if (metrics_ != nullptr) {
    metrics_->tool_duration.WithLabels({tool != nullptr ? *tool : "unknown"})
        .Observe(absl::ToDoubleSeconds(duration));
  }
  if (result != nullptr && result->is_error()) {
    span.SetError("tool_error", "the tool reported an error");
  }
  span.End();
}

void TurnTelemetry::EndTurn(const absl::StatusOr<RunOutcome>& outcome, const v1::Usage& usage,
                            uint32_t steps) {
  if (metrics_ != nullptr) {
    metrics_->turn_duration.WithLabels({provider_})
        .Observe(absl::ToDoubleSeconds(absl::Now() - start_));
    metrics_->steps.WithLabels({provider_}).Observe(steps);
    metrics_->turns
        .WithLabels({outcome.ok() ? FinishReasonText(outcome->finish_reason) : "interrupted"})
        .Increment();
  }
  if (turn_.recording()) {
    if (!response_model_.empty()) turn_.SetAttribute("gen_ai.response.model", response_model_);
    turn_.SetAttribute("gen_ai.usage.input_tokens", static_cast<int64_t>(usage.input_tokens()));
    turn_.SetAttribute("gen_ai.usage.output_tokens", static_cast<int64_t>(usage.output_tokens()));
    if (!outcome.ok()) {
      turn_.SetError(absl::StatusCodeToString(outcome.status().code()), outcome.status().message());
    } else {
      turn_.SetAttribute("gen_ai.response.finish_reasons",
                         std::vector<std::string>{FinishReasonText(outcome->finish_reason)});
      if (outcome->error) {
        turn_.SetError(absl::AsciiStrToLower(absl::StripPrefix(
                           v1::TurnErrorKind_Name(outcome->error->kind()), "TURN_ERROR_KIND_")),
                       outcome->error->message());
      }
    }
  }
  turn_.End();
}

}  // namespace parley::session
