// Tracing configuration from the standard OpenTelemetry environment variables.
//
//   absl::StatusOr<TracingConfig> config = TracingConfigFromEnv(env, "parley-session");
//
// Read (others are ignored):
//   OTEL_SDK_DISABLED                    "true": no span is recorded or exported
//   OTEL_EXPORTER_OTLP_TRACES_ENDPOINT   full URL spans are POSTed to, used as given
//   OTEL_EXPORTER_OTLP_ENDPOINT          base URL; "/v1/traces" is appended
//   OTEL_EXPORTER_OTLP_[TRACES_]HEADERS  "k1=v1,k2=v2", values percent-decoded
//   OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT  one export request, milliseconds
//   OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL only "http/json" is spoken; others are errors
//   OTEL_SERVICE_NAME                    service.name (beats OTEL_RESOURCE_ATTRIBUTES)
//   OTEL_RESOURCE_ATTRIBUTES             "k1=v1,k2=v2", values percent-decoded
//   OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG   see Sampler::FromOtelEnv
//   OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
//   OTEL_BSP_SCHEDULE_DELAY (ms)         the batching queue
//
// One deliberate difference from the SDKs: with neither endpoint variable set, nothing
// is exported (the SDK default, http://localhost:4318, is rarely right for a server and
// would cost a failed request per batch); spans then go to debug log lines.
#pragma once

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "telemetry/otlp_exporter.h"
#include "telemetry/tracer.h"

namespace parley::telemetry {

struct TracingConfig {
  // False when OTEL_SDK_DISABLED is true: spans are neither recorded nor exported, but
  // incoming trace context still passes through to downstream calls.
  bool enabled = true;
  Sampler sampler = Sampler::ParentBased(Sampler::AlwaysOn());
  // `traces_url` is empty when no endpoint is configured.
  OtlpExporterOptions exporter;
};

// Every malformed value is an error naming its variable; nothing is half-applied.
// `default_service_name` is service.name when neither variable names one (empty: leave
// it to the caller).
absl::StatusOr<TracingConfig> TracingConfigFromEnv(
    const std::map<std::string, std::string, std::less<>>& env,
    absl::string_view default_service_name);

// "k1=v1, k2=v2" (the W3C Baggage-like list OTEL_*_HEADERS and OTEL_RESOURCE_ATTRIBUTES
// use): keys trimmed, values trimmed and percent-decoded. `variable` names the source in
// errors.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseOtelKeyValueList(
    absl::string_view variable, absl::string_view text);

}  // namespace parley::telemetry
