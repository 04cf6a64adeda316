// The scripted model: parse the directives, then stream the words.
#include "session-svc/turn/scripted_runner.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace parley::session {
namespace {

// Caps that keep a directive from tying a slot up for longer than a test needs.
constexpr int64_t kMaxWords = 100000;
constexpr int64_t kMaxWaitMs = 3600 * 1000;

// Applies "@name N" to `script`; false when the line is not a directive we know.
bool ApplyDirective(absl::string_view line, Script& script) {
  std::vector<absl::string_view> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
  int64_t value = 0;
  if (words.size() != 2 || !absl::SimpleAtoi(words[1], &value) || value < 0) return false;
  if (words[0] == "@words" && value <= kMaxWords) {
    script.words.clear();
    for (int64_t i = 1; i <= value; ++i) script.words.push_back(absl::StrCat("w", i));
    return true;
  }
  if (words[0] == "@delay_ms" && value <= kMaxWaitMs) {
    script.word_delay = absl::Milliseconds(value);
    return true;
  }
  if (words[0] == "@stall_ms" && value <= kMaxWaitMs) {
    script.stall = absl::Milliseconds(value);
    return true;
  }
  if (words[0] == "@tool_ms" && value <= kMaxWaitMs) {
    script.tool = absl::Milliseconds(value);
    return true;
  }
  return false;
}

}  // namespace

Script ParseScript(const v1::Message& user_message, const ScriptedOptions& options) {
  Script script{.word_delay = options.word_delay};
  std::vector<std::string> text_words;
  bool generated = false;
  for (const v1::Part& part : user_message.parts()) {
    if (part.kind_case() != v1::Part::kText) continue;
    for (absl::string_view line : absl::StrSplit(part.text(), '\n')) {
      absl::string_view trimmed = absl::StripAsciiWhitespace(line);
      if (absl::StartsWith(trimmed, "@") && ApplyDirective(trimmed, script)) {
        generated = generated || absl::StartsWith(trimmed, "@words");
        continue;
      }
      for (absl::string_view word : absl::StrSplit(trimmed, ' ', absl::SkipEmpty())) {
        text_words.emplace_back(word);
      }
    }
  }
  script.input_tokens = text_words.size();
  if (!generated) {
    script.words = {"Echo:"};
    script.words.insert(script.words.end(), text_words.begin(), text_words.end());
  }
  return script;
}

absl::StatusOr<RunOutcome> ScriptedRunner::Run(const TurnInput& input, TurnOutput& output) {
  const Script script = ParseScript(input.user_message, options_);
  if (script.stall > absl::ZeroDuration() && !output.WaitFor(script.stall)) {
    return absl::CancelledError("stopped while stalling");
  }
  for (size_t i = 0; i < script.words.size(); ++i) {
    if (i > 0 && script.word_delay > absl::ZeroDuration() && !output.WaitFor(script.word_delay)) {
      return absl::CancelledError("stopped between words");
    }
    v1::Event event;
    event.mutable_text_delta()->set_step(0);
    event.mutable_text_delta()->set_text(i == 0 ? script.words[i]
                                                : absl::StrCat(" ", script.words[i]));
    if (absl::Status status = output.Emit(std::move(event)); !status.ok()) return status;
  }
  uint64_t output_tokens = script.words.size();
  if (script.tool) {
    // One tool round trip: the call, the tool's run (interruptible), its result, and
    // the model's second step. The call id is unique within the session.
    const std::string call_id = absl::StrCat("call_", input.turn.id(), "_1");
    const int64_t ms = absl::ToInt64Milliseconds(*script.tool);
    v1::Event call;
    call.mutable_tool_call()->set_call_id(call_id);
    call.mutable_tool_call()->set_name("scripted_wait");
    call.mutable_tool_call()->set_arguments_json(absl::StrCat("{\"ms\":", ms, "}"));
    if (absl::Status status = output.Emit(std::move(call)); !status.ok()) return status;
    if (!output.WaitFor(*script.tool)) return absl::CancelledError("stopped while the tool ran");
    v1::Event result;
    result.mutable_tool_result()->set_call_id(call_id);
    result.mutable_tool_result()->set_output(absl::StrCat("waited ", ms, " ms"));
    result.mutable_tool_result()->set_duration_ms(ms);
    if (absl::Status status = output.Emit(std::move(result)); !status.ok()) return status;
    v1::Event done;
    done.mutable_text_delta()->set_step(1);
    done.mutable_text_delta()->set_text("done.");
    if (absl::Status status = output.Emit(std::move(done)); !status.ok()) return status;
    ++output_tokens;
  }
  v1::Event usage;
  usage.mutable_usage()->set_input_tokens(script.input_tokens);
  usage.mutable_usage()->set_output_tokens(output_tokens);
  if (absl::Status status = output.Emit(std::move(usage)); !status.ok()) return status;
  return RunOutcome{.finish_reason = v1::FINISH_REASON_STOP};
}

}  // namespace parley::session
