#include "telemetry/span.h"

#include "absl/strings/escaping.h"

namespace parley::telemetry {

void LogSpanSink::OnEnd(SpanData span) {
  if (!logger_.Enabled(LogLevel::kDebug)) return;
  std::string parent;
  if (span.parent_span_id) {
    parent = absl::BytesToHexString(absl::string_view(
        reinterpret_cast<const char*>(span.parent_span_id->data()), span.parent_span_id->size()));
  }
  logger_.Debug("span",
                {{"span_name", span.name},
                 {"parent_span_id", parent},
                 {"duration_ms", absl::ToDoubleMilliseconds(span.end - span.start)},
                 {"status", std::string(SpanStatusName(span.status))},
                 {"status_message", span.status_message}},
                &span.context);
}

void RecordingSpanSink::OnEnd(SpanData span) {
  absl::MutexLock lock(&mu_);
  spans_.push_back(std::move(span));
}

std::vector<SpanData> RecordingSpanSink::spans() {
  absl::MutexLock lock(&mu_);
  return spans_;
}

absl::string_view SpanStatusName(SpanStatus status) {
  switch (status) {
    case SpanStatus::kUnset:
      return "UNSET";
    case SpanStatus::kOk:
      return "OK";
    case SpanStatus::kError:
      return "ERROR";
  }
  return "UNSET";
}

}  // namespace parley::telemetry
