// OpenAiProvider: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM,
// llama.cpp server, Ollama, LiteLLM), streamed.
//
// POST {base_url}/chat/completions with "stream": true and
// "stream_options": {"include_usage": true}; the answer is Server-Sent Events whose
// data are chat.completion.chunk objects, ended by "data: [DONE]". Text comes from
// choices[0].delta.content, reasoning from delta.reasoning_content or delta.reasoning
// (servers differ), tool calls from delta.tool_calls — each call's id and name arrive
// once and its arguments in pieces, keyed by index, several calls interleaved — and
// are handed to the sink complete when the choice finishes. Usage comes in the last
// chunk (prompt_tokens_details.cached_tokens are cache reads).
//
// provider_options: "reasoning_effort" (minimal|low|medium|high), "top_p" (0..1],
// "seed" (integer), "parallel_tool_calls" (true|false), "max_tokens_field"
// (max_tokens, the default, or max_completion_tokens for OpenAI's reasoning models).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "session-svc/model/provider_config.h"

namespace parley::session::model {

class OpenAiProvider final : public ModelProvider {
 public:
  explicit OpenAiProvider(ProviderConfig config) : config_(std::move(config)) {}

  const std::string& name() const override { return config_.name; }
  const std::string& default_model() const override { return config_.default_model; }
  absl::Status CheckConfig(const std::string& model,
                           const std::map<std::string, std::string>& options) const override;
  StepOutcome Stream(const ModelRequest& request, StepSink& sink) override;

  // The request body for `request` (exposed for tests).
  static nlohmann::json RequestBody(const ModelRequest& request);

 private:
  const ProviderConfig config_;
};

}  // namespace parley::session::model
