// AnthropicProvider: the Anthropic Messages API, streamed.
//
// POST {base_url}/v1/messages with "stream": true (headers x-api-key and
// anthropic-version: 2023-06-01). The answer is Server-Sent Events: message_start
// (input usage, cache read and write tokens), then content blocks — each a
// content_block_start, its content_block_delta pieces (text_delta, thinking_delta,
// signature_delta, input_json_delta for a tool_use block's arguments) and a
// content_block_stop — then message_delta (stop_reason, output tokens) and
// message_stop; ping events keep the connection alive and an error event ends it.
// A tool_use block is handed to the sink when it stops (its JSON complete); a thinking
// block's signature is kept on the stored reasoning part ("anthropic.signature") and
// sent back with it, as the API requires for tool use with thinking.
//
// The conversation is mapped to the API's strict shape: roles alternate (consecutive
// messages of one role are merged), tool results travel in a user message, the system
// prompt is the top-level "system".
//
// provider_options: "thinking_budget_tokens" (>= 1024: extended thinking), "top_p",
// "top_k".
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "session-svc/model/provider_config.h"

namespace parley::session::model {

class AnthropicProvider final : public ModelProvider {
 public:
  // The signature of a thinking block, on its stored reasoning part.
  static constexpr char kSignatureKey[] = "anthropic.signature";
  // The data of a redacted thinking block (stored as a reasoning part with no text).
  static constexpr char kRedactedKey[] = "anthropic.redacted_thinking";

  explicit AnthropicProvider(ProviderConfig config) : config_(std::move(config)) {}

  const std::string& name() const override { return config_.name; }
  const std::string& default_model() const override { return config_.default_model; }
  absl::Status CheckConfig(const std::string& model,
                           const std::map<std::string, std::string>& options) const override;
  StepOutcome Stream(const ModelRequest& request, StepSink& sink) override;

  // The request body for `request` (exposed for tests).
  static nlohmann::json RequestBody(const ModelRequest& request, uint32_t default_max_tokens);

 private:
  const ProviderConfig config_;
};

}  // namespace parley::session::model
