#include "telemetry/otel_config.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace parley::telemetry {
namespace {

using Env = std::map<std::string, std::string, std::less<>>;

absl::string_view Get(const Env& env, absl::string_view name) {
  auto it = env.find(name);
  return it == env.end() ? absl::string_view() : absl::StripAsciiWhitespace(it->second);
}

// The signal-specific variable wins over the general one.
std::pair<std::string, absl::string_view> GetTracesOrGeneral(const Env& env,
                                                             absl::string_view suffix) {
  std::string traces = absl::StrCat("OTEL_EXPORTER_OTLP_TRACES_", suffix);
  if (!Get(env, traces).empty()) return {traces, Get(env, traces)};
  std::string general = absl::StrCat("OTEL_EXPORTER_OTLP_", suffix);
  return {general, Get(env, general)};
}

absl::StatusOr<std::string> PercentDecode(absl::string_view variable, absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out.push_back(text[i]);
      continue;
    }
    int value = 0;
    if (i + 2 >= text.size() || !absl::ascii_isxdigit(text[i + 1]) ||
        !absl::ascii_isxdigit(text[i + 2]) || !absl::SimpleHexAtoi(text.substr(i + 1, 2), &value)) {
      return absl::InvalidArgumentError(
          absl::StrCat(variable, ": bad percent-encoding in \"", text, "\""));
    }
    out.push_back(static_cast<char>(value));
    i += 2;
  }
  return out;
}

// A positive integer variable; `target` is left alone when the variable is unset.
template <typename T>
absl::Status ReadPositive(const Env& env, absl::string_view name, T& target) {
  absl::string_view text = Get(env, name);
  if (text.empty()) return absl::OkStatus();
  int64_t value = 0;
  if (!absl::SimpleAtoi(text, &value) || value <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": expected a positive integer, got \"", text, "\""));
  }
  target = static_cast<T>(value);
  return absl::OkStatus();
}

absl::Status ReadMillis(const Env& env, absl::string_view name, absl::Duration& target) {
  int64_t millis = 0;
  if (Get(env, name).empty()) return absl::OkStatus();
  if (absl::Status status = ReadPositive(env, name, millis); !status.ok()) return status;
  target = absl::Milliseconds(millis);
  return absl::OkStatus();
}

absl::StatusOr<std::string> TracesUrl(const Env& env) {
  std::string variable = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
  std::string url(Get(env, variable));
  if (url.empty()) {
    variable = "OTEL_EXPORTER_OTLP_ENDPOINT";
    absl::string_view base = Get(env, variable);
    if (base.empty()) return std::string();
    url = absl::StrCat(absl::StripSuffix(base, "/"), "/v1/traces");
  }
  if (!absl::StartsWith(url, "http://") && !absl::StartsWith(url, "https://")) {
    return absl::InvalidArgumentError(
        absl::StrCat(variable, ": expected an http:// or https:// URL, got \"", url, "\""));
  }
  return url;
}

}  // namespace

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseOtelKeyValueList(
    absl::string_view variable, absl::string_view text) {
  std::vector<std::pair<std::string, std::string>> out;
  for (absl::string_view entry : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    size_t eq = entry.find('=');
    absl::string_view key = absl::StripAsciiWhitespace(entry.substr(0, std::min(eq, entry.size())));
    if (eq == absl::string_view::npos || key.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          variable, ": expected key=value pairs separated by commas, got \"", entry, "\""));
    }
    absl::StatusOr<std::string> value =
        PercentDecode(variable, absl::StripAsciiWhitespace(entry.substr(eq + 1)));
    if (!value.ok()) return value.status();
    out.emplace_back(std::string(key), *std::move(value));
  }
  return out;
}

absl::StatusOr<TracingConfig> TracingConfigFromEnv(const Env& env,
                                                   absl::string_view default_service_name) {
  TracingConfig config;
  absl::string_view disabled = Get(env, "OTEL_SDK_DISABLED");
  if (!disabled.empty() && !absl::EqualsIgnoreCase(disabled, "false")) {
    if (!absl::EqualsIgnoreCase(disabled, "true")) {
      return absl::InvalidArgumentError(
          absl::StrCat("OTEL_SDK_DISABLED: expected true or false, got \"", disabled, "\""));
    }
    config.enabled = false;
  }

  absl::StatusOr<Sampler> sampler =
      Sampler::FromOtelEnv(Get(env, "OTEL_TRACES_SAMPLER"), Get(env, "OTEL_TRACES_SAMPLER_ARG"));
  if (!sampler.ok()) return sampler.status();
  config.sampler = *sampler;

  OtlpExporterOptions& exporter = config.exporter;
  absl::StatusOr<std::string> url = TracesUrl(env);
  if (!url.ok()) return url.status();
  exporter.traces_url = *std::move(url);

  auto [protocol_variable, protocol] = GetTracesOrGeneral(env, "PROTOCOL");
  if (!protocol.empty() && protocol != "http/json") {
    return absl::InvalidArgumentError(
        absl::StrCat(protocol_variable, ": only http/json is supported, got \"", protocol, "\""));
  }
  auto [headers_variable, headers] = GetTracesOrGeneral(env, "HEADERS");
  auto parsed_headers = ParseOtelKeyValueList(headers_variable, headers);
  if (!parsed_headers.ok()) return parsed_headers.status();
  exporter.headers = *std::move(parsed_headers);

  auto resource =
      ParseOtelKeyValueList("OTEL_RESOURCE_ATTRIBUTES", Get(env, "OTEL_RESOURCE_ATTRIBUTES"));
  if (!resource.ok()) return resource.status();
  for (auto& [key, value] : *resource) exporter.resource[key] = std::move(value);
  absl::string_view service_name = Get(env, "OTEL_SERVICE_NAME");
  if (!service_name.empty()) {
    exporter.resource["service.name"] = std::string(service_name);
  } else if (!exporter.resource.contains("service.name") && !default_service_name.empty()) {
    exporter.resource["service.name"] = std::string(default_service_name);
  }
  exporter.resource["telemetry.sdk.name"] = "parley";
  exporter.resource["telemetry.sdk.language"] = "cpp";

  const std::string timeout_variable = GetTracesOrGeneral(env, "TIMEOUT").first;
  for (absl::Status status : {
           ReadMillis(env, timeout_variable, exporter.export_timeout),
           ReadMillis(env, "OTEL_BSP_SCHEDULE_DELAY", exporter.schedule_delay),
           ReadPositive(env, "OTEL_BSP_MAX_QUEUE_SIZE", exporter.max_queue_size),
           ReadPositive(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", exporter.max_export_batch_size),
       }) {
    if (!status.ok()) return status;
  }
  if (exporter.max_export_batch_size > exporter.max_queue_size) {
    return absl::InvalidArgumentError(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE: must not exceed OTEL_BSP_MAX_QUEUE_SIZE");
  }
  return config;
}

}  // namespace parley::telemetry
