// Decoding is deliberately strict about what the OTLP JSON encoding requires (hex ids of
// the right length, integer enums, 64-bit integers as decimal strings, the AnyValue
// shapes) so an exporter that drifts from the specification fails its tests here
// rather than in a customer's collector.
#include "tests/telemetry/otlp_receiver.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"

namespace parley::testing {
namespace {

using nlohmann::json;

// Thrown inside this file only, to abandon one malformed body.
struct DecodeError {
  std::string message;
};

void Require(bool condition, const std::string& message) {
  if (!condition) throw DecodeError{message};
}

std::string HexId(const json& object, const char* field, size_t hex_digits, bool optional) {
  if (!object.contains(field) && optional) return "";
  Require(object.contains(field) && object[field].is_string(),
          absl::StrCat(field, " missing or not a string"));
  std::string id = object[field].get<std::string>();
  if (optional && id.empty()) return id;
  Require(id.size() == hex_digits && id.find_first_not_of("0123456789abcdef") == std::string::npos,
          absl::StrCat(field, " is not ", hex_digits, " lower-case hex digits: ", id));
  return id;
}

int64_t Int64String(const json& object, const char* field) {
  Require(object.contains(field) && object[field].is_string(),
          absl::StrCat(field, " must be a decimal string"));
  int64_t value = 0;
  Require(absl::SimpleAtoi(object[field].get<std::string>(), &value),
          absl::StrCat(field, " is not an integer"));
  return value;
}

std::string ValueText(const json& value) {
  Require(value.is_object() && value.size() == 1, "AnyValue must have exactly one field");
  if (value.contains("stringValue")) return value["stringValue"].get<std::string>();
  if (value.contains("boolValue")) return value["boolValue"].get<bool>() ? "true" : "false";
  if (value.contains("intValue")) return absl::StrCat(Int64String(value, "intValue"));
  if (value.contains("doubleValue")) return absl::StrCat(value["doubleValue"].get<double>());
  if (value.contains("arrayValue")) {
    std::vector<std::string> items;
    for (const json& item : value["arrayValue"].value("values", json::array())) {
      items.push_back(ValueText(item));
    }
    return absl::StrJoin(items, ",");
  }
  throw DecodeError{absl::StrCat("unknown AnyValue ", value.dump())};
}

std::map<std::string, std::string> AttributesOf(const json& object) {
  std::map<std::string, std::string> out;
  for (const json& attribute : object.value("attributes", json::array())) {
    Require(attribute.contains("key") && attribute["key"].is_string(), "attribute without key");
    out[attribute["key"].get<std::string>()] = ValueText(attribute.at("value"));
  }
  return out;
}

ReceivedSpan DecodeSpan(const json& span, const std::map<std::string, std::string>& resource) {
  ReceivedSpan out;
  out.resource = resource;
  auto service = resource.find("service.name");
  out.service_name = service == resource.end() ? "" : service->second;
  out.trace_id = HexId(span, "traceId", 32, false);
  out.span_id = HexId(span, "spanId", 16, false);
  out.parent_span_id = HexId(span, "parentSpanId", 16, true);
  out.trace_state = span.value("traceState", "");
  out.name = span.at("name").get<std::string>();
  Require(span.at("kind").is_number_integer(), "kind must be an integer enum");
  out.kind = span["kind"].get<int>();
  out.start_unix_nanos = Int64String(span, "startTimeUnixNano");
  out.end_unix_nanos = Int64String(span, "endTimeUnixNano");
  out.attributes = AttributesOf(span);
  if (span.contains("status")) {
    Require(span["status"].value("code", 0) >= 0 && span["status"].value("code", 0) <= 2,
            "status.code out of range");
    out.status_code = span["status"].value("code", 0);
    out.status_message = span["status"].value("message", "");
  }
  for (const json& event : span.value("events", json::array())) {
    out.events.push_back({.name = event.at("name").get<std::string>(),
                          .unix_nanos = Int64String(event, "timeUnixNano"),
                          .attributes = AttributesOf(event)});
  }
  for (const json& link : span.value("links", json::array())) {
    out.links.push_back({.trace_id = HexId(link, "traceId", 32, false),
                         .span_id = HexId(link, "spanId", 16, false)});
  }
  return out;
}

void DecodeBody(const std::string& body, std::vector<ReceivedSpan>& spans) {
  json request = json::parse(body, nullptr, /*allow_exceptions=*/false);
  Require(!request.is_discarded(), "body is not JSON");
  Require(request.contains("resourceSpans") && request["resourceSpans"].is_array(),
          "no resourceSpans array");
  for (const json& resource_spans : request["resourceSpans"]) {
    std::map<std::string, std::string> resource =
        AttributesOf(resource_spans.value("resource", json::object()));
    for (const json& scope_spans : resource_spans.value("scopeSpans", json::array())) {
      for (const json& span : scope_spans.value("spans", json::array())) {
        spans.push_back(DecodeSpan(span, resource));
      }
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<OtlpReceiver>> OtlpReceiver::Start(int port) {
  absl::StatusOr<std::unique_ptr<FakeModelServer>> server = FakeModelServer::Start(port);
  if (!server.ok()) return server.status();
  (*server)->SetDefaultResponse(
      {.status = 200, .headers = {{"Content-Type", "application/json"}}, .chunks = {"{}"}});
  return std::unique_ptr<OtlpReceiver>(new OtlpReceiver(*std::move(server)));
}

std::string OtlpReceiver::traces_url() const { return absl::StrCat(endpoint(), "/v1/traces"); }

void OtlpReceiver::Decode(std::vector<ReceivedSpan>& spans,
                          std::vector<std::string>& errors) const {
  for (const RecordedRequest& request : server_->requests()) {
    if (request.method != "POST" || request.path != "/v1/traces") {
      errors.push_back(absl::StrCat("unexpected request ", request.method, " ", request.path));
      continue;
    }
    auto type = request.headers.find("content-type");
    if (type == request.headers.end() || type->second != "application/json") {
      errors.push_back("Content-Type is not application/json");
      continue;
    }
    std::vector<ReceivedSpan> decoded;
    try {
      DecodeBody(request.body, decoded);
    } catch (const DecodeError& error) {
      errors.push_back(error.message);
      continue;
    } catch (const json::exception& error) {
      errors.push_back(error.what());
      continue;
    }
    spans.insert(spans.end(), decoded.begin(), decoded.end());
  }
}

std::vector<ReceivedSpan> OtlpReceiver::spans() const {
  std::vector<ReceivedSpan> spans;
  std::vector<std::string> errors;
  Decode(spans, errors);
  return spans;
}

std::vector<std::string> OtlpReceiver::decode_errors() const {
  std::vector<ReceivedSpan> spans;
  std::vector<std::string> errors;
  Decode(spans, errors);
  return errors;
}

bool OtlpReceiver::WaitForSpans(size_t count, absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  while (spans().size() < count) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

}  // namespace parley::testing
