// ScriptedRunner: the built-in stand-in model. Deterministic, no network.
//
// It answers "Echo: <the user's text>" one word per TextDelta, then one Usage event
// (one input token per word of the user's text, one output token per word sent).
// Lines of the user's text that start with '@' are directives instead of text:
//
//   @words N       answer with N generated words ("w1 w2 ...") instead of the echo
//   @delay_ms N    wait N ms before each word (default: ScriptedOptions.word_delay)
//   @stall_ms N    wait N ms before the first word (a turn with no output yet)
//   @tool_ms N     after the words, call the tool "scripted_wait", which takes N ms
//                  and returns "waited N ms"; then say "done." in a second step
//
// Every wait ends at once when the turn is asked to stop. The real model providers
// replace it behind TurnRunner; this one exists so that the demo and the tests need no
// model at all, and it says so: TurnStarted names the model "scripted/echo".
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "session-svc/turn/turn_runner.h"

namespace parley::session {

struct ScriptedOptions {
  absl::Duration word_delay = absl::ZeroDuration();
};

// A parsed user message: what the scripted model will say, and how fast.
struct Script {
  std::vector<std::string> words;
  absl::Duration word_delay;
  absl::Duration stall = absl::ZeroDuration();
  std::optional<absl::Duration> tool;  // Set by @tool_ms: one tool call after the words.
  uint64_t input_tokens = 0;
};

// Reads the directives and the text of `user_message` (text parts only). Unknown or
// malformed directives are treated as text, so a user can never make a turn fail.
Script ParseScript(const v1::Message& user_message, const ScriptedOptions& options);

class ScriptedRunner final : public TurnRunner {
 public:
  explicit ScriptedRunner(ScriptedOptions options) : options_(options) {}
  absl::StatusOr<RunOutcome> Run(const TurnInput& input, TurnOutput& output) override;

 private:
  const ScriptedOptions options_;
};

}  // namespace parley::session
