// W3C Trace Context (https://www.w3.org/TR/trace-context/) for gRPC metadata.
//
// A TraceContext names one span: the 16-byte trace id shared by every span of a trace,
// this span's 8-byte id, the sampled flag and the vendor `tracestate` carried verbatim.
//
//   std::optional<TraceContext> parent = TraceContext::Parse(traceparent_header);
//   TraceContext span = parent ? parent->NewChild() : TraceContext::NewRoot();
//   metadata["traceparent"] = span.ToTraceparent();
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace parley::telemetry {

inline constexpr absl::string_view kTraceparentHeader = "traceparent";
inline constexpr absl::string_view kTracestateHeader = "tracestate";

class TraceContext {
 public:
  using TraceId = std::array<uint8_t, 16>;
  using SpanId = std::array<uint8_t, 8>;

  // A new trace with random ids, sampled unless told otherwise.
  static TraceContext NewRoot(bool sampled = true);
  // Parses a `traceparent` header. Returns nullopt for anything the spec says to
  // ignore: wrong length or characters, all-zero ids, version ff, and for version 00
  // any trailing data. Higher versions are read by their first four fields.
  static std::optional<TraceContext> Parse(absl::string_view traceparent,
                                           absl::string_view tracestate = {});

  // A child span: same trace id, flags and tracestate, new random span id.
  TraceContext NewChild() const;

  // The same span with the sampled flag set or cleared.
  TraceContext WithSampled(bool sampled) const;

  // "00-<32 hex trace id>-<16 hex span id>-<2 hex flags>".
  std::string ToTraceparent() const;
  std::string TraceIdHex() const;
  std::string SpanIdHex() const;

  const TraceId& trace_id() const { return trace_id_; }
  const SpanId& span_id() const { return span_id_; }
  bool sampled() const { return (flags_ & 0x01) != 0; }
  uint8_t flags() const { return flags_; }
  const std::string& tracestate() const { return tracestate_; }

  friend bool operator==(const TraceContext&, const TraceContext&) = default;

 private:
  TraceId trace_id_{};
  SpanId span_id_{};
  uint8_t flags_ = 0;
  std::string tracestate_;
};

}  // namespace parley::telemetry
