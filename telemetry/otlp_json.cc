#include "telemetry/otlp_json.h"

#include <type_traits>
#include <variant>

#include "absl/time/time.h"
#include "telemetry/json_writer.h"

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

template <size_t N>
absl::string_view Bytes(const std::array<uint8_t, N>& id) {
  return absl::string_view(reinterpret_cast<const char*>(id.data()), N);
}

// A 64-bit integer field: a decimal string in OTLP/JSON.
void Int64Member(JsonWriter& json, absl::string_view key, int64_t value) {
  json.Key(key);
  json.QuotedInt(value);
}

void StringMember(JsonWriter& json, absl::string_view key, absl::string_view value) {
  json.Key(key);
  json.String(value);
}

void WriteValue(JsonWriter& json, const AttributeValue& value) {
  struct Visitor {
    JsonWriter& json;
    void operator()(const std::string& v) const { StringMember(json, "stringValue", v); }
    void operator()(bool v) const {
      json.Key("boolValue");
      json.Bool(v);
    }
    void operator()(int64_t v) const { Int64Member(json, "intValue", v); }
    void operator()(double v) const {
      json.Key("doubleValue");
      json.Double(v);
    }
    void operator()(const std::vector<std::string>& v) const {
      json.Key("arrayValue");
      json.BeginObject();
      json.Key("values");
      json.BeginArray();
      for (const std::string& item : v) {
        json.BeginObject();
        StringMember(json, "stringValue", item);
        json.EndObject();
      }
      json.EndArray();
      json.EndObject();
    }
  };
  json.BeginObject();
  std::visit(Visitor{json}, value);
  json.EndObject();
}

void WriteAttributeList(JsonWriter& json, const Attributes& attributes) {
  for (const auto& [key, value] : attributes) {
    json.BeginObject();
    StringMember(json, "key", key);
    json.Key("value");
    WriteValue(json, value);
    json.EndObject();
  }
}

// "attributes": [{"key": ..., "value": {"stringValue": ...}}, ...]
void WriteAttributes(JsonWriter& json, const Attributes& attributes) {
  json.Key("attributes");
  json.BeginArray();
  WriteAttributeList(json, attributes);
  json.EndArray();
}

// A span's own attributes followed by those its RpcAttributes stand for, written straight
// from the fields.
void WriteSpanAttributes(JsonWriter& json, const SpanData& span) {
  json.Key("attributes");
  json.BeginArray();
  WriteAttributeList(json, span.attributes);
  if (span.rpc) {
    ForEachRpcAttribute(span, *span.rpc, [&](absl::string_view key, auto value) {
      json.BeginObject();
      StringMember(json, "key", key);
      json.Key("value");
      json.BeginObject();
      if constexpr (std::is_same_v<decltype(value), int64_t>) {
        Int64Member(json, "intValue", value);
      } else {
        StringMember(json, "stringValue", value);
      }
      json.EndObject();
      json.EndObject();
    });
  }
  json.EndArray();
}

void WriteIds(JsonWriter& json, const TraceContext& context) {
  json.Key("traceId");
  json.HexString(Bytes(context.trace_id()));
  json.Key("spanId");
  json.HexString(Bytes(context.span_id()));
  if (!context.tracestate().empty()) StringMember(json, "traceState", context.tracestate());
}

void WriteSpan(JsonWriter& json, const SpanData& span) {
  json.BeginObject();
  WriteIds(json, span.context);
  if (span.parent_span_id) {
    json.Key("parentSpanId");
    json.HexString(Bytes(*span.parent_span_id));
  }
  StringMember(json, "name", span.name);
  json.Key("kind");
  json.Int(KindNumber(span.kind));
  Int64Member(json, "startTimeUnixNano", absl::ToUnixNanos(span.start));
  Int64Member(json, "endTimeUnixNano", absl::ToUnixNanos(span.end));
  WriteSpanAttributes(json, span);
  if (!span.events.empty()) {
    json.Key("events");
    json.BeginArray();
    for (const SpanEvent& event : span.events) {
      json.BeginObject();
      Int64Member(json, "timeUnixNano", absl::ToUnixNanos(event.time));
      StringMember(json, "name", event.name);
      WriteAttributes(json, event.attributes);
      json.EndObject();
    }
    json.EndArray();
  }
  if (!span.links.empty()) {
    json.Key("links");
    json.BeginArray();
    for (const SpanLink& link : span.links) {
      json.BeginObject();
      WriteIds(json, link.context);
      WriteAttributes(json, link.attributes);
      json.EndObject();
    }
    json.EndArray();
  }
  json.Key("status");
  json.BeginObject();
  json.Key("code");
  json.Int(StatusNumber(span.status));
  if (!span.status_message.empty()) StringMember(json, "message", span.status_message);
  json.EndObject();
  json.EndObject();
}

}  // namespace

std::string EncodeExportTraceRequest(const Attributes& resource, const std::string& scope_name,
                                     const std::vector<SpanData>& spans) {
  std::string out;
  out.reserve(512 + spans.size() * 768);  // About the size of an RPC span with its attributes.
  JsonWriter json(out);
  json.BeginObject();
  json.Key("resourceSpans");
  json.BeginArray();
  json.BeginObject();
  json.Key("resource");
  json.BeginObject();
  WriteAttributes(json, resource);
  json.EndObject();
  json.Key("scopeSpans");
  json.BeginArray();
  json.BeginObject();
  json.Key("scope");
  json.BeginObject();
  StringMember(json, "name", scope_name);
  json.EndObject();
  json.Key("spans");
  json.BeginArray();
  for (const SpanData& span : spans) WriteSpan(json, span);
  json.EndArray();
  json.EndObject();
  json.EndArray();
  json.EndObject();
  json.EndArray();
  json.EndObject();
  return out;
}

}  // namespace parley::telemetry
