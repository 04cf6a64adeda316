// Finished spans and where they go.
//
// A SpanData is one unit of traced work (an RPC served, an RPC made, a model call, a
// tool run) in the OpenTelemetry data model: W3C ids, parent, kind, typed attributes,
// timestamped events, links to spans of other traces, and a status. Producers hand
// finished, sampled spans to a SpanSink: OtlpHttpExporter (telemetry/otlp_exporter.h)
// in production, LogSpanSink (debug log lines) when no collector is configured,
// RecordingSpanSink in tests.
//
//   SpanData span;
//   span.name = "chat gpt-4o";
//   span.attributes["gen_ai.request.model"] = "gpt-4o";
//   span.attributes["gen_ai.usage.input_tokens"] = int64_t{812};
//   span.events.push_back({.name = "gen_ai.first_token", .time = absl::Now()});
//   sink.OnEnd(span);
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "telemetry/log.h"
#include "telemetry/trace_context.h"

namespace parley::telemetry {

// The values OTLP can carry that Parley uses. A string literal becomes a std::string;
// integers must be int64_t (or int), so a size_t needs a cast.
using AttributeValue = std::variant<std::string, bool, int64_t, double, std::vector<std::string>>;
using Attributes = std::map<std::string, AttributeValue, std::less<>>;

// OTLP's Span.SpanKind, without PRODUCER/CONSUMER (nothing here is a queue hop).
enum class SpanKind { kInternal, kServer, kClient };

// OTLP's Status.StatusCode: UNSET unless the instrumentation says otherwise.
enum class SpanStatus { kUnset, kOk, kError };

struct SpanEvent {
  std::string name;
  absl::Time time;
  Attributes attributes;
};

// A causal relation to a span that is not the parent, possibly in another trace.
struct SpanLink {
  TraceContext context;
  Attributes attributes;
};

// The attributes OpenTelemetry's RPC conventions put on a gRPC span, kept as fields
// until the span is encoded: the interceptors record a span for every call, and as map
// entries these cost about eight allocations on the caller's thread and as many frees on
// the export thread. They stand for rpc.system = "grpc", rpc.service and rpc.method (the
// span's name, "package.Service/Method", split at the slash), rpc.grpc.status_code, and
// error.type = the code's name when `failed`. An explicit attribute of the same key wins.
struct RpcAttributes {
  int status_code = 0;  // grpc::StatusCode's value.
  bool failed = false;
};

struct SpanData {
  std::string name;
  SpanKind kind = SpanKind::kInternal;
  TraceContext context;
  // Empty for a root span.
  std::optional<TraceContext::SpanId> parent_span_id;
  absl::Time start;
  absl::Time end;
  Attributes attributes;
  // Set on gRPC spans only.
  std::optional<RpcAttributes> rpc;
  std::vector<SpanEvent> events;
  std::vector<SpanLink> links;
  SpanStatus status = SpanStatus::kUnset;
  // Why the span failed; only meaningful with kError.
  std::string status_message;
};

class SpanSink {
 public:
  virtual ~SpanSink() = default;
  // Called once per finished span, from any thread. Must not block. The span is the
  // sink's to keep: the tracer moves it in, so queueing it costs no copy.
  virtual void OnEnd(SpanData span) = 0;
};

// Writes each span as a debug log line.
class LogSpanSink final : public SpanSink {
 public:
  explicit LogSpanSink(const Logger& logger) : logger_(logger) {}
  void OnEnd(SpanData span) override;

 private:
  const Logger& logger_;
};

// Keeps every span in memory. For tests.
class RecordingSpanSink final : public SpanSink {
 public:
  void OnEnd(SpanData span) override;
  std::vector<SpanData> spans();

 private:
  absl::Mutex mu_;
  std::vector<SpanData> spans_ ABSL_GUARDED_BY(mu_);
};

// "UNSET", "OK", "ERROR".
absl::string_view SpanStatusName(SpanStatus status);

// A gRPC status code's name ("OK", "NOT_FOUND", ...); "UNKNOWN" for a number gRPC does
// not define.
absl::string_view GrpcCodeName(int code);

// Calls fn(key, value) for each attribute `rpc` stands for (see RpcAttributes), with
// value an absl::string_view or an int64_t, skipping the keys `span.attributes` has.
template <typename Fn>
void ForEachRpcAttribute(const SpanData& span, const RpcAttributes& rpc, Fn&& fn) {
  auto emit = [&](absl::string_view key, auto value) {
    if (!span.attributes.contains(key)) fn(key, value);
  };
  const absl::string_view name = span.name;
  emit("rpc.system", absl::string_view("grpc"));
  if (size_t slash = name.find('/'); slash != absl::string_view::npos) {
    emit("rpc.service", name.substr(0, slash));
    emit("rpc.method", name.substr(slash + 1));
  }
  emit("rpc.grpc.status_code", int64_t{rpc.status_code});
  if (rpc.failed) emit("error.type", GrpcCodeName(rpc.status_code));
}

// The span's attributes with the RPC ones spelled out: what an exporter sends.
Attributes AllAttributes(const SpanData& span);

}  // namespace parley::telemetry
