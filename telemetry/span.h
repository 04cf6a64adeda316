// Finished spans and where they go.
//
// A SpanData is one unit of traced work (an RPC served, an RPC made, a model call, a
// tool run) with W3C ids and OpenTelemetry-style attributes. Producers hand finished
// spans to a SpanSink: LogSpanSink (debug log lines) and RecordingSpanSink (tests) today;
// an OTLP exporter (P10, not written yet) will be another.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "telemetry/log.h"
#include "telemetry/trace_context.h"

namespace parley::telemetry {

enum class SpanKind { kInternal, kServer, kClient };

struct SpanData {
  std::string name;
  SpanKind kind = SpanKind::kInternal;
  TraceContext context;
  // Empty for a root span.
  std::optional<TraceContext::SpanId> parent_span_id;
  absl::Time start;
  absl::Time end;
  std::map<std::string, std::string> attributes;
  // "OK" or the gRPC status code name; `status_message` explains an error.
  std::string status_code = "OK";
  std::string status_message;
};

class SpanSink {
 public:
  virtual ~SpanSink() = default;
  // Called once per finished span, from any thread. Must not block.
  virtual void OnEnd(const SpanData& span) = 0;
};

// Writes each span as a debug log line.
class LogSpanSink final : public SpanSink {
 public:
  explicit LogSpanSink(const Logger& logger) : logger_(logger) {}
  void OnEnd(const SpanData& span) override;

 private:
  const Logger& logger_;
};

// Keeps every span in memory. For tests.
class RecordingSpanSink final : public SpanSink {
 public:
  void OnEnd(const SpanData& span) override;
  std::vector<SpanData> spans();

 private:
  absl::Mutex mu_;
  std::vector<SpanData> spans_ ABSL_GUARDED_BY(mu_);
};

}  // namespace parley::telemetry
