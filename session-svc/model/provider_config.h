// ProviderConfig: how one model provider is reached, and the providers file that lists
// them (--providers_file; format in session-svc/README.md, "Model providers").
//
//   absl::StatusOr<ProvidersFile> file = LoadProvidersFile(path, env);  // env: an EnvLookup
//   for (const ProviderConfig& c : file->providers) registry.Add(MakeProvider(c));
//
// The API key is read from the environment variable the file names, once at start; it
// lives only in the provider object and the request headers, never in a log line, an
// event, an error or a session.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "session-svc/model/http_stream.h"
#include "session-svc/model/model.h"
#include "session-svc/model/sse.h"

namespace parley::session::model {

struct ProviderConfig {
  std::string name;  // What sessions choose it by: [a-z0-9_-]{1,64}.
  std::string kind;  // "openai" or "anthropic".
  std::string base_url;
  std::string api_key_env;  // Empty: no key (a local server).
  std::string api_key;      // Resolved from api_key_env. Secret.
  std::string default_model;
  std::vector<std::string> models;  // Allowed models; empty means any.
  absl::Duration connect_timeout = absl::Seconds(10);
  absl::Duration idle_timeout = absl::Minutes(2);
  // Anthropic requires max_tokens on every request: used when the session sets none.
  uint32_t default_max_tokens = 4096;
};

struct ProvidersFile {
  std::string default_provider;  // Empty: "scripted".
  std::vector<ProviderConfig> providers;
};

// Reads an environment variable; nullopt when it is not set.
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;

// Parses the providers file. INVALID_ARGUMENT naming the entry and field for anything
// wrong: unknown kind, bad name, missing base_url, a key variable that is not set.
absl::StatusOr<ProvidersFile> ParseProvidersFile(const std::string& json, const EnvLookup& env);
absl::StatusOr<ProvidersFile> LoadProvidersFile(const std::string& path, const EnvLookup& env);

// The provider for `config` (its kind's implementation).
std::unique_ptr<ModelProvider> MakeProvider(ProviderConfig config);

// Shared by the HTTP providers: `model` against the allowed list.
absl::Status CheckModelAllowed(const ProviderConfig& config, const std::string& model);

// One streamed step over HTTP and SSE, as both wire formats run it: POST `post`, feed
// the 2xx body's events to `on_event` (false stops), flush the sink after each read.
// Then `on_end(truncated)` judges a body that ended normally; a non-2xx answer becomes
// HttpStatusError with the body's {"error": {"message": ...}} (the shape both APIs use),
// a transport failure TransportError. The message and the reason of `outcome.error`
// have `secret` redacted. With `capture`, the request and the response body (the 2xx
// stream's first bytes or the error body) are recorded there, redacted.
struct SseStep {
  HttpPost post;
  std::function<bool(const SseEvent&)> on_event;
  std::function<void(bool truncated)> on_end;
  std::string secret;
  BodyCapture* capture = nullptr;
};
void RunSseStep(const SseStep& step, StepSink& sink, StepOutcome& outcome);

}  // namespace parley::session::model
