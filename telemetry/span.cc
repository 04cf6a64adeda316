#include "telemetry/span.h"

#include <iterator>
#include <type_traits>

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

absl::string_view GrpcCodeName(int code) {
  // Indexed by grpc::StatusCode's values, which the gRPC specification fixes.
  static constexpr absl::string_view kNames[] = {"OK",
                                                 "CANCELLED",
                                                 "UNKNOWN",
                                                 "INVALID_ARGUMENT",
                                                 "DEADLINE_EXCEEDED",
                                                 "NOT_FOUND",
                                                 "ALREADY_EXISTS",
                                                 "PERMISSION_DENIED",
                                                 "RESOURCE_EXHAUSTED",
                                                 "FAILED_PRECONDITION",
                                                 "ABORTED",
                                                 "OUT_OF_RANGE",
                                                 "UNIMPLEMENTED",
                                                 "INTERNAL",
                                                 "UNAVAILABLE",
                                                 "DATA_LOSS",
                                                 "UNAUTHENTICATED"};
  if (code < 0 || code >= static_cast<int>(std::size(kNames))) return "UNKNOWN";
  return kNames[code];
}

Attributes AllAttributes(const SpanData& span) {
  Attributes all = span.attributes;
  if (span.rpc) {
    ForEachRpcAttribute(span, *span.rpc, [&](absl::string_view key, auto value) {
      using Value = decltype(value);
      if constexpr (std::is_same_v<Value, int64_t>) {
        all.emplace(std::string(key), value);
      } else {
        all.emplace(std::string(key), std::string(value));
      }
    });
  }
  return all;
}

}  // namespace parley::telemetry
