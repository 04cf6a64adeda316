#include "telemetry/otlp_json.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace parley::telemetry {
namespace {

// OTLP's Span.SpanKind numbers.
int KindNumber(SpanKind kind) {
  switch (kind) {
    case SpanKind::kInternal:
      return 1;
    case SpanKind::kServer:
      return 2;
    case SpanKind::kClient:
      return 3;
  }
  return 0;
}

// OTLP's Status.StatusCode numbers.
int StatusNumber(SpanStatus status) {
  switch (status) {
    case SpanStatus::kUnset:
      return 0;
    case SpanStatus::kOk:
      return 1;
    case SpanStatus::kError:
      return 2;
  }
  return 0;
}

std::string UnixNanos(absl::Time time) { return absl::StrCat(absl::ToUnixNanos(time)); }

std::string SpanIdHex(const TraceContext::SpanId& id) {
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(id.data()), id.size()));
}

nlohmann::json EncodeValue(const AttributeValue& value) {
  struct Visitor {
    nlohmann::json operator()(const std::string& v) const { return {{"stringValue", v}}; }
    nlohmann::json operator()(bool v) const { return {{"boolValue", v}}; }
    nlohmann::json operator()(int64_t v) const { return {{"intValue", absl::StrCat(v)}}; }
    nlohmann::json operator()(double v) const { return {{"doubleValue", v}}; }
    nlohmann::json operator()(const std::vector<std::string>& v) const {
      nlohmann::json values = nlohmann::json::array();
      for (const std::string& item : v) values.push_back({{"stringValue", item}});
      return {{"arrayValue", {{"values", std::move(values)}}}};
    }
  };
  return std::visit(Visitor{}, value);
}

nlohmann::json EncodeSpan(const SpanData& span) {
  nlohmann::json out = {
      {"traceId", span.context.TraceIdHex()},
      {"spanId", span.context.SpanIdHex()},
      {"name", span.name},
      {"kind", KindNumber(span.kind)},
      {"startTimeUnixNano", UnixNanos(span.start)},
      {"endTimeUnixNano", UnixNanos(span.end)},
      {"attributes", EncodeAttributes(span.attributes)},
      {"status", {{"code", StatusNumber(span.status)}}},
  };
  if (span.parent_span_id) out["parentSpanId"] = SpanIdHex(*span.parent_span_id);
  if (!span.context.tracestate().empty()) out["traceState"] = span.context.tracestate();
  if (!span.status_message.empty()) out["status"]["message"] = span.status_message;
  if (!span.events.empty()) {
    nlohmann::json& events = out["events"] = nlohmann::json::array();
    for (const SpanEvent& event : span.events) {
      events.push_back({{"timeUnixNano", UnixNanos(event.time)},
                        {"name", event.name},
                        {"attributes", EncodeAttributes(event.attributes)}});
    }
  }
  if (!span.links.empty()) {
    nlohmann::json& links = out["links"] = nlohmann::json::array();
    for (const SpanLink& link : span.links) {
      nlohmann::json encoded = {{"traceId", link.context.TraceIdHex()},
                                {"spanId", link.context.SpanIdHex()},
                                {"attributes", EncodeAttributes(link.attributes)}};
      if (!link.context.tracestate().empty()) encoded["traceState"] = link.context.tracestate();
      links.push_back(std::move(encoded));
    }
  }
  return out;
}

}  // namespace

nlohmann::json EncodeAttributes(const Attributes& attributes) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [key, value] : attributes) {
    out.push_back({{"key", key}, {"value", EncodeValue(value)}});
  }
  return out;
}

nlohmann::json EncodeExportTraceRequest(const Attributes& resource, const std::string& scope_name,
                                        const std::vector<SpanData>& spans) {
  nlohmann::json encoded = nlohmann::json::array();
  for (const SpanData& span : spans) encoded.push_back(EncodeSpan(span));
  return {{"resourceSpans",
           nlohmann::json::array(
               {{{"resource", {{"attributes", EncodeAttributes(resource)}}},
                 {"scopeSpans", nlohmann::json::array({{{"scope", {{"name", scope_name}}},
                                                        {"spans", std::move(encoded)}}})}}})}};
}

}  // namespace parley::telemetry
