// ScriptedProvider: the built-in stand-in model. Deterministic, no network.
//
// It answers "Echo: <the user's text>" one word per text delta. Lines of the user's
// message that start with '@' are directives that script the turn instead, so the demo
// and the tests can drive every path of the agent loop (tools, parallel calls, retries,
// failures, slow streams) without a real model. The full syntax, with examples, is in
// session-svc/README.md ("The scripted model"); in short:
//
//   @say TEXT          the step says TEXT (word by word)
//   @think TEXT        reasoning before the step's text
//   @words N           N generated words ("w1 w2 ...")
//   @delay_ms N        pause before each word;  @rate N: N words per second
//   @stall_ms N        pause before the step's first output
//   @tool NAME {json}  the step calls NAME with these arguments; consecutive @tool
//                      lines are parallel calls; what follows belongs to the next step
//   @tool_ms N         call "scripted_wait" (waits N ms, needs no sandbox)
//   @fail STATUS [after] [xN]   the step's request fails with HTTP STATUS (before its
//                      output, or after its text with "after"), on its first N attempts
//   @reset [after] [xN]         the connection resets instead
//   @retry_after_ms N  the failures carry Retry-After
//
// Steps past the script say "done.". Malformed directives are treated as text, so a
// user can never make the parser fail. TurnStarted names the model "scripted/echo".
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "session-svc/model/model.h"

namespace parley::session::model {

struct ScriptedOptions {
  absl::Duration word_delay = absl::ZeroDuration();
};

// A scripted failure of a step's request.
struct ScriptedFailure {
  int status_code = 0;  // 0: a connection reset.
  bool after_output = false;
  uint32_t attempts = 1;  // Fails the first N attempts of the step.
  std::optional<absl::Duration> retry_after;
};

// What one step of the script does.
struct ScriptStep {
  std::string reasoning;
  std::vector<std::string> words;
  bool has_text = false;  // @say or @words set the words.
  absl::Duration stall = absl::ZeroDuration();
  std::vector<v1::ToolCall> tool_calls;  // call_id assigned at Stream time.
  std::optional<ScriptedFailure> failure;
};

struct Script {
  std::vector<ScriptStep> steps;
  absl::Duration word_delay;
  // The user's words (non-directive text): echoed by step 0 when it sets no text.
  std::vector<std::string> user_words;
};

// Reads the directives and the text of `user_message` (text parts only).
Script ParseScript(const v1::Message& user_message, const ScriptedOptions& options);

class ScriptedProvider final : public ModelProvider {
 public:
  // The tool @tool_ms calls: this provider's own (own_tools()).
  static constexpr char kWaitTool[] = "scripted_wait";

  explicit ScriptedProvider(ScriptedOptions options);
  const std::string& name() const override { return name_; }
  const std::string& default_model() const override { return model_; }
  absl::Status CheckConfig(const std::string& model,
                           const std::map<std::string, std::string>& options) const override;
  bool needs_history() const override { return false; }
  std::vector<std::string> own_tools() const override { return {kWaitTool}; }
  StepOutcome Stream(const ModelRequest& request, StepSink& sink) override;

 private:
  const ScriptedOptions options_;
  const std::string name_ = "scripted";
  const std::string model_ = "echo";
};

}  // namespace parley::session::model
