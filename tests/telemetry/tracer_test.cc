// Sampling, the Span handle, and tracing configuration from the OTEL_* variables.
#include "telemetry/tracer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "telemetry/otel_config.h"

namespace parley::telemetry {
namespace {

using ::testing::HasSubstr;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

TEST(Sampler, RatioIsDecidedByTheTraceIdAlone) {
  Sampler half = Sampler::TraceIdRatio(0.5);
  int sampled = 0;
  for (int i = 0; i < 10000; ++i) {
    TraceContext root = TraceContext::NewRoot();
    bool first = half.ShouldSample(nullptr, root.trace_id());
    EXPECT_EQ(first, half.ShouldSample(nullptr, root.trace_id()));
    sampled += first ? 1 : 0;
  }
  // 10000 fair coin flips: 5000 +- 50 (one sigma); 400 is eight sigmas.
  EXPECT_NEAR(sampled, 5000, 400);
  TraceContext root = TraceContext::NewRoot();
  EXPECT_TRUE(Sampler::TraceIdRatio(1).ShouldSample(nullptr, root.trace_id()));
  EXPECT_FALSE(Sampler::TraceIdRatio(0).ShouldSample(nullptr, root.trace_id()));
}

TEST(Sampler, ParentBasedFollowsTheParentAndRatioDecidesRoots) {
  Sampler sampler = Sampler::ParentBased(Sampler::AlwaysOff());
  TraceContext sampled_parent = TraceContext::NewRoot(true);
  TraceContext unsampled_parent = TraceContext::NewRoot(false);
  EXPECT_TRUE(sampler.ShouldSample(&sampled_parent, sampled_parent.trace_id()));
  EXPECT_FALSE(sampler.ShouldSample(&unsampled_parent, unsampled_parent.trace_id()));
  EXPECT_FALSE(sampler.ShouldSample(nullptr, sampled_parent.trace_id()));
  // Not parent-based: the ratio overrides the parent.
  EXPECT_FALSE(Sampler::AlwaysOff().ShouldSample(&sampled_parent, sampled_parent.trace_id()));
}

TEST(Tracer, UnsampledSpanRecordsNothingButCarriesTheTrace) {
  RecordingSpanSink sink;
  Tracer tracer(sink, Sampler::ParentBased(Sampler::AlwaysOn()));
  TraceContext parent = TraceContext::NewRoot(/*sampled=*/false);
  {
    Span span = tracer.StartSpan("chat m", SpanKind::kClient, parent);
    EXPECT_FALSE(span.recording());
    EXPECT_EQ(span.context().trace_id(), parent.trace_id());
    EXPECT_NE(span.context().span_id(), parent.span_id());
    EXPECT_FALSE(span.context().sampled());
    span.SetAttribute("a", "b");
  }
  EXPECT_TRUE(sink.spans().empty());
}

TEST(Tracer, SpanEndsOnceWithEverythingItWasGiven) {
  RecordingSpanSink sink;
  Tracer tracer(sink, Sampler::ParentBased(Sampler::AlwaysOn()));
  TraceContext parent = TraceContext::NewRoot();
  TraceContext other = TraceContext::NewRoot();
  Span span = tracer.StartSpan("execute_tool bash", SpanKind::kInternal, parent);
  ASSERT_TRUE(span.recording());
  span.SetAttribute("gen_ai.tool.name", "bash");
  span.AddEvent("started", {{"n", int64_t{1}}});
  span.AddLink(other);
  span.SetError("timeout", "tool ran past 10s");
  span.End();
  span.End();
  std::vector<SpanData> spans = sink.spans();
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].name, "execute_tool bash");
  EXPECT_EQ(spans[0].parent_span_id, parent.span_id());
  EXPECT_EQ(spans[0].context.trace_id(), parent.trace_id());
  EXPECT_EQ(std::get<std::string>(spans[0].attributes.at("gen_ai.tool.name")), "bash");
  EXPECT_EQ(std::get<std::string>(spans[0].attributes.at("error.type")), "timeout");
  EXPECT_EQ(spans[0].status, SpanStatus::kError);
  ASSERT_EQ(spans[0].events.size(), 1u);
  ASSERT_EQ(spans[0].links.size(), 1u);
  EXPECT_EQ(spans[0].links[0].context.span_id(), other.span_id());
  EXPECT_GE(spans[0].end, spans[0].start);
}

TEST(Tracer, DisabledTracerRecordsNothingAndKeepsTheCallersDecision) {
  RecordingSpanSink sink;
  Tracer tracer(sink, Sampler::ParentBased(Sampler::AlwaysOn()), /*enabled=*/false);
  TraceContext parent = TraceContext::NewRoot(/*sampled=*/true);
  Span span = tracer.StartSpan("x", SpanKind::kServer, parent);
  EXPECT_FALSE(span.recording());
  EXPECT_TRUE(span.context().sampled());
  span.End();
  EXPECT_TRUE(sink.spans().empty());
  EXPECT_FALSE(tracer.NewSpanContext(std::nullopt).sampled());
}

TEST(ContextScope, NestsAndRestoresTheOuterScope) {
  EXPECT_FALSE(ContextScope::Current().has_value());
  TraceContext outer = TraceContext::NewRoot();
  TraceContext inner = outer.NewChild();
  {
    ContextScope outer_scope(outer);
    EXPECT_EQ(ContextScope::Current(), outer);
    {
      ContextScope inner_scope(inner);
      EXPECT_EQ(ContextScope::Current(), inner);
    }
    EXPECT_EQ(ContextScope::Current(), outer);
    std::optional<TraceContext> on_other_thread = outer;
    std::thread([&] { on_other_thread = ContextScope::Current(); }).join();
    EXPECT_FALSE(on_other_thread.has_value());
  }
  EXPECT_FALSE(ContextScope::Current().has_value());
}

using Env = std::map<std::string, std::string, std::less<>>;

TEST(TracingConfig, DefaultsExportNothingAndSampleEverything) {
  auto config = TracingConfigFromEnv({}, "parley-store");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->enabled);
  EXPECT_TRUE(config->exporter.traces_url.empty());
  EXPECT_TRUE(config->sampler.parent_based());
  EXPECT_EQ(config->sampler.ratio(), 1.0);
  EXPECT_EQ(std::get<std::string>(config->exporter.resource.at("service.name")), "parley-store");
}

TEST(TracingConfig, ReadsTheStandardVariables) {
  auto config = TracingConfigFromEnv(
      Env{{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"},
          {"OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=abc%3D%3D , team = core"},
          {"OTEL_SERVICE_NAME", "gw-eu"},
          {"OTEL_RESOURCE_ATTRIBUTES", "service.name=ignored,deployment.environment=prod"},
          {"OTEL_TRACES_SAMPLER", "parentbased_traceidratio"},
          {"OTEL_TRACES_SAMPLER_ARG", "0.01"},
          {"OTEL_BSP_MAX_QUEUE_SIZE", "100"},
          {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10"},
          {"OTEL_BSP_SCHEDULE_DELAY", "250"},
          {"OTEL_EXPORTER_OTLP_TIMEOUT", "3000"}},
      "parley-gateway");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->exporter.traces_url, "http://collector:4318/v1/traces");
  EXPECT_THAT(config->exporter.headers,
              UnorderedElementsAre(Pair("x-api-key", "abc=="), Pair("team", "core")));
  EXPECT_EQ(std::get<std::string>(config->exporter.resource.at("service.name")), "gw-eu");
  EXPECT_EQ(std::get<std::string>(config->exporter.resource.at("deployment.environment")), "prod");
  EXPECT_TRUE(config->sampler.parent_based());
  EXPECT_DOUBLE_EQ(config->sampler.ratio(), 0.01);
  EXPECT_EQ(config->exporter.max_queue_size, 100u);
  EXPECT_EQ(config->exporter.max_export_batch_size, 10u);
  EXPECT_EQ(config->exporter.schedule_delay, absl::Milliseconds(250));
  EXPECT_EQ(config->exporter.export_timeout, absl::Seconds(3));
}

TEST(TracingConfig, TracesEndpointIsUsedAsGivenAndWins) {
  auto config =
      TracingConfigFromEnv(Env{{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"},
                               {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://b/custom/path"}},
                           "s");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->exporter.traces_url, "https://b/custom/path");
}

TEST(TracingConfig, SdkDisabledTurnsTracingOff) {
  auto config = TracingConfigFromEnv(Env{{"OTEL_SDK_DISABLED", "TRUE"}}, "s");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->enabled);
}

TEST(TracingConfig, EveryBadValueIsAnErrorNamingItsVariable) {
  const std::vector<std::pair<Env, std::string>> cases = {
      {{{"OTEL_TRACES_SAMPLER", "sometimes"}}, "OTEL_TRACES_SAMPLER"},
      {{{"OTEL_TRACES_SAMPLER", "traceidratio"}, {"OTEL_TRACES_SAMPLER_ARG", "1.5"}},
       "OTEL_TRACES_SAMPLER_ARG"},
      {{{"OTEL_TRACES_SAMPLER", "traceidratio"}, {"OTEL_TRACES_SAMPLER_ARG", "half"}},
       "OTEL_TRACES_SAMPLER_ARG"},
      {{{"OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"}}, "OTEL_EXPORTER_OTLP_ENDPOINT"},
      {{{"OTEL_EXPORTER_OTLP_HEADERS", "novalue"}}, "OTEL_EXPORTER_OTLP_HEADERS"},
      {{{"OTEL_EXPORTER_OTLP_TRACES_HEADERS", "k=%zz"}}, "OTEL_EXPORTER_OTLP_TRACES_HEADERS"},
      {{{"OTEL_RESOURCE_ATTRIBUTES", "=v"}}, "OTEL_RESOURCE_ATTRIBUTES"},
      {{{"OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"}}, "OTEL_EXPORTER_OTLP_PROTOCOL"},
      {{{"OTEL_BSP_MAX_QUEUE_SIZE", "0"}}, "OTEL_BSP_MAX_QUEUE_SIZE"},
      {{{"OTEL_BSP_MAX_QUEUE_SIZE", "10"}, {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "20"}},
       "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"},
      {{{"OTEL_BSP_SCHEDULE_DELAY", "soon"}}, "OTEL_BSP_SCHEDULE_DELAY"},
      {{{"OTEL_SDK_DISABLED", "maybe"}}, "OTEL_SDK_DISABLED"},
  };
  for (const auto& [env, variable] : cases) {
    auto config = TracingConfigFromEnv(env, "s");
    ASSERT_FALSE(config.ok()) << variable;
    EXPECT_THAT(config.status().message(), HasSubstr(variable));
  }
}

}  // namespace
}  // namespace parley::telemetry
