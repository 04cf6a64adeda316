// The scripted model: the user message is parsed into steps once per request (cheap,
// and it keeps the provider stateless: step N of a turn is always the same), then the
// requested step is streamed with its pauses, scripted failures and tool calls.
#include "session-svc/model/scripted.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status.h"

namespace parley::session::model {
namespace {

// Caps that keep a directive from tying a slot up for longer than a test needs.
constexpr int64_t kMaxWords = 100000;
constexpr int64_t kMaxWaitMs = 3600 * 1000;
constexpr int64_t kMaxFailures = 100;

std::vector<std::string> Words(absl::string_view text) {
  return absl::StrSplit(text, ' ', absl::SkipEmpty());
}

bool ParseMs(absl::string_view text, absl::Duration* out) {
  int64_t ms = 0;
  if (!absl::SimpleAtoi(text, &ms) || ms < 0 || ms > kMaxWaitMs) return false;
  *out = absl::Milliseconds(ms);
  return true;
}

// "[after] [xN]" after @fail STATUS or @reset.
bool ParseFailureTail(const std::vector<std::string>& words, size_t from,
                      ScriptedFailure& failure) {
  for (size_t i = from; i < words.size(); ++i) {
    int64_t times = 0;
    if (words[i] == "after") {
      failure.after_output = true;
    } else if (absl::StartsWith(words[i], "x") && absl::SimpleAtoi(words[i].substr(1), &times) &&
               times >= 1 && times <= kMaxFailures) {
      failure.attempts = static_cast<uint32_t>(times);
    } else {
      return false;
    }
  }
  return true;
}

class Parser {
 public:
  explicit Parser(const ScriptedOptions& options) {
    script_.word_delay = options.word_delay;
    script_.steps.emplace_back();
  }

  // Applies one '@' line; false when it is not a directive we know (it is then text).
  bool Apply(absl::string_view line) {
    std::pair<absl::string_view, absl::string_view> split =
        absl::StrSplit(line, absl::MaxSplits(' ', 1));
    const absl::string_view name = split.first;
    const absl::string_view rest = absl::StripAsciiWhitespace(split.second);
    const std::vector<std::string> args = Words(rest);
    absl::Duration duration;
    int64_t number = 0;
    if (name == "@say" && !rest.empty()) {
      ScriptStep& step = ContentStep();
      for (std::string& word : Words(rest)) step.words.push_back(std::move(word));
      step.has_text = true;
    } else if (name == "@think" && !rest.empty()) {
      ScriptStep& step = ContentStep();
      absl::StrAppend(&step.reasoning, step.reasoning.empty() ? "" : " ", rest);
    } else if (name == "@words" && args.size() == 1 && absl::SimpleAtoi(args[0], &number) &&
               number >= 0 && number <= kMaxWords) {
      ScriptStep& step = ContentStep();
      step.words.clear();
      for (int64_t i = 1; i <= number; ++i) step.words.push_back(absl::StrCat("w", i));
      step.has_text = true;
    } else if (name == "@delay_ms" && args.size() == 1 && ParseMs(args[0], &duration)) {
      script_.word_delay = duration;
    } else if (name == "@rate" && args.size() == 1 && absl::SimpleAtoi(args[0], &number) &&
               number >= 1 && number <= 1000000) {
      script_.word_delay = absl::Seconds(1) / number;
    } else if (name == "@stall_ms" && args.size() == 1 && ParseMs(args[0], &duration)) {
      ContentStep().stall = duration;
    } else if (name == "@tool" && !args.empty()) {
      v1::ToolCall& call = script_.steps.back().tool_calls.emplace_back();
      call.set_name(args[0]);
      absl::string_view json = absl::StripAsciiWhitespace(absl::StripPrefix(rest, args[0]));
      call.set_arguments_json(json.empty() ? "{}" : std::string(json));
    } else if (name == "@tool_ms" && args.size() == 1 && ParseMs(args[0], &duration)) {
      v1::ToolCall& call = script_.steps.back().tool_calls.emplace_back();
      call.set_name(ScriptedProvider::kWaitTool);
      call.set_arguments_json(absl::StrCat("{\"ms\":", absl::ToInt64Milliseconds(duration), "}"));
    } else if (name == "@fail" && !args.empty() && absl::SimpleAtoi(args[0], &number) &&
               number >= 100 && number <= 599) {
      ScriptedFailure failure{.status_code = static_cast<int>(number)};
      if (!ParseFailureTail(args, 1, failure)) return false;
      script_.steps.back().failure = failure;
    } else if (name == "@reset") {
      ScriptedFailure failure;
      if (!ParseFailureTail(args, 0, failure)) return false;
      script_.steps.back().failure = failure;
    } else if (name == "@retry_after_ms" && args.size() == 1 && ParseMs(args[0], &duration)) {
      retry_after_ = duration;
    } else {
      return false;
    }
    return true;
  }

  void Text(absl::string_view line) {
    for (std::string& word : Words(line)) script_.user_words.push_back(std::move(word));
  }

  Script Finish() && {
    for (ScriptStep& step : script_.steps) {
      if (step.failure && retry_after_) step.failure->retry_after = retry_after_;
    }
    return std::move(script_);
  }

 private:
  // The step that content (text, reasoning, a stall) goes to: a step ends with its tool
  // calls, so content after them starts the next one.
  ScriptStep& ContentStep() {
    if (!script_.steps.back().tool_calls.empty()) script_.steps.emplace_back();
    return script_.steps.back();
  }

  Script script_;
  std::optional<absl::Duration> retry_after_;
};

uint64_t CountWords(const std::vector<v1::Message>& messages) {
  uint64_t words = 0;
  for (const v1::Message& message : messages) {
    for (const v1::Part& part : message.parts()) {
      if (part.has_tool_result()) words += Words(part.tool_result().output()).size();
      if (part.kind_case() == v1::Part::kText) words += Words(part.text()).size();
    }
  }
  return words;
}

ProviderError ScriptedError(const ScriptedFailure& failure) {
  ProviderError error =
      failure.status_code == 0
          ? TransportError("connection reset")
          : HttpStatusError(failure.status_code, "scripted failure", failure.retry_after);
  error.retry_after = failure.retry_after;
  return error;
}

}  // namespace

Script ParseScript(const v1::Message& user_message, const ScriptedOptions& options) {
  Parser parser(options);
  for (const v1::Part& part : user_message.parts()) {
    if (part.kind_case() != v1::Part::kText) continue;
    for (absl::string_view line : absl::StrSplit(part.text(), '\n')) {
      absl::string_view trimmed = absl::StripAsciiWhitespace(line);
      if (absl::StartsWith(trimmed, "@") && parser.Apply(trimmed)) continue;
      parser.Text(trimmed);
    }
  }
  return std::move(parser).Finish();
}

ScriptedProvider::ScriptedProvider(ScriptedOptions options) : options_(options) {}

absl::Status ScriptedProvider::CheckConfig(
    const std::string& model, const std::map<std::string, std::string>& options) const {
  if (!model.empty() && model != model_) {
    return InvalidArgumentError("agent_config.model", "the scripted provider has one model",
                                model_);
  }
  if (!options.empty()) {
    return InvalidArgumentError(
        absl::StrCat("agent_config.provider_options[", options.begin()->first, "]"),
        "the scripted provider reads no options");
  }
  return absl::OkStatus();
}

StepOutcome ScriptedProvider::Stream(const ModelRequest& request, StepSink& sink) {
  // The newest user message scripts the step: the turn's own, or one that steered it.
  // Steps count from that message (the assistant messages after it).
  const v1::Message* user = nullptr;
  uint32_t local_step = 0;
  for (const v1::Message& message : request.messages) {
    if (message.role() == v1::ROLE_USER) {
      user = &message;
      local_step = 0;
    } else if (message.role() == v1::ROLE_ASSISTANT) {
      ++local_step;
    }
  }
  const Script script = ParseScript(user != nullptr ? *user : v1::Message(), options_);
  ScriptStep step;
  if (local_step < script.steps.size()) step = script.steps[local_step];
  if (!step.has_text && step.tool_calls.empty()) {
    // A step that sets neither text nor tools: the echo first, "done." after tools.
    step.words = {local_step == 0 ? "Echo:" : "done."};
    if (local_step == 0) {
      step.words.insert(step.words.end(), script.user_words.begin(), script.user_words.end());
    }
  }

  StepOutcome outcome;
  outcome.response_model = model_;
  outcome.usage.set_input_tokens(CountWords(request.messages));
  const bool fails = step.failure && request.attempt <= step.failure->attempts;
  if (fails && !step.failure->after_output) {
    outcome.error = ScriptedError(*step.failure);
    return outcome;
  }
  uint64_t output_tokens = 0;
  auto finish = [&](std::optional<ProviderError> error) {
    outcome.usage.set_output_tokens(output_tokens);
    outcome.error = std::move(error);
    return outcome;
  };
  if (step.stall > absl::ZeroDuration() && !sink.WaitFor(step.stall)) return finish(std::nullopt);
  if (!step.reasoning.empty()) {
    if (!sink.Reasoning(step.reasoning).ok()) return finish(std::nullopt);
    output_tokens += Words(step.reasoning).size();
  }
  for (size_t i = 0; i < step.words.size(); ++i) {
    if (i > 0 && script.word_delay > absl::ZeroDuration() && !sink.WaitFor(script.word_delay)) {
      return finish(std::nullopt);
    }
    if (!sink.Text(i == 0 ? step.words[i] : absl::StrCat(" ", step.words[i])).ok()) {
      return finish(std::nullopt);
    }
    ++output_tokens;
  }
  if (fails) return finish(ScriptedError(*step.failure));
  for (size_t i = 0; i < step.tool_calls.size(); ++i) {
    v1::ToolCall call = step.tool_calls[i];
    call.set_call_id(absl::StrCat("call_", request.turn_id, "_", request.step, "_", i + 1));
    if (!sink.ToolCall(std::move(call)).ok()) return finish(std::nullopt);
    ++output_tokens;
  }
  outcome.finish_reason =
      step.tool_calls.empty() ? v1::FINISH_REASON_STOP : v1::FINISH_REASON_TOOL_CALLS;
  return finish(std::nullopt);
}

}  // namespace parley::session::model
