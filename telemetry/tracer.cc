// Sampling follows the OpenTelemetry SDK: TraceIdRatioBased compares the low 64 bits of
// the trace id with ratio * 2^64, so the decision is a pure function of the trace id and
// every service agrees on it; ParentBased trusts the caller's sampled flag.
#include "telemetry/tracer.h"

#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace parley::telemetry {
namespace {

thread_local const ContextScope* current_scope = nullptr;

}  // namespace

ContextScope::ContextScope(std::optional<TraceContext> context)
    : context_(std::move(context)), previous_(current_scope) {
  current_scope = this;
}

ContextScope::~ContextScope() { current_scope = previous_; }

std::optional<TraceContext> ContextScope::Current() {
  if (current_scope == nullptr) return std::nullopt;
  return current_scope->context_;
}

Sampler Sampler::TraceIdRatio(double ratio) {
  if (!(ratio > 0.0)) ratio = 0.0;  // Also catches NaN.
  if (ratio > 1.0) ratio = 1.0;
  return Sampler(false, ratio);
}

absl::StatusOr<Sampler> Sampler::FromOtelEnv(absl::string_view name, absl::string_view arg) {
  auto ratio = [&]() -> absl::StatusOr<double> {
    if (arg.empty()) return 1.0;  // The spec's default ratio.
    double value = 0;
    if (!absl::SimpleAtod(arg, &value) || !(value >= 0.0 && value <= 1.0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "OTEL_TRACES_SAMPLER_ARG: expected a ratio between 0 and 1, got \"", arg, "\""));
    }
    return value;
  };
  if (name.empty() || name == "parentbased_always_on") return ParentBased(AlwaysOn());
  if (name == "always_on") return AlwaysOn();
  if (name == "always_off") return AlwaysOff();
  if (name == "parentbased_always_off") return ParentBased(AlwaysOff());
  if (name == "traceidratio" || name == "parentbased_traceidratio") {
    absl::StatusOr<double> value = ratio();
    if (!value.ok()) return value.status();
    Sampler root = TraceIdRatio(*value);
    return name == "traceidratio" ? root : ParentBased(root);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("OTEL_TRACES_SAMPLER: unknown sampler \"", name,
                   "\" (expected always_on, always_off, traceidratio, parentbased_always_on, "
                   "parentbased_always_off or parentbased_traceidratio)"));
}

bool Sampler::ShouldSample(const TraceContext* parent,
                           const TraceContext::TraceId& trace_id) const {
  if (parent_based_ && parent != nullptr) return parent->sampled();
  if (ratio_ >= 1.0) return true;
  if (ratio_ <= 0.0) return false;
  uint64_t low = 0;
  for (size_t i = 8; i < 16; ++i) low = (low << 8) | trace_id[i];
  // ratio * 2^64, computed without overflowing: ratio < 1 here.
  const double threshold = std::ldexp(ratio_, 64);
  return static_cast<double>(low) < threshold;
}

TraceContext Tracer::NewSpanContext(const std::optional<TraceContext>& parent) const {
  if (!enabled_) return parent ? parent->NewChild() : TraceContext::NewRoot(/*sampled=*/false);
  TraceContext context = parent ? parent->NewChild() : TraceContext::NewRoot();
  const bool sampled = sampler_.ShouldSample(parent ? &*parent : nullptr, context.trace_id());
  return context.sampled() == sampled ? context : context.WithSampled(sampled);
}

Span Tracer::StartSpan(std::string name, SpanKind kind, const std::optional<TraceContext>& parent,
                       absl::Time start) const {
  TraceContext context = NewSpanContext(parent);
  if (!enabled_ || !context.sampled()) return Span(this, std::move(context), nullptr);
  auto data = std::make_unique<SpanData>();
  data->name = std::move(name);
  data->kind = kind;
  data->context = context;
  if (parent) data->parent_span_id = parent->span_id();
  data->start = start;
  return Span(this, std::move(context), std::move(data));
}

Span& Span::operator=(Span&& other) noexcept {
  if (this != &other) {
    End();
    tracer_ = other.tracer_;
    context_ = std::move(other.context_);
    data_ = std::move(other.data_);
  }
  return *this;
}

void Span::SetAttribute(std::string key, AttributeValue value) {
  if (data_) data_->attributes.insert_or_assign(std::move(key), std::move(value));
}

void Span::AddEvent(std::string name, Attributes attributes) {
  if (data_) {
    data_->events.push_back(
        {.name = std::move(name), .time = absl::Now(), .attributes = std::move(attributes)});
  }
}

void Span::AddLink(const TraceContext& linked, Attributes attributes) {
  if (data_) data_->links.push_back({.context = linked, .attributes = std::move(attributes)});
}

void Span::SetError(absl::string_view error_type, absl::string_view message) {
  if (!data_) return;
  data_->status = SpanStatus::kError;
  data_->status_message = std::string(message);
  data_->attributes.insert_or_assign("error.type", std::string(error_type));
}

void Span::End() {
  if (!data_) return;
  data_->end = absl::Now();
  tracer_->End(std::move(*data_));
  data_.reset();
}

}  // namespace parley::telemetry
