// ModelProvider: the seam between the agent loop and a model API.
//
// One call of Stream() is one model step: the provider sends the request, streams the
// answer into a StepSink as it arrives (text, reasoning, complete tool calls) and
// returns how the step ended — or a ProviderError saying what failed, whether a retry
// may help, and whether any output had reached the sink. The agent loop owns retries,
// tools and history; a provider only speaks its wire format.
//
//   ScriptedProvider scripted({});
//   ModelRequest request{.model = "echo", .messages = history};
//   StepOutcome outcome = scripted.Stream(request, sink);
//   if (outcome.error) { /* retry or fail the turn */ }
//
// Implementations: ScriptedProvider (built in, no network), OpenAiProvider (chat
// completions), AnthropicProvider (Messages API). Stream() is called from many turn
// slots at once: implementations are thread-safe.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "parley/v1/resources.pb.h"
#include "session-svc/turn/turn_control.h"

namespace parley::session::model {

// A tool the model may call: its name, what it does, and the JSON schema of its
// arguments (an object schema, as OpenAI and Anthropic both take it).
struct ToolSpec {
  std::string name;
  std::string description;
  std::string parameters_json_schema;
};

// One model request and its response as they went over the wire, kept for the chat
// span when body capture is on (AgentOptions.capture_model_bodies). Credentials never
// reach it: header values that carry them, JSON fields whose names say so and any
// credential-shaped token (telemetry::RedactCredentials) are "[REDACTED]" before
// anything is stored, and each body keeps at most max_bytes (the rest is cut, and
// *_truncated says so).
struct BodyCapture {
  explicit BodyCapture(size_t max_bytes) : max_bytes(max_bytes) {}

  // Records the request; `secret` is the provider's key (also redacted verbatim).
  void CaptureRequest(const std::vector<std::string>& headers, absl::string_view body,
                      const std::string& secret);
  // Records the response body: the 2xx stream or the error body.
  void CaptureResponse(absl::string_view body, const std::string& secret);

  const size_t max_bytes;
  std::string request_headers;  // "Name: value" lines joined by '\n'.
  std::string request_body;
  std::string response_body;
  bool request_truncated = false;
  bool response_truncated = false;
};

struct ModelRequest {
  // The model as the provider names it (never empty: the loop fills the default).
  std::string model;
  std::string system_prompt;
  // The conversation, oldest first: stored history, the user message, and this turn's
  // finished steps. Repaired before it gets here: every tool call has one result.
  std::vector<v1::Message> messages;
  std::vector<ToolSpec> tools;
  // Per-request output cap; 0 means the provider's default.
  uint32_t max_output_tokens = 0;
  std::optional<double> temperature;
  // AgentConfig.provider_options, checked by the provider's CheckConfig().
  std::map<std::string, std::string> options;
  // Where the request stands in the turn: the 0-based step and its 1-based attempt.
  std::string turn_id;
  uint32_t step = 0;
  uint32_t attempt = 1;
  // Where the provider records the request and response it exchanged (null: nowhere).
  BodyCapture* capture = nullptr;
};

// Where a provider streams one step's output, in the order it arrives. Each call
// returns non-OK once the turn must stop (cancel, lost lease, drain, the turn's time
// limit); the provider then returns promptly with whatever it has. Its StopSignal side
// lets a provider wait (WaitFor) or be woken from a blocking read (OnStop).
class StepSink : public StopSignal {
 public:
  virtual absl::Status Text(absl::string_view text) = 0;
  virtual absl::Status Reasoning(absl::string_view text) = 0;
  // Opaque provider data for the reasoning just streamed, to send back with it in
  // later requests (e.g. "anthropic.signature"). Stored on the reasoning part.
  virtual absl::Status ReasoningMetadata(const std::string& key, const std::string& value) = 0;
  // A complete tool call (arguments assembled). call_id is unique within the session.
  virtual absl::Status ToolCall(v1::ToolCall call) = 0;
  // Sends what the calls above may have batched. Providers call it once they have
  // handed over everything that arrived and are about to wait for more.
  virtual absl::Status Flush() = 0;
};

// A step that did not complete.
struct ProviderError {
  // Upstream HTTP status; 0 for transport failures (reset, timeout, malformed stream).
  int status_code = 0;
  // True for 429, 5xx, connection and HTTP/2 stream resets, timeouts.
  bool retryable = false;
  // The server's Retry-After, when it sent one.
  std::optional<absl::Duration> retry_after;
  // Safe to show to developers: never a credential.
  std::string message;
  // Short reason for RetryScheduled, e.g. "rate limited (429)".
  std::string reason;
};

// The error for an HTTP status the server answered with: 408, 409, 429 and 5xx are
// retryable (the request itself was fine), other 4xx are not. `detail` is the server's
// error message, already stripped of anything secret.
ProviderError HttpStatusError(int status_code, absl::string_view detail,
                              std::optional<absl::Duration> retry_after = std::nullopt);
// A transport failure: reset connection, timeout, truncated or malformed stream.
ProviderError TransportError(absl::string_view what, bool retryable = true);

struct StepOutcome {
  // STOP, TOOL_CALLS or MAX_OUTPUT_TOKENS (the provider's per-request cap).
  v1::FinishReason finish_reason = v1::FINISH_REASON_STOP;
  v1::Usage usage;
  // The model that answered, as the provider reported it; empty when it did not.
  std::string response_model;
  // Set when the step failed; the fields above then describe what was streamed.
  std::optional<ProviderError> error;
};

class ModelProvider {
 public:
  virtual ~ModelProvider() = default;
  // The configured name sessions choose it by ("scripted", "openai", "local-vllm").
  virtual const std::string& name() const = 0;
  // The model used when a session names none.
  virtual const std::string& default_model() const = 0;
  // INVALID_ARGUMENT naming the key when `options` has a key this provider does not
  // read or a value it cannot use; also checks `model` against the allowed models.
  virtual absl::Status CheckConfig(const std::string& model,
                                   const std::map<std::string, std::string>& options) const = 0;
  // Whether requests need the session's stored history (a scripted model does not).
  virtual bool needs_history() const { return true; }
  // Tools the provider brings itself, offered besides the session's (the scripted
  // model's own wait tool); built-in tool names.
  virtual std::vector<std::string> own_tools() const { return {}; }
  // Runs one step. Thread-safe.
  virtual StepOutcome Stream(const ModelRequest& request, StepSink& sink) = 0;
};

}  // namespace parley::session::model
