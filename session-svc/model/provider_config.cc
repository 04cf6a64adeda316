// The providers file, and what the HTTP providers share.
#include "session-svc/model/provider_config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/status.h"
#include "session-svc/model/anthropic.h"
#include "session-svc/model/openai.h"
#include "telemetry/log.h"

namespace parley::session::model {
namespace {

using nlohmann::json;

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_')) return false;
  }
  return true;
}

absl::StatusOr<ProviderConfig> ParseEntry(const json& entry, const std::string& where,
                                          const EnvLookup& env) {
  auto field = [&](const char* name) { return absl::StrCat(where, ".", name); };
  auto text = [&](const char* name) -> std::string {
    return entry.contains(name) && entry[name].is_string() ? entry[name].get<std::string>() : "";
  };
  if (!entry.is_object()) return InvalidArgumentError(where, "must be an object");
  ProviderConfig config;
  config.name = text("name");
  config.kind = text("kind");
  config.base_url = std::string(absl::StripSuffix(text("base_url"), "/"));
  config.api_key_env = text("api_key_env");
  config.default_model = text("default_model");
  if (!ValidName(config.name)) {
    return InvalidArgumentError(field("name"), "must be 1 to 64 of [a-z0-9_-]");
  }
  if (config.name == "scripted") {
    return InvalidArgumentError(field("name"), "\"scripted\" is the built-in provider's");
  }
  if (config.kind != "openai" && config.kind != "anthropic") {
    return InvalidArgumentError(field("kind"), "must be openai or anthropic");
  }
  if (!absl::StartsWith(config.base_url, "http://") &&
      !absl::StartsWith(config.base_url, "https://")) {
    return InvalidArgumentError(field("base_url"), "must be an http:// or https:// URL");
  }
  if (config.default_model.empty())
    return InvalidArgumentError(field("default_model"), "is required");
  if (entry.contains("models")) {
    if (!entry["models"].is_array()) return InvalidArgumentError(field("models"), "must be a list");
    for (const json& model : entry["models"]) {
      if (!model.is_string()) return InvalidArgumentError(field("models"), "must hold strings");
      config.models.push_back(model.get<std::string>());
    }
  }
  if (entry.contains("idle_timeout_s") && entry["idle_timeout_s"].is_number_unsigned()) {
    config.idle_timeout = absl::Seconds(entry["idle_timeout_s"].get<int64_t>());
  }
  if (entry.contains("max_tokens") && entry["max_tokens"].is_number_unsigned()) {
    config.default_max_tokens = entry["max_tokens"].get<uint32_t>();
  }
  if (!config.api_key_env.empty()) {
    std::optional<std::string> key = env(config.api_key_env);
    if (!key || key->empty()) {
      return InvalidArgumentError(field("api_key_env"),
                                  absl::StrCat("the variable ", config.api_key_env, " is not set"));
    }
    config.api_key = *std::move(key);
  }
  return config;
}

// The message of an error body ({"error": {"message": ...}} or {"error": "..."}), or the
// body's start.
std::string ErrorBodyMessage(const std::string& body) {
  json parsed = json::parse(body, nullptr, false);
  if (parsed.is_object() && parsed.contains("error")) {
    const json& error = parsed["error"];
    if (error.is_object() && error.contains("message") && error["message"].is_string()) {
      return error["message"].get<std::string>();
    }
    if (error.is_string()) return error.get<std::string>();
  }
  return body.substr(0, 512);
}

}  // namespace

absl::StatusOr<ProvidersFile> ParseProvidersFile(const std::string& text, const EnvLookup& env) {
  json file = json::parse(text, nullptr, false);
  if (!file.is_object()) return InvalidArgumentError("providers file", "is not a JSON object");
  ProvidersFile out;
  if (file.contains("default")) {
    if (!file["default"].is_string()) return InvalidArgumentError("default", "must be a name");
    out.default_provider = file["default"].get<std::string>();
  }
  if (!file.contains("providers") || !file["providers"].is_array()) {
    return InvalidArgumentError("providers", "must be a list");
  }
  for (size_t i = 0; i < file["providers"].size(); ++i) {
    absl::StatusOr<ProviderConfig> config =
        ParseEntry(file["providers"][i], absl::StrCat("providers[", i, "]"), env);
    if (!config.ok()) return config.status();
    for (const ProviderConfig& other : out.providers) {
      if (other.name == config->name) {
        return InvalidArgumentError(absl::StrCat("providers[", i, "].name"), "is a duplicate");
      }
    }
    out.providers.push_back(*std::move(config));
  }
  if (!out.default_provider.empty() && out.default_provider != "scripted") {
    bool found = false;
    for (const ProviderConfig& config : out.providers)
      found = found || config.name == out.default_provider;
    if (!found) return InvalidArgumentError("default", "names no provider of the file");
  }
  return out;
}

absl::StatusOr<ProvidersFile> LoadProvidersFile(const std::string& path, const EnvLookup& env) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the providers file ", path));
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<ProvidersFile> file = ParseProvidersFile(text.str(), env);
  if (!file.ok()) {
    return absl::Status(file.status().code(), absl::StrCat(path, ": ", file.status().message()));
  }
  return file;
}

std::unique_ptr<ModelProvider> MakeProvider(ProviderConfig config) {
  if (config.kind == "anthropic") return std::make_unique<AnthropicProvider>(std::move(config));
  return std::make_unique<OpenAiProvider>(std::move(config));
}

absl::Status CheckModelAllowed(const ProviderConfig& config, const std::string& model) {
  if (config.models.empty()) return absl::OkStatus();
  for (const std::string& allowed : config.models) {
    if (allowed == model) return absl::OkStatus();
  }
  return InvalidArgumentError("agent_config.model",
                              absl::StrCat("is not offered by provider ", config.name, " (",
                                           absl::StrJoin(config.models, ", "), ")"));
}

void RunSseStep(const SseStep& step, StepSink& sink, StepOutcome& outcome) {
  SseParser parser(step.on_event);
  bool malformed = false;
  // The raw stream, kept up to a little past the cap so a key cut by it is still
  // recognised (and redacted) before the cut.
  std::string streamed;
  const size_t keep = step.capture == nullptr ? 0 : step.capture->max_bytes + 256;
  if (step.capture != nullptr) {
    step.capture->CaptureRequest(step.post.headers, step.post.body, step.secret);
  }
  HttpResult http = PostStream(
      step.post,
      [&](absl::string_view bytes) {
        if (streamed.size() < keep)
          absl::StrAppend(&streamed, bytes.substr(0, keep - streamed.size()));
        absl::Status fed = parser.Feed(bytes);
        if (fed.code() == absl::StatusCode::kInvalidArgument) {
          malformed = true;
          outcome.error = TransportError(std::string(fed.message()), /*retryable=*/false);
        }
        // Everything this read brought is handed over: send it before waiting again.
        return fed.ok() && sink.Flush().ok();
      },
      sink);
  if (!http.aborted && !malformed && !outcome.error) {
    if (http.transport_error) {
      outcome.error = TransportError(*http.transport_error, http.transport_retryable);
    } else if (http.status / 100 != 2) {
      outcome.error =
          HttpStatusError(http.status, ErrorBodyMessage(http.error_body), http.retry_after);
    } else {
      step.on_end(parser.pending());
    }
  }
  if (step.capture != nullptr) {
    step.capture->CaptureResponse(http.status / 100 == 2 ? streamed : http.error_body, step.secret);
  }
  if (outcome.error) {
    // Both go out: the message with the failed turn, the reason with RetryScheduled.
    outcome.error->message = telemetry::RedactSecret(outcome.error->message, step.secret);
    outcome.error->reason = telemetry::RedactSecret(outcome.error->reason, step.secret);
  }
}

}  // namespace parley::session::model
