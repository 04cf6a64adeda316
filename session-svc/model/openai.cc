// Chat completions: the conversation as OpenAI messages, then the chunk stream folded
// into sink calls. Tool calls are held until their choice finishes, because a call's
// arguments arrive in pieces and the sink takes only complete calls.
#include "session-svc/model/openai.h"

#include <map>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "session-svc/model/http_stream.h"
#include "session-svc/model/sse.h"

namespace parley::session::model {
namespace {

using nlohmann::json;

// A user or system message's content: a plain string when it is only text (what every
// compatible server accepts), else content parts.
json UserContent(const v1::Message& message) {
  bool only_text = true;
  std::string text;
  json parts = json::array();
  for (const v1::Part& part : message.parts()) {
    switch (part.kind_case()) {
      case v1::Part::kText:
        text += part.text();
        parts.push_back({{"type", "text"}, {"text", part.text()}});
        break;
      case v1::Part::kImage: {
        only_text = false;
        const v1::FileRef& image = part.image();
        const std::string url = image.has_uri()
                                    ? image.uri()
                                    : absl::StrCat("data:", image.mime_type(), ";base64,",
                                                   absl::Base64Escape(image.data()));
        parts.push_back({{"type", "image_url"}, {"image_url", {{"url", url}}}});
        break;
      }
      case v1::Part::kFile: {
        const std::string note = absl::StrCat("[attached file ", part.file().name(), " (",
                                              part.file().mime_type(), ") is not shown]");
        text += note;
        parts.push_back({{"type", "text"}, {"text", note}});
        break;
      }
      default:
        break;
    }
  }
  return only_text ? json(text) : parts;
}

json Messages(const ModelRequest& request) {
  json messages = json::array();
  if (!request.system_prompt.empty()) {
    messages.push_back({{"role", "system"}, {"content", request.system_prompt}});
  }
  for (const v1::Message& message : request.messages) {
    switch (message.role()) {
      case v1::ROLE_USER:
      case v1::ROLE_SYSTEM:
        messages.push_back({{"role", message.role() == v1::ROLE_USER ? "user" : "system"},
                            {"content", UserContent(message)}});
        break;
      case v1::ROLE_ASSISTANT: {
        std::string text;
        json calls = json::array();
        for (const v1::Part& part : message.parts()) {
          if (part.kind_case() == v1::Part::kText) text += part.text();
          if (part.has_tool_call()) {
            calls.push_back({{"id", part.tool_call().call_id()},
                             {"type", "function"},
                             {"function",
                              {{"name", part.tool_call().name()},
                               {"arguments", part.tool_call().arguments_json()}}}});
          }
        }
        json out = {{"role", "assistant"}, {"content", text.empty() ? json() : json(text)}};
        if (!calls.empty()) out["tool_calls"] = std::move(calls);
        // A step that produced only reasoning has nothing to send back.
        if (!text.empty() || out.contains("tool_calls")) messages.push_back(std::move(out));
        break;
      }
      case v1::ROLE_TOOL:
        for (const v1::Part& part : message.parts()) {
          if (!part.has_tool_result()) continue;
          messages.push_back({{"role", "tool"},
                              {"tool_call_id", part.tool_result().call_id()},
                              {"content", part.tool_result().output()}});
        }
        break;
      default:
        break;
    }
  }
  return messages;
}

v1::FinishReason FinishReasonOf(const std::string& reason) {
  if (reason == "tool_calls" || reason == "function_call") return v1::FINISH_REASON_TOOL_CALLS;
  if (reason == "length") return v1::FINISH_REASON_MAX_OUTPUT_TOKENS;
  return v1::FINISH_REASON_STOP;
}

// The chunk stream of one request, folded into sink calls.
class ChunkReader {
 public:
  ChunkReader(const ModelRequest& request, StepSink& sink, StepOutcome& outcome)
      : request_(request), sink_(sink), outcome_(outcome) {}

  // One SSE event; false to stop reading.
  bool OnEvent(const SseEvent& event) {
    if (event.data == "[DONE]") {
      done_ = true;
      return Flush();
    }
    json chunk = json::parse(event.data, nullptr, false);
    if (!chunk.is_object()) return Fail("a chunk is not JSON");
    if (chunk.contains("error")) {
      const json& error = chunk["error"];
      const std::string message =
          error.is_object() ? error.value("message", error.dump()) : error.dump();
      outcome_.error = TransportError(absl::StrCat("the server reported: ", message),
                                      /*retryable=*/true);
      return false;
    }
    if (chunk.contains("model") && chunk["model"].is_string()) {
      outcome_.response_model = chunk["model"].get<std::string>();
    }
    if (chunk.contains("usage") && chunk["usage"].is_object()) ReadUsage(chunk["usage"]);
    if (!chunk.contains("choices") || !chunk["choices"].is_array() || chunk["choices"].empty()) {
      return true;
    }
    const json& choice = chunk["choices"][0];
    if (choice.contains("delta") && choice["delta"].is_object() && !ReadDelta(choice["delta"])) {
      return false;
    }
    if (choice.contains("finish_reason") && choice["finish_reason"].is_string()) {
      finished_ = true;
      outcome_.finish_reason = FinishReasonOf(choice["finish_reason"].get<std::string>());
      return Flush();
    }
    return true;
  }

  // After the body ended: what is still owed.
  void Finish(bool truncated_event) {
    if (outcome_.error || sink_.stopping()) return;
    if (truncated_event || (!done_ && !finished_)) {
      outcome_.error = TransportError("the stream ended before the model finished");
      return;
    }
    Flush();
  }

 private:
  struct PendingCall {
    std::string id, name, arguments;
  };

  bool Fail(const std::string& what) {
    outcome_.error = TransportError(absl::StrCat("malformed stream: ", what), /*retryable=*/false);
    return false;
  }

  bool Emit(const absl::Status& status) { return status.ok(); }

  bool ReadDelta(const json& delta) {
    for (const char* field : {"reasoning_content", "reasoning"}) {
      if (delta.contains(field) && delta[field].is_string() &&
          !delta[field].get_ref<const std::string&>().empty()) {
        if (!Emit(sink_.Reasoning(delta[field].get<std::string>()))) return false;
        break;
      }
    }
    if (delta.contains("content") && delta["content"].is_string() &&
        !delta["content"].get_ref<const std::string&>().empty()) {
      if (!Emit(sink_.Text(delta["content"].get<std::string>()))) return false;
    }
    if (delta.contains("tool_calls") && delta["tool_calls"].is_array()) {
      for (const json& piece : delta["tool_calls"]) {
        if (!piece.is_object()) return Fail("a tool call piece is not an object");
        const int index = piece.value("index", static_cast<int>(calls_.size()));
        PendingCall& call = calls_[index];
        if (piece.contains("id") && piece["id"].is_string()) call.id = piece["id"];
        if (piece.contains("function") && piece["function"].is_object()) {
          const json& function = piece["function"];
          if (function.contains("name") && function["name"].is_string()) {
            call.name += function["name"].get<std::string>();
          }
          if (function.contains("arguments") && function["arguments"].is_string()) {
            call.arguments += function["arguments"].get<std::string>();
          }
        }
      }
    }
    return true;
  }

  void ReadUsage(const json& usage) {
    const uint64_t prompt = usage.value("prompt_tokens", uint64_t{0});
    uint64_t cached = 0;
    if (usage.contains("prompt_tokens_details") && usage["prompt_tokens_details"].is_object()) {
      cached = usage["prompt_tokens_details"].value("cached_tokens", uint64_t{0});
    }
    outcome_.usage.set_input_tokens(prompt - std::min(prompt, cached));
    outcome_.usage.set_cache_read_tokens(cached);
    outcome_.usage.set_output_tokens(usage.value("completion_tokens", uint64_t{0}));
  }

  // Hands the assembled tool calls to the sink, in index order, once.
  bool Flush() {
    for (auto& [index, call] : calls_) {
      v1::ToolCall out;
      out.set_call_id(call.id.empty()
                          ? absl::StrCat("call_", request_.turn_id, "_", request_.step, "_", index)
                          : call.id);
      out.set_name(call.name);
      out.set_arguments_json(call.arguments.empty() ? "{}" : call.arguments);
      if (!Emit(sink_.ToolCall(std::move(out)))) return false;
    }
    calls_.clear();
    return true;
  }

  const ModelRequest& request_;
  StepSink& sink_;
  StepOutcome& outcome_;
  std::map<int, PendingCall> calls_;
  bool done_ = false;
  bool finished_ = false;
};

}  // namespace

json OpenAiProvider::RequestBody(const ModelRequest& request) {
  json body = {{"model", request.model},
               {"messages", Messages(request)},
               {"stream", true},
               {"stream_options", {{"include_usage", true}}}};
  if (!request.tools.empty()) {
    json tools = json::array();
    for (const ToolSpec& tool : request.tools) {
      tools.push_back({{"type", "function"},
                       {"function",
                        {{"name", tool.name},
                         {"description", tool.description},
                         {"parameters", json::parse(tool.parameters_json_schema)}}}});
    }
    body["tools"] = std::move(tools);
  }
  auto option = [&](const char* key) -> const std::string* {
    auto it = request.options.find(key);
    return it == request.options.end() ? nullptr : &it->second;
  };
  if (request.max_output_tokens > 0) {
    const std::string* field = option("max_tokens_field");
    body[field != nullptr ? *field : "max_tokens"] = request.max_output_tokens;
  }
  if (request.temperature) body["temperature"] = *request.temperature;
  if (const std::string* effort = option("reasoning_effort")) body["reasoning_effort"] = *effort;
  double number = 0;
  int64_t integer = 0;
  if (const std::string* top_p = option("top_p"); top_p && absl::SimpleAtod(*top_p, &number)) {
    body["top_p"] = number;
  }
  if (const std::string* seed = option("seed"); seed && absl::SimpleAtoi(*seed, &integer)) {
    body["seed"] = integer;
  }
  if (const std::string* parallel = option("parallel_tool_calls");
      parallel && !request.tools.empty()) {
    body["parallel_tool_calls"] = *parallel == "true";
  }
  return body;
}

absl::Status OpenAiProvider::CheckConfig(const std::string& model,
                                         const std::map<std::string, std::string>& options) const {
  if (absl::Status allowed = CheckModelAllowed(config_, model); !allowed.ok()) return allowed;
  for (const auto& [key, value] : options) {
    const std::string field = absl::StrCat("agent_config.provider_options[", key, "]");
    double number = 0;
    int64_t integer = 0;
    if (key == "reasoning_effort") {
      if (value != "minimal" && value != "low" && value != "medium" && value != "high") {
        return InvalidArgumentError(field, "must be minimal, low, medium or high");
      }
    } else if (key == "top_p") {
      if (!absl::SimpleAtod(value, &number) || number <= 0 || number > 1) {
        return InvalidArgumentError(field, "must be a number in (0, 1]");
      }
    } else if (key == "seed") {
      if (!absl::SimpleAtoi(value, &integer))
        return InvalidArgumentError(field, "must be an integer");
    } else if (key == "parallel_tool_calls") {
      if (value != "true" && value != "false")
        return InvalidArgumentError(field, "must be true or false");
    } else if (key == "max_tokens_field") {
      if (value != "max_tokens" && value != "max_completion_tokens") {
        return InvalidArgumentError(field, "must be max_tokens or max_completion_tokens");
      }
    } else {
      return InvalidArgumentError(
          field,
          "is not an option of this provider (reasoning_effort, top_p, seed, "
          "parallel_tool_calls, max_tokens_field)");
    }
  }
  return absl::OkStatus();
}

StepOutcome OpenAiProvider::Stream(const ModelRequest& request, StepSink& sink) {
  StepOutcome outcome;
  HttpPost post{.url = absl::StrCat(config_.base_url, "/chat/completions"),
                .headers = {"Content-Type: application/json", "Accept: text/event-stream"},
                .body = RequestBody(request).dump(),
                .connect_timeout = config_.connect_timeout,
                .idle_timeout = config_.idle_timeout};
  if (!config_.api_key.empty()) {
    post.headers.push_back(absl::StrCat("Authorization: Bearer ", config_.api_key));
  }
  ChunkReader reader(request, sink, outcome);
  RunSseStep({.post = std::move(post),
              .on_event = [&](const SseEvent& event) { return reader.OnEvent(event); },
              .on_end = [&](bool truncated) { reader.Finish(truncated); },
              .secret = config_.api_key,
              .capture = request.capture},
             sink, outcome);
  return outcome;
}

}  // namespace parley::session::model
