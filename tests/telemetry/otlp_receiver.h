// OtlpReceiver: a stand-in OpenTelemetry collector for tests — a real HTTP server on
// loopback (FakeModelServer underneath) that accepts OTLP/HTTP JSON trace exports on
// /v1/traces and decodes them back into spans, strictly: a body that is not a valid
// ExportTraceServiceRequest in the OTLP JSON encoding is recorded as a decode error.
//
//   auto receiver = OtlpReceiver::Start();
//   options.traces_url = (*receiver)->traces_url();
//   ... export ...
//   ASSERT_TRUE((*receiver)->WaitForSpans(3, absl::Seconds(10)));
//   for (const ReceivedSpan& span : (*receiver)->spans()) ...
//
// Answers 200 unless told otherwise (Enqueue a FakeResponse: 503 with Retry-After, a
// stall, ...); server() reaches the recorded requests and their headers.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/runtime/fake_model_server.h"

namespace parley::testing {

struct ReceivedSpan {
  std::string service_name;  // The resource's service.name.
  std::map<std::string, std::string> resource;
  std::string trace_id;        // 32 hex digits.
  std::string span_id;         // 16 hex digits.
  std::string parent_span_id;  // Empty for a root.
  std::string trace_state;
  std::string name;
  int kind = 0;         // OTLP SpanKind: 1 internal, 2 server, 3 client.
  int status_code = 0;  // OTLP StatusCode: 0 unset, 1 ok, 2 error.
  std::string status_message;
  int64_t start_unix_nanos = 0;
  int64_t end_unix_nanos = 0;
  // Every attribute value printed as text: strings as they are, ints in decimal, bools
  // as true/false, arrays as their items joined by ','.
  std::map<std::string, std::string> attributes;
  struct Event {
    std::string name;
    int64_t unix_nanos = 0;
    std::map<std::string, std::string> attributes;
  };
  std::vector<Event> events;
  struct Link {
    std::string trace_id;
    std::string span_id;
  };
  std::vector<Link> links;

  const std::string* Attribute(const std::string& key) const {
    auto it = attributes.find(key);
    return it == attributes.end() ? nullptr : &it->second;
  }
};

class OtlpReceiver {
 public:
  static absl::StatusOr<std::unique_ptr<OtlpReceiver>> Start(int port = 0);

  // The URL to export to: http://127.0.0.1:<port>/v1/traces.
  std::string traces_url() const;
  // The base URL (OTEL_EXPORTER_OTLP_ENDPOINT form).
  std::string endpoint() const { return server_->base_url(); }
  FakeModelServer& server() { return *server_; }

  // Every span received so far, in arrival order — including those of requests that
  // were answered with an error (a retried batch appears once per attempt).
  std::vector<ReceivedSpan> spans() const;
  // Why received bodies could not be decoded (empty when all were valid).
  std::vector<std::string> decode_errors() const;
  // Waits until at least `count` spans arrived.
  bool WaitForSpans(size_t count, absl::Duration timeout) const;

 private:
  explicit OtlpReceiver(std::unique_ptr<FakeModelServer> server) : server_(std::move(server)) {}
  // Decodes every request received so far.
  void Decode(std::vector<ReceivedSpan>& spans, std::vector<std::string>& errors) const;

  std::unique_ptr<FakeModelServer> server_;
};

}  // namespace parley::testing
