// Messages API: the conversation as alternating user/assistant content blocks, then the
// event stream folded into sink calls, one content block at a time.
#include "session-svc/model/anthropic.h"

#include <map>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "session-svc/model/http_stream.h"
#include "session-svc/model/sse.h"

namespace parley::session::model {
namespace {

using nlohmann::json;

// Appends `blocks` as a message of `role`, merged into the previous message when it has
// the same role (the API wants strict alternation).
void AddMessage(json& messages, const std::string& role, json blocks) {
  if (blocks.empty()) return;
  if (!messages.empty() && messages.back()["role"] == role) {
    for (json& block : blocks) messages.back()["content"].push_back(std::move(block));
    return;
  }
  messages.push_back({{"role", role}, {"content", std::move(blocks)}});
}

json ImageBlock(const v1::FileRef& image) {
  if (image.has_uri())
    return {{"type", "image"}, {"source", {{"type", "url"}, {"url", image.uri()}}}};
  return {{"type", "image"},
          {"source",
           {{"type", "base64"},
            {"media_type", image.mime_type()},
            {"data", absl::Base64Escape(image.data())}}}};
}

json Messages(const ModelRequest& request) {
  json messages = json::array();
  for (const v1::Message& message : request.messages) {
    json blocks = json::array();
    switch (message.role()) {
      case v1::ROLE_USER:
      case v1::ROLE_SYSTEM:
        for (const v1::Part& part : message.parts()) {
          if (part.kind_case() == v1::Part::kText && !part.text().empty()) {
            blocks.push_back({{"type", "text"}, {"text", part.text()}});
          } else if (part.has_image()) {
            blocks.push_back(ImageBlock(part.image()));
          } else if (part.has_file()) {
            blocks.push_back({{"type", "text"},
                              {"text", absl::StrCat("[attached file ", part.file().name(), " (",
                                                    part.file().mime_type(), ") is not shown]")}});
          }
        }
        AddMessage(messages, "user", std::move(blocks));
        break;
      case v1::ROLE_ASSISTANT:
        for (const v1::Part& part : message.parts()) {
          const auto& metadata = part.provider_metadata();
          if (part.kind_case() == v1::Part::kReasoning) {
            if (auto it = metadata.find(AnthropicProvider::kRedactedKey); it != metadata.end()) {
              blocks.push_back({{"type", "redacted_thinking"}, {"data", it->second}});
            } else if (auto sig = metadata.find(AnthropicProvider::kSignatureKey);
                       sig != metadata.end()) {
              // Thinking goes back only with its signature; unsigned thinking (another
              // provider's) cannot be verified and is left out.
              blocks.push_back({{"type", "thinking"},
                                {"thinking", part.reasoning()},
                                {"signature", sig->second}});
            }
          } else if (part.kind_case() == v1::Part::kText && !part.text().empty()) {
            blocks.push_back({{"type", "text"}, {"text", part.text()}});
          } else if (part.has_tool_call()) {
            json input = json::parse(part.tool_call().arguments_json(), nullptr, false);
            if (!input.is_object()) input = json::object();
            blocks.push_back({{"type", "tool_use"},
                              {"id", part.tool_call().call_id()},
                              {"name", part.tool_call().name()},
                              {"input", std::move(input)}});
          }
        }
        AddMessage(messages, "assistant", std::move(blocks));
        break;
      case v1::ROLE_TOOL:
        for (const v1::Part& part : message.parts()) {
          if (!part.has_tool_result()) continue;
          blocks.push_back({{"type", "tool_result"},
                            {"tool_use_id", part.tool_result().call_id()},
                            {"content", part.tool_result().output()},
                            {"is_error", part.tool_result().is_error()}});
        }
        AddMessage(messages, "user", std::move(blocks));
        break;
      default:
        break;
    }
  }
  return messages;
}

v1::FinishReason FinishReasonOf(const std::string& reason) {
  if (reason == "tool_use") return v1::FINISH_REASON_TOOL_CALLS;
  if (reason == "max_tokens") return v1::FINISH_REASON_MAX_OUTPUT_TOKENS;
  return v1::FINISH_REASON_STOP;
}

// The event stream of one request, folded into sink calls.
class EventReader {
 public:
  EventReader(StepSink& sink, StepOutcome& outcome) : sink_(sink), outcome_(outcome) {}

  bool OnEvent(const SseEvent& event) {
    json data = json::parse(event.data, nullptr, false);
    if (!data.is_object()) return Fail("an event is not JSON");
    const std::string type = data.value("type", event.event);
    if (type == "message_start") {
      if (data.contains("message") && data["message"].is_object()) {
        const json& message = data["message"];
        if (message.contains("model") && message["model"].is_string()) {
          outcome_.response_model = message["model"];
        }
        if (message.contains("usage")) ReadUsage(message["usage"]);
      }
    } else if (type == "content_block_start") {
      return StartBlock(data);
    } else if (type == "content_block_delta") {
      return Delta(data);
    } else if (type == "content_block_stop") {
      return StopBlock();
    } else if (type == "message_delta") {
      if (data.contains("delta") && data["delta"].is_object() &&
          data["delta"].contains("stop_reason") && data["delta"]["stop_reason"].is_string()) {
        outcome_.finish_reason = FinishReasonOf(data["delta"]["stop_reason"]);
      }
      if (data.contains("usage")) ReadUsage(data["usage"]);
    } else if (type == "message_stop") {
      stopped_ = true;
    } else if (type == "error") {
      const json& error = data.contains("error") ? data["error"] : data;
      const std::string kind = error.is_object() ? error.value("type", "") : "";
      const std::string message =
          error.is_object() ? error.value("message", error.dump()) : error.dump();
      // Overloaded and API errors mid-stream are the server's trouble: retryable.
      outcome_.error = TransportError(absl::StrCat("the server reported ", kind, ": ", message),
                                      kind != "invalid_request_error");
      return false;
    }
    return true;  // ping and event types newer than this code.
  }

  void Finish(bool truncated_event) {
    if (outcome_.error || sink_.stopping()) return;
    if (truncated_event || !stopped_) {
      outcome_.error = TransportError("the stream ended before the model finished");
    }
  }

 private:
  enum class Block { kNone, kText, kThinking, kRedacted, kToolUse };

  bool Fail(const std::string& what) {
    outcome_.error = TransportError(absl::StrCat("malformed stream: ", what), /*retryable=*/false);
    return false;
  }

  bool StartBlock(const json& data) {
    if (!data.contains("content_block") || !data["content_block"].is_object()) {
      return Fail("content_block_start without a block");
    }
    const json& block = data["content_block"];
    const std::string type = block.value("type", "");
    block_ = Block::kNone;
    if (type == "text") {
      block_ = Block::kText;
      if (block.contains("text") && block["text"].is_string() &&
          !block["text"].get_ref<const std::string&>().empty()) {
        return sink_.Text(block["text"].get<std::string>()).ok();
      }
    } else if (type == "thinking") {
      block_ = Block::kThinking;
      signature_.clear();
    } else if (type == "redacted_thinking") {
      block_ = Block::kRedacted;
      redacted_ = block.value("data", "");
    } else if (type == "tool_use") {
      block_ = Block::kToolUse;
      call_ = v1::ToolCall();
      call_.set_call_id(block.value("id", ""));
      call_.set_name(block.value("name", ""));
      arguments_.clear();
    }
    return true;
  }

  bool Delta(const json& data) {
    if (!data.contains("delta") || !data["delta"].is_object())
      return Fail("a delta without content");
    const json& delta = data["delta"];
    const std::string type = delta.value("type", "");
    if (type == "text_delta" && delta.contains("text") && delta["text"].is_string()) {
      return sink_.Text(delta["text"].get<std::string>()).ok();
    }
    if (type == "thinking_delta" && delta.contains("thinking") && delta["thinking"].is_string()) {
      return sink_.Reasoning(delta["thinking"].get<std::string>()).ok();
    }
    if (type == "signature_delta" && delta.contains("signature") &&
        delta["signature"].is_string()) {
      signature_ += delta["signature"].get<std::string>();
    } else if (type == "input_json_delta" && delta.contains("partial_json") &&
               delta["partial_json"].is_string()) {
      arguments_ += delta["partial_json"].get<std::string>();
    }
    return true;
  }

  bool StopBlock() {
    const Block block = block_;
    block_ = Block::kNone;
    switch (block) {
      case Block::kThinking:
        return signature_.empty() ||
               sink_.ReasoningMetadata(AnthropicProvider::kSignatureKey, signature_).ok();
      case Block::kRedacted:
        return sink_.ReasoningMetadata(AnthropicProvider::kRedactedKey, redacted_).ok();
      case Block::kToolUse:
        call_.set_arguments_json(arguments_.empty() ? "{}" : arguments_);
        return sink_.ToolCall(std::move(call_)).ok();
      default:
        return true;
    }
  }

  void ReadUsage(const json& usage) {
    if (!usage.is_object()) return;
    auto set = [&](const char* key, auto setter) {
      if (usage.contains(key) && usage[key].is_number_unsigned()) {
        (outcome_.usage.*setter)(usage[key].get<uint64_t>());
      }
    };
    set("input_tokens", &v1::Usage::set_input_tokens);
    set("output_tokens", &v1::Usage::set_output_tokens);
    set("cache_read_input_tokens", &v1::Usage::set_cache_read_tokens);
    set("cache_creation_input_tokens", &v1::Usage::set_cache_write_tokens);
  }

  StepSink& sink_;
  StepOutcome& outcome_;
  Block block_ = Block::kNone;
  v1::ToolCall call_;
  std::string arguments_;
  std::string signature_;
  std::string redacted_;
  bool stopped_ = false;
};

}  // namespace

json AnthropicProvider::RequestBody(const ModelRequest& request, uint32_t default_max_tokens) {
  json body = {{"model", request.model},
               {"messages", Messages(request)},
               {"max_tokens",
                request.max_output_tokens > 0 ? request.max_output_tokens : default_max_tokens},
               {"stream", true}};
  if (!request.system_prompt.empty()) body["system"] = request.system_prompt;
  if (!request.tools.empty()) {
    json tools = json::array();
    for (const ToolSpec& tool : request.tools) {
      tools.push_back({{"name", tool.name},
                       {"description", tool.description},
                       {"input_schema", json::parse(tool.parameters_json_schema)}});
    }
    body["tools"] = std::move(tools);
  }
  if (request.temperature) body["temperature"] = *request.temperature;
  int64_t integer = 0;
  double number = 0;
  if (auto it = request.options.find("thinking_budget_tokens");
      it != request.options.end() && absl::SimpleAtoi(it->second, &integer)) {
    body["thinking"] = {{"type", "enabled"}, {"budget_tokens", integer}};
    // The budget counts toward max_tokens, which must exceed it.
    if (body["max_tokens"].get<int64_t>() <= integer)
      body["max_tokens"] = integer + default_max_tokens;
  }
  if (auto it = request.options.find("top_p");
      it != request.options.end() && absl::SimpleAtod(it->second, &number)) {
    body["top_p"] = number;
  }
  if (auto it = request.options.find("top_k");
      it != request.options.end() && absl::SimpleAtoi(it->second, &integer)) {
    body["top_k"] = integer;
  }
  return body;
}

absl::Status AnthropicProvider::CheckConfig(
    const std::string& model, const std::map<std::string, std::string>& options) const {
  if (absl::Status allowed = CheckModelAllowed(config_, model); !allowed.ok()) return allowed;
  for (const auto& [key, value] : options) {
    const std::string field = absl::StrCat("agent_config.provider_options[", key, "]");
    int64_t integer = 0;
    double number = 0;
    if (key == "thinking_budget_tokens") {
      if (!absl::SimpleAtoi(value, &integer) || integer < 1024) {
        return InvalidArgumentError(field, "must be an integer of at least 1024");
      }
    } else if (key == "top_p") {
      if (!absl::SimpleAtod(value, &number) || number <= 0 || number > 1) {
        return InvalidArgumentError(field, "must be a number in (0, 1]");
      }
    } else if (key == "top_k") {
      if (!absl::SimpleAtoi(value, &integer) || integer < 1) {
        return InvalidArgumentError(field, "must be a positive integer");
      }
    } else {
      return InvalidArgumentError(
          field, "is not an option of this provider (thinking_budget_tokens, top_p, top_k)");
    }
  }
  return absl::OkStatus();
}

StepOutcome AnthropicProvider::Stream(const ModelRequest& request, StepSink& sink) {
  StepOutcome outcome;
  HttpPost post{.url = absl::StrCat(config_.base_url, "/v1/messages"),
                .headers = {"Content-Type: application/json", "Accept: text/event-stream",
                            "anthropic-version: 2023-06-01"},
                .body = RequestBody(request, config_.default_max_tokens).dump(),
                .connect_timeout = config_.connect_timeout,
                .idle_timeout = config_.idle_timeout};
  if (!config_.api_key.empty())
    post.headers.push_back(absl::StrCat("x-api-key: ", config_.api_key));
  EventReader reader(sink, outcome);
  RunSseStep({.post = std::move(post),
              .on_event = [&](const SseEvent& event) { return reader.OnEvent(event); },
              .on_end = [&](bool truncated) { reader.Finish(truncated); },
              .secret = config_.api_key,
              .capture = request.capture},
             sink, outcome);
  return outcome;
}

}  // namespace parley::session::model
