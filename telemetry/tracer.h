// Starting spans: the sampler that decides which traces are recorded, and the Span
// handle that instrumentation fills in and ends.
//
//   Tracer tracer(exporter, Sampler::ParentBased(Sampler::TraceIdRatio(0.01)));
//   Span chat = tracer.StartSpan("chat gpt-4o", SpanKind::kClient, turn_span.context());
//   chat.SetAttribute("gen_ai.request.model", "gpt-4o");
//   chat.AddEvent("gen_ai.first_token");
//   chat.End();  // or let it go out of scope
//
// A span that is not sampled still has a context (its ids propagate downstream with the
// sampled flag cleared, so every hop makes the same decision) but records nothing: its
// setters return at once and End() hands nothing to the sink.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "telemetry/span.h"
#include "telemetry/trace_context.h"

namespace parley::telemetry {

// The OpenTelemetry SDK samplers named by OTEL_TRACES_SAMPLER. Immutable; cheap to copy.
class Sampler {
 public:
  static Sampler AlwaysOn() { return Sampler(false, 1.0); }
  static Sampler AlwaysOff() { return Sampler(false, 0.0); }
  // Samples a fraction `ratio` (clamped to [0, 1]) of traces, decided by the trace id
  // alone so every service that sees the trace decides the same way.
  static Sampler TraceIdRatio(double ratio);
  // Follows the parent's sampled flag; `root` decides for spans without a parent.
  static Sampler ParentBased(Sampler root) { return Sampler(true, root.ratio_); }

  // From OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG values. An empty name is the
  // spec's default, parentbased_always_on. Unknown names and ratios outside [0, 1] (or
  // not numbers) are errors naming the variable.
  static absl::StatusOr<Sampler> FromOtelEnv(absl::string_view name, absl::string_view arg);

  // Whether a new span in trace `trace_id` with `parent` (null for a root) is sampled.
  bool ShouldSample(const TraceContext* parent, const TraceContext::TraceId& trace_id) const;

  bool parent_based() const { return parent_based_; }
  double ratio() const { return ratio_; }

 private:
  Sampler(bool parent_based, double ratio) : parent_based_(parent_based), ratio_(ratio) {}
  bool parent_based_;
  double ratio_;
};

class Tracer;

// One span being recorded. Move-only; ends (once) on End() or destruction. Not
// thread-safe: one owner at a time.
class Span {
 public:
  Span() = default;  // A span that records nothing and has an invalid context.
  Span(Span&&) noexcept = default;
  Span& operator=(Span&& other) noexcept;
  ~Span() { End(); }

  const TraceContext& context() const { return context_; }
  bool recording() const { return data_ != nullptr; }

  void SetAttribute(std::string key, AttributeValue value);
  void AddEvent(std::string name, Attributes attributes = {});
  void AddLink(const TraceContext& linked, Attributes attributes = {});
  // Marks the span failed: status ERROR with `message`, and `error.type` = `error_type`.
  void SetError(absl::string_view error_type, absl::string_view message);
  void End();

 private:
  friend class Tracer;
  Span(const Tracer* tracer, TraceContext context, std::unique_ptr<SpanData> data)
      : tracer_(tracer), context_(std::move(context)), data_(std::move(data)) {}
  const Tracer* tracer_ = nullptr;
  TraceContext context_;
  std::unique_ptr<SpanData> data_;  // Null when not sampled or already ended.
};

// Thread-safe. `sink` must outlive the tracer and every span it starts. A disabled
// tracer (OTEL_SDK_DISABLED) records nothing but still hands trace context on: children
// keep their parent's sampled flag, so downstream services decide as if it were absent.
class Tracer {
 public:
  Tracer(SpanSink& sink, Sampler sampler, bool enabled = true)
      : sink_(sink), sampler_(sampler), enabled_(enabled) {}

  // The context of a new span: a child of `parent` (same trace) or the root of a new
  // trace, with the sampled flag the sampler chooses.
  TraceContext NewSpanContext(const std::optional<TraceContext>& parent) const;

  Span StartSpan(std::string name, SpanKind kind, const std::optional<TraceContext>& parent,
                 absl::Time start = absl::Now()) const;

  // Hands a finished span to the sink when its context is sampled.
  void End(SpanData&& span) const {
    if (enabled_ && span.context.sampled()) sink_.OnEnd(std::move(span));
  }

  const Sampler& sampler() const { return sampler_; }
  bool enabled() const { return enabled_; }

 private:
  SpanSink& sink_;
  Sampler sampler_;
  bool enabled_;
};

// The span whose work the current thread is doing. While a scope is open, gRPC calls
// made on this thread without an explicit `traceparent` (PrepareDownstream) become
// children of `context`, and so do spans started from ContextScope::Current(). Scopes
// nest; each restores the one before it. Open and close a scope on the same thread.
//
//   Span turn = tracer.StartSpan("invoke_agent", SpanKind::kInternal, stored_parent);
//   ContextScope scope(turn.context());
//   store.CommitTurnStep(...);  // a child of the turn's span
class ContextScope {
 public:
  explicit ContextScope(const TraceContext& context) : ContextScope(std::optional(context)) {}
  // With nullopt, hides any outer scope: calls start traces of their own.
  explicit ContextScope(std::optional<TraceContext> context);
  ~ContextScope();
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;

  // The innermost open scope's context on this thread, or nullopt.
  static std::optional<TraceContext> Current();

 private:
  std::optional<TraceContext> context_;
  const ContextScope* previous_;
};

}  // namespace parley::telemetry
