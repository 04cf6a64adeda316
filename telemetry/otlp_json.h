// OTLP/JSON encoding of spans: the JSON form of
// opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest, as the OTLP
// specification defines it (protocol/otlp.md, "JSON Protobuf Encoding"): lowerCamelCase
// field names, trace and span ids as lower-case hex (not base64), enums as integers,
// 64-bit integers (timestamps, int attributes) as decimal strings.
//
//   std::string body = EncodeExportTraceRequest(resource, "parley", spans);
//   Post(url, body);
//
// The text is written straight into the string (telemetry/json_writer.h): the exporter
// encodes every span it sends, and a document tree would cost an allocation per field.
#pragma once

#include <string>
#include <vector>

#include "telemetry/span.h"

namespace parley::telemetry {

// The request carrying `spans` of one resource (the service) and one instrumentation
// scope (`scope_name`).
std::string EncodeExportTraceRequest(const Attributes& resource, const std::string& scope_name,
                                     const std::vector<SpanData>& spans);

}  // namespace parley::telemetry
