// OTLP/JSON encoding of spans: the JSON form of
// opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest, as the OTLP
// specification defines it (protocol/otlp.md, "JSON Protobuf Encoding"): lowerCamelCase
// field names, trace and span ids as lower-case hex (not base64), enums as integers,
// 64-bit integers (timestamps, int attributes) as decimal strings.
//
//   nlohmann::json body = EncodeExportTraceRequest(resource, "parley", spans);
//   Post(url, body.dump());
#pragma once

#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "telemetry/span.h"

namespace parley::telemetry {

// The request carrying `spans` of one resource (the service) and one instrumentation
// scope (`scope_name`).
nlohmann::json EncodeExportTraceRequest(const Attributes& resource, const std::string& scope_name,
                                        const std::vector<SpanData>& spans);

// One attribute list in OTLP/JSON: [{"key": ..., "value": {"stringValue": ...}}, ...].
nlohmann::json EncodeAttributes(const Attributes& attributes);

}  // namespace parley::telemetry
