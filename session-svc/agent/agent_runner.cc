// The agent loop. One TurnLoop per running turn keeps the turn's state: the
// conversation so far, the step being streamed, its tool calls, the retry budget. The
// loop is the StepSink its provider streams into, so every piece of output becomes an
// event the moment it arrives.
#include "session-svc/agent/agent_runner.h"

#include <algorithm>
#include <optional>
#include <thread>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "session-svc/agent/history.h"
#include "session-svc/agent/turn_telemetry.h"
#include "session-svc/tools/schema.h"
#include "session-svc/tools/tool.h"
#include "session-svc/turn/transcript.h"
#include "telemetry/log.h"

namespace parley::session {
namespace {

namespace store_pb = ::parley::store::v1;

RunOutcome Ended(v1::FinishReason reason) { return RunOutcome{.finish_reason = reason}; }

RunOutcome Failed(v1::TurnError error) {
  return RunOutcome{.finish_reason = v1::FINISH_REASON_ERROR, .error = std::move(error)};
}

v1::TurnError TurnErrorOf(v1::TurnErrorKind kind, std::string message, bool retryable) {
  v1::TurnError error;
  error.set_kind(kind);
  error.set_message(std::move(message));
  error.set_retryable(retryable);
  return error;
}

v1::TurnError ProviderTurnError(const std::string& provider, const model::ProviderError& failure,
                                std::string message) {
  v1::TurnError error =
      TurnErrorOf(v1::TURN_ERROR_KIND_PROVIDER, std::move(message), failure.retryable);
  error.set_provider(provider);
  error.set_status_code(failure.status_code);
  return error;
}

// What a sandbox failure tells the model: what happened, and what it means for files.
std::string SandboxFailureText(const absl::Status& status) {
  if (tools::IsSandboxGone(status)) {
    return absl::StrCat(
        "The sandbox was lost while this tool ran (", status.message(),
        "). The next tool call runs in a new sandbox whose workspace may be empty: files "
        "written earlier may be gone.");
  }
  return absl::StrCat("The sandbox could not be reached (", status.message(),
                      "); the tool may not have run. Try again.");
}

}  // namespace

class TurnLoop final : public model::StepSink {
 public:
  TurnLoop(const AgentRunner& runner, const TurnInput& input, TurnOutput& out,
           model::ModelProvider& provider, std::string model)
      : runner_(runner),
        input_(input),
        config_(input.config),
        out_(out),
        provider_(provider),
        model_(std::move(model)),
        telemetry_(runner.options_.tracer, runner.options_.metrics, input, provider.name(), model_),
        sandbox_(runner.sandbox_ == nullptr
                     ? nullptr
                     : std::make_unique<tools::SessionSandbox>(
                           *runner.sandbox_,
                           tools::SandboxTarget{
                               .tenant_id = input.session.tenant_id(),
                               .session_id = input.session.id(),
                               .template_name = input.config.sandbox_template().empty()
                                                    ? runner.options_.default_sandbox_template
                                                    : input.config.sandbox_template()},
                           out)) {}

  // The turn inside its invoke_agent span.
  absl::StatusOr<RunOutcome> Run();

  // StepSink: the provider's stream, published as it arrives.
  absl::Status Text(absl::string_view text) override {
    v1::Event event;
    event.mutable_text_delta()->set_step(step_);
    event.mutable_text_delta()->set_text(std::string(text));
    return EmitOutput(std::move(event));
  }
  absl::Status Reasoning(absl::string_view text) override {
    v1::Event event;
    event.mutable_reasoning_delta()->set_step(step_);
    event.mutable_reasoning_delta()->set_text(std::string(text));
    return EmitOutput(std::move(event));
  }
  absl::Status ReasoningMetadata(const std::string& key, const std::string& value) override {
    v1::Event event;
    event.mutable_reasoning_delta()->set_step(step_);
    (*event.mutable_reasoning_delta()->mutable_provider_metadata())[key] = value;
    return EmitOutput(std::move(event));
  }
  absl::Status ToolCall(v1::ToolCall call) override {
    calls_.push_back(call);
    v1::Event event;
    *event.mutable_tool_call() = std::move(call);
    return EmitOutput(std::move(event));
  }
  absl::Status Flush() override { return out_.Flush(); }
  bool WaitFor(absl::Duration duration) override {
    const absl::Duration left = deadline_ - Now();
    if (left <= absl::ZeroDuration()) return false;
    if (duration < left) return out_.WaitFor(duration);
    (void)out_.WaitFor(left);
    return false;
  }
  bool stopping() const override { return out_.stopping() || past_deadline(); }
  std::unique_ptr<StopHook> OnStop(std::function<void()> hook) override {
    // The turn's time limit fires no hook: providers also poll stopping() while they
    // wait for bytes (every 200 ms at most), and it is checked at every piece.
    return out_.OnStop(std::move(hook));
  }

 private:
  // How a step's model request ended: the outcome, or the turn's end.
  struct StepEnd {
    model::StepOutcome outcome;
    std::optional<RunOutcome> turn_over;
  };

  absl::Time Now() const { return runner_.clock_.Now(); }
  bool past_deadline() const { return Now() >= deadline_; }

  absl::Status Emit(v1::Event event) {
    event.set_step(step_);
    absl::Status status = out_.Emit(event);
    if (status.ok()) transcript_.Add(event);
    return status;
  }
  absl::Status EmitOutput(v1::Event event) {
    if (past_deadline()) return absl::DeadlineExceededError("the turn's time is up");
    if (!first_output_) {
      first_output_ = Now();
      telemetry_.FirstToken(chat_, *first_output_ - step_start_);
    }
    streamed_ = true;
    return Emit(std::move(event));
  }

  absl::Status LoadHistory();
  void ResolveTools();
  model::ModelRequest Request(uint32_t attempt) const;
  absl::StatusOr<RunOutcome> RunSteps();
  absl::StatusOr<StepEnd> StreamStep();
  absl::Status RunTools();
  absl::Status RunGroup(size_t begin, size_t end);
  // A call's result, and the output the model got only part of when no output event has
  // carried it yet (a tool that does not stream, such as read_file): the loop emits that
  // as output events before the result, so the full output is always in the events.
  struct CallRun {
    v1::ToolResult result;
    std::string unstreamed_output;
  };
  // RunCallInScope inside the call's execute_tool span.
  absl::StatusOr<CallRun> RunCall(const v1::ToolCall& call, bool stream_output);
  absl::StatusOr<CallRun> RunCallInScope(const v1::ToolCall& call, bool stream_output);
  absl::Duration ToolTimeout() const {
    return std::min(runner_.options_.tool_timeout, deadline_ - Now());
  }
  const tools::Tool* FindTool(const std::string& name) const {
    for (const tools::Tool* tool : tools_) {
      if (tool->name() == name) return tool;
    }
    return nullptr;
  }

  const AgentRunner& runner_;
  const TurnInput& input_;
  const v1::AgentConfig& config_;
  TurnOutput& out_;
  model::ModelProvider& provider_;
  const std::string model_;
  TurnTelemetry telemetry_;
  telemetry::Span chat_;  // The model request being streamed.
  const std::unique_ptr<tools::SessionSandbox> sandbox_;

  std::vector<v1::Message> history_;  // Before this turn, then the user's message.
  Transcript transcript_;             // This turn's steps, as committed.
  std::vector<const tools::Tool*> tools_;
  absl::Time deadline_ = absl::InfiniteFuture();

  uint32_t step_ = 0;
  std::vector<v1::ToolCall> calls_;         // The current step's.
  bool streamed_ = false;                   // The current attempt emitted output.
  std::optional<absl::Time> first_output_;  // Of the current step.
  absl::Time step_start_;                   // Of the current step.
  uint32_t steps_started_ = 0;
  uint32_t retries_ = 0;  // Over the turn.
  std::optional<absl::Time> first_failure_;
  std::optional<v1::TurnError> fatal_;  // Set when RunTools ends the turn.
  absl::BitGen jitter_;
};

absl::Status TurnLoop::LoadHistory() {
  if (!provider_.needs_history()) {
    history_ = {input_.user_message};
    return absl::OkStatus();
  }
  // Newest first, page by page back from the user's message.
  std::vector<v1::Message> newest_first;
  store_pb::ListMessagesRequest list;
  list.set_tenant_id(input_.session.tenant_id());
  list.mutable_request()->set_session_id(input_.session.id());
  list.mutable_request()->set_limit(1000);
  std::string before = input_.user_message.id();
  for (int page = 0; page < 100; ++page) {
    list.mutable_request()->set_before_message_id(before);
    store_pb::ListMessagesResponse messages;
    absl::Status status =
        StoreCall(runner_.store_, &StoreStub::ListMessages, list, &messages, {.attempts = 5});
    if (!status.ok()) return status;
    for (auto it = messages.messages().rbegin(); it != messages.messages().rend(); ++it) {
      newest_first.push_back(*it);
    }
    if (!messages.has_more() || messages.messages().empty()) break;
    before = messages.messages(0).id();
  }
  std::vector<v1::Message> stored(newest_first.rbegin(), newest_first.rend());
  stored.push_back(input_.user_message);
  HistoryWindow window = runner_.options_.history_policy->Fit(
      RepairHistory(std::move(stored), nullptr), runner_.options_.history_token_budget);
  history_ = std::move(window.messages);
  if (window.dropped_messages == 0) return absl::OkStatus();
  v1::Event trimmed;
  v1::HistoryTrimmed& what = *trimmed.mutable_history_trimmed();
  what.set_dropped_messages(window.dropped_messages);
  what.set_kept_messages(history_.size());
  what.set_estimated_tokens(window.estimated_tokens);
  what.set_budget_tokens(runner_.options_.history_token_budget);
  return Emit(std::move(trimmed));
}

void TurnLoop::ResolveTools() {
  std::vector<std::string> names(config_.tools().begin(), config_.tools().end());
  for (std::string& name : provider_.own_tools()) names.push_back(std::move(name));
  for (const std::string& name : names) {
    if (const tools::Tool* tool = tools::FindBuiltinTool(name)) tools_.push_back(tool);
  }
}

model::ModelRequest TurnLoop::Request(uint32_t attempt) const {
  model::ModelRequest request;
  request.model = model_;
  request.system_prompt = config_.system_prompt();
  // Repaired as a whole before every call, the turn's own steps included: a model may
  // have called a tool with arguments that are not JSON (answered with an error result)
  // or reused a call id, and some providers refuse such a request outright.
  std::vector<v1::Message> messages = history_;
  messages.insert(messages.end(), transcript_.messages().begin(), transcript_.messages().end());
  request.messages = RepairHistory(std::move(messages), nullptr);
  for (const tools::Tool* tool : tools_) request.tools.push_back(tool->spec());
  if (config_.max_output_tokens() > 0) {
    const uint64_t used = transcript_.usage().output_tokens();
    request.max_output_tokens =
        static_cast<uint32_t>(std::max<uint64_t>(1, config_.max_output_tokens() - used));
  }
  if (config_.has_temperature()) request.temperature = config_.temperature();
  request.options.insert(config_.provider_options().begin(), config_.provider_options().end());
  request.turn_id = input_.turn.id();
  request.step = step_;
  request.attempt = attempt;
  return request;
}

absl::StatusOr<TurnLoop::StepEnd> TurnLoop::StreamStep() {
  const uint32_t max_retries = config_.retry_max_attempts() > 0
                                   ? config_.retry_max_attempts()
                                   : runner_.options_.retry_max_attempts;
  const absl::Duration max_retrying = config_.retry_max_duration_ms() > 0
                                          ? absl::Milliseconds(config_.retry_max_duration_ms())
                                          : runner_.options_.retry_max_duration;
  for (uint32_t attempt = 1;; ++attempt) {
    streamed_ = false;
    calls_.clear();
    chat_ = telemetry_.StartChat();
    model::ModelRequest request = Request(attempt);
    // Only a span that is exported is worth the copy.
    std::optional<model::BodyCapture> capture;
    if (runner_.options_.capture_model_bodies_bytes > 0 && chat_.recording()) {
      request.capture = &capture.emplace(runner_.options_.capture_model_bodies_bytes);
    }
    StepEnd end{.outcome = provider_.Stream(request, *this)};
    telemetry_.EndChat(chat_, end.outcome, capture ? &*capture : nullptr);
    if (out_.stopping()) return absl::CancelledError("the turn is stopping");
    if (past_deadline()) {
      end.turn_over = Ended(v1::FINISH_REASON_MAX_DURATION);
      return end;
    }
    if (!end.outcome.error) return end;
    const model::ProviderError& failure = *end.outcome.error;
    if (streamed_) {
      end.turn_over = Failed(ProviderTurnError(
          provider_.name(), failure,
          absl::StrCat(failure.message,
                       " (after the step had streamed output: not retried, so that no output "
                       "is repeated)")));
      return end;
    }
    if (!first_failure_) first_failure_ = Now();
    // Full jitter over the upper half of the capped exponential delay; a server's
    // Retry-After wins when it asks for longer.
    absl::Duration delay = runner_.options_.retry_first_backoff;
    for (uint32_t i = 1; i < attempt && delay < runner_.options_.retry_max_backoff; ++i) delay *= 2;
    delay = std::min(delay, runner_.options_.retry_max_backoff);
    delay *= absl::Uniform(jitter_, 0.5, 1.0);
    if (failure.retry_after) delay = std::max(delay, *failure.retry_after);
    // A retry whose wait would end past the budget's duration is given up now: waiting
    // for it would only delay the same failure.
    const bool budget_left =
        retries_ < max_retries && Now() + delay - *first_failure_ <= max_retrying;
    if (!failure.retryable || !budget_left) {
      std::string why = failure.message;
      if (failure.retryable) {
        absl::StrAppend(&why, " (gave up after ", retries_, " retries");
        if (retries_ < max_retries) {
          absl::StrAppend(&why, ": the next one, in ", absl::FormatDuration(delay),
                          ", would have been past the retry budget of ",
                          absl::FormatDuration(max_retrying));
        }
        absl::StrAppend(&why, ")");
      }
      end.turn_over = Failed(ProviderTurnError(provider_.name(), failure, why));
      return end;
    }
    ++retries_;
    telemetry_.Retry(failure.reason);
    v1::Event retry;
    retry.set_transient(true);
    v1::RetryScheduled& scheduled = *retry.mutable_retry_scheduled();
    scheduled.set_attempt(attempt + 1);
    scheduled.set_delay_ms(static_cast<uint64_t>(absl::ToInt64Milliseconds(delay)));
    scheduled.set_reason(failure.reason);
    *scheduled.mutable_error() = ProviderTurnError(provider_.name(), failure, failure.message);
    if (absl::Status status = Emit(std::move(retry)); !status.ok()) return status;
    if (!WaitFor(delay)) {
      if (out_.stopping()) return absl::CancelledError("the turn is stopping");
      end.turn_over = Ended(v1::FINISH_REASON_MAX_DURATION);
      return end;
    }
  }
}

absl::StatusOr<TurnLoop::CallRun> TurnLoop::RunCall(const v1::ToolCall& call, bool stream_output) {
  const absl::Time start = absl::Now();
  telemetry::Span span = telemetry_.StartTool(call);
  // Runs on this thread (parallel read-only calls each have their own): sandbox-svc
  // calls made for the tool become children of its span.
  telemetry::ContextScope scope(telemetry_.ScopeFor(span));
  absl::StatusOr<CallRun> ran = RunCallInScope(call, stream_output);
  if (!ran.ok()) {
    span.SetError(absl::StatusCodeToString(ran.status().code()), ran.status().message());
  }
  const tools::Tool* tool = FindTool(call.name());
  telemetry_.EndTool(span, tool != nullptr ? &call.name() : nullptr, absl::Now() - start,
                     ran.ok() ? &ran->result : nullptr);
  return ran;
}

absl::StatusOr<TurnLoop::CallRun> TurnLoop::RunCallInScope(const v1::ToolCall& call,
                                                           bool stream_output) {
  const absl::Time start = Now();
  CallRun ran;
  v1::ToolResult& result = ran.result;
  result.set_call_id(call.call_id());
  auto error = [&](std::string text) {
    result.set_output(std::move(text));
    result.set_is_error(true);
    return ran;
  };
  const tools::Tool* tool = FindTool(call.name());
  if (tool == nullptr) {
    std::vector<std::string> names;
    for (const tools::Tool* t : tools_) names.push_back(t->name());
    return error(absl::StrCat("unknown tool \"", call.name(), "\"; the tools are: ",
                              names.empty() ? "(none)" : absl::StrJoin(names, ", ")));
  }
  absl::StatusOr<nlohmann::json> arguments =
      tools::CheckArguments(tool->schema(), call.arguments_json());
  if (!arguments.ok()) {
    return error(absl::StrCat("invalid arguments for ", call.name(), ": ",
                              arguments.status().message(), "; nothing was run"));
  }
  const absl::Duration timeout = ToolTimeout();
  if (timeout <= absl::ZeroDuration()) return error("the turn's time ran out before this tool ran");
  tools::ToolContext context{.sandbox = tool->needs_sandbox() ? sandbox_.get() : nullptr,
                             .stop = out_,
                             .timeout = timeout};
  bool streamed = false;
  if (stream_output) {
    context.on_output = [&](v1::OutputStream stream, const std::string& data) {
      streamed = true;
      v1::Event event;
      event.mutable_tool_output_delta()->set_call_id(call.call_id());
      event.mutable_tool_output_delta()->set_stream(stream);
      event.mutable_tool_output_delta()->set_data(data);
      (void)Emit(std::move(event));  // A stop shows in the run's status.
    };
  }
  absl::StatusOr<tools::ToolRun> run = tool->Run(*arguments, context);
  if (out_.stopping()) return absl::CancelledError("the turn is stopping");
  result.set_duration_ms(
      static_cast<uint64_t>(std::max<int64_t>(0, absl::ToInt64Milliseconds(Now() - start))));
  if (!run.ok()) return error(SandboxFailureText(run.status()));
  result.set_output(
      tools::CapForModel(run->output, runner_.options_.max_tool_result_bytes, run->already_cut));
  result.set_is_error(run->is_error);
  if (!streamed && result.output().size() != run->output.size()) {
    ran.unstreamed_output = std::move(run->output);
  }
  return ran;
}

absl::Status TurnLoop::RunGroup(size_t begin, size_t end) {
  bool needs_sandbox = false;
  for (size_t i = begin; i < end; ++i) {
    // A call that will not run (unknown tool, invalid arguments) needs no sandbox: it is
    // an error result for the model even when no sandbox can be had.
    const tools::Tool* tool = FindTool(calls_[i].name());
    needs_sandbox =
        needs_sandbox || (tool != nullptr && tool->needs_sandbox() &&
                          tools::CheckArguments(tool->schema(), calls_[i].arguments_json()).ok());
  }
  if (needs_sandbox) {
    if (sandbox_ == nullptr) {
      fatal_ = TurnErrorOf(v1::TURN_ERROR_KIND_SANDBOX, "no sandbox service is configured", false);
      return absl::AbortedError("no sandbox");
    }
    // Attached here, on the turn's thread, so its event is in order before the results.
    std::optional<v1::SandboxAttached> attached;
    absl::Status status = sandbox_->Attach(&attached);
    if (out_.stopping()) return absl::CancelledError("the turn is stopping");
    if (!status.ok()) {
      fatal_ = TurnErrorOf(v1::TURN_ERROR_KIND_SANDBOX,
                           absl::StrCat("could not get the session's sandbox: ", status.message()),
                           status.code() == absl::StatusCode::kUnavailable ||
                               status.code() == absl::StatusCode::kResourceExhausted);
      return absl::AbortedError("no sandbox");
    }
    if (attached) {
      v1::Event event;
      *event.mutable_sandbox_attached() = *std::move(attached);
      if (absl::Status emitted = Emit(std::move(event)); !emitted.ok()) return emitted;
    }
  }
  std::vector<absl::StatusOr<CallRun>> results(end - begin, absl::UnknownError("not run"));
  if (end - begin == 1) {
    results[0] = RunCall(calls_[begin], /*stream_output=*/true);
  } else {
    // Read-only calls together; their output is not streamed (they do not write any).
    std::vector<std::thread> threads;
    const std::vector<telemetry::LogField> log_fields = telemetry::LogScope::Current();
    const std::optional<telemetry::TraceContext> trace = telemetry::ContextScope::Current();
    for (size_t i = begin; i < end; ++i) {
      threads.emplace_back([&, i] {
        // The calls log and trace as the turn's thread does.
        telemetry::LogScope log_scope(log_fields);
        telemetry::ContextScope trace_scope(trace);
        results[i - begin] = RunCall(calls_[i], false);
      });
    }
    for (std::thread& thread : threads) thread.join();
  }
  // A sandbox lost under these calls is announced before their results, which say so.
  if (std::optional<v1::SandboxLost> lost = sandbox_ ? sandbox_->TakeLoss() : std::nullopt) {
    v1::Event event;
    *event.mutable_sandbox_lost() = *std::move(lost);
    if (absl::Status status = Emit(std::move(event)); !status.ok()) return status;
  }
  constexpr size_t kOutputChunk = 64 << 10;
  for (absl::StatusOr<CallRun>& ran : results) {
    if (!ran.ok()) return ran.status();
    const absl::string_view unstreamed = ran->unstreamed_output;
    for (size_t at = 0; at < unstreamed.size(); at += kOutputChunk) {
      v1::Event event;
      v1::ToolOutputDelta& delta = *event.mutable_tool_output_delta();
      delta.set_call_id(ran->result.call_id());
      delta.set_stream(v1::OUTPUT_STREAM_STDOUT);
      delta.set_data(std::string(unstreamed.substr(at, kOutputChunk)));
      if (absl::Status status = Emit(std::move(event)); !status.ok()) return status;
    }
    v1::Event event;
    *event.mutable_tool_result() = std::move(ran->result);
    if (absl::Status status = Emit(std::move(event)); !status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status TurnLoop::RunTools() {
  auto read_only = [&](const v1::ToolCall& call) {
    const tools::Tool* tool = FindTool(call.name());
    return tool == nullptr || tool->read_only();
  };
  // Runs of read-only calls go together; every other call runs alone, in the model's order.
  for (size_t begin = 0; begin < calls_.size();) {
    size_t end = begin + 1;
    if (read_only(calls_[begin])) {
      while (end < calls_.size() && read_only(calls_[end])) ++end;
    }
    if (absl::Status status = RunGroup(begin, end); !status.ok()) return status;
    begin = end;
  }
  return absl::OkStatus();
}

absl::StatusOr<RunOutcome> TurnLoop::Run() {
  // Store and sandbox calls made for the turn join its trace.
  telemetry::ContextScope scope(telemetry_.context());
  absl::StatusOr<RunOutcome> outcome = RunSteps();
  telemetry_.EndTurn(outcome, transcript_.usage(), steps_started_);
  return outcome;
}

absl::StatusOr<RunOutcome> TurnLoop::RunSteps() {
  if (config_.max_turn_duration_ms() > 0) {
    deadline_ = Now() + absl::Milliseconds(config_.max_turn_duration_ms());
  }
  if (absl::Status loaded = LoadHistory(); !loaded.ok()) return loaded;
  ResolveTools();
  for (step_ = 0;; ++step_) {
    if (config_.max_steps() > 0 && step_ >= config_.max_steps()) {
      return Ended(v1::FINISH_REASON_MAX_STEPS);
    }
    if (past_deadline()) return Ended(v1::FINISH_REASON_MAX_DURATION);
    if (step_ > 0) {
      // The step boundary, once another step will run: messages that steer the turn join
      // the conversation here, after the tool results the model asked for. (A turn that
      // ends instead leaves them to start the next turn.)
      absl::StatusOr<std::vector<v1::Message>> steering = out_.TakeSteering();
      if (!steering.ok()) return steering.status();
      for (const v1::Message& message : *steering) transcript_.AddUserMessage(message);
    }
    step_start_ = Now();
    ++steps_started_;
    first_output_.reset();
    absl::StatusOr<StepEnd> stepped = StreamStep();
    if (!stepped.ok()) return stepped.status();
    if (stepped->turn_over) return *stepped->turn_over;
    const model::StepOutcome& outcome = stepped->outcome;
    const absl::Time stream_end = Now();
    v1::Event usage;
    *usage.mutable_usage() = outcome.usage;
    if (absl::Status status = Emit(std::move(usage)); !status.ok()) return status;
    if (config_.max_output_tokens() > 0 &&
        transcript_.usage().output_tokens() >= config_.max_output_tokens()) {
      return Ended(v1::FINISH_REASON_MAX_OUTPUT_TOKENS);
    }
    if (!calls_.empty()) {
      if (absl::Status status = RunTools(); !status.ok()) {
        if (fatal_) return Failed(*fatal_);
        return status;
      }
    }
    v1::StepCompleted done;
    done.set_step(step_);
    done.set_finish_reason(calls_.empty() ? outcome.finish_reason : v1::FINISH_REASON_TOOL_CALLS);
    *done.mutable_usage() = outcome.usage;
    if (first_output_) {
      done.set_time_to_first_token_ms(absl::ToInt64Milliseconds(*first_output_ - step_start_));
      done.set_decode_ms(absl::ToInt64Milliseconds(stream_end - *first_output_));
    }
    done.set_response_model(outcome.response_model);
    if (absl::Status status = out_.EndStep(done); !status.ok()) return status;
    if (calls_.empty()) {
      return Ended(outcome.finish_reason == v1::FINISH_REASON_MAX_OUTPUT_TOKENS
                       ? v1::FINISH_REASON_MAX_OUTPUT_TOKENS
                       : v1::FINISH_REASON_STOP);
    }
  }
}

AgentRunner::AgentRunner(AgentOptions options, const model::ProviderRegistry& providers,
                         StoreStub& store, tools::SandboxReplicas* sandbox, Clock& clock)
    : options_(std::move(options)),
      providers_(providers),
      store_(store),
      sandbox_(sandbox),
      clock_(clock) {}

std::string AgentRunner::ModelName(const v1::AgentConfig& config) const {
  model::ModelProvider* provider = providers_.Find(config.provider());
  if (provider == nullptr) return absl::StrCat(config.provider(), "/", config.model());
  return absl::StrCat(provider->name(), "/",
                      config.model().empty() ? provider->default_model() : config.model());
}

absl::StatusOr<RunOutcome> AgentRunner::Run(const TurnInput& input, TurnOutput& output) {
  model::ModelProvider* provider = providers_.Find(input.config.provider());
  if (provider == nullptr) {
    v1::TurnError error =
        TurnErrorOf(v1::TURN_ERROR_KIND_PROVIDER,
                    absl::StrCat("no model provider \"",
                                 input.config.provider().empty() ? providers_.default_name()
                                                                 : input.config.provider(),
                                 "\" is configured on this server"),
                    false);
    error.set_provider(input.config.provider());
    return Failed(std::move(error));
  }
  const std::string model =
      input.config.model().empty() ? provider->default_model() : input.config.model();
  std::map<std::string, std::string> options(input.config.provider_options().begin(),
                                             input.config.provider_options().end());
  if (absl::Status valid = provider->CheckConfig(model, options); !valid.ok()) {
    v1::TurnError error =
        TurnErrorOf(v1::TURN_ERROR_KIND_PROVIDER, std::string(valid.message()), false);
    error.set_provider(provider->name());
    return Failed(std::move(error));
  }
  TurnLoop loop(*this, input, output, *provider, model);
  return loop.Run();
}

}  // namespace parley::session
