// The OTLP/HTTP exporter against a real HTTP receiver on loopback: what it sends decodes
// as OTLP JSON with every field of the span model, batches respect their size, 429/503
// are retried as the specification says, and a dead or stalled collector costs dropped
// spans (counted) but never blocks the code that ends spans.
#include "telemetry/otlp_exporter.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <variant>

#include "absl/strings/str_cat.h"
#include "tests/telemetry/otlp_receiver.h"

namespace parley::telemetry {
namespace {

using ::parley::testing::FakeResponse;
using ::parley::testing::OtlpReceiver;
using ::parley::testing::ReceivedSpan;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

class OtlpExporterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto receiver = OtlpReceiver::Start();
    ASSERT_TRUE(receiver.ok()) << receiver.status();
    receiver_ = *std::move(receiver);
  }

  OtlpExporterOptions Options() {
    return {.traces_url = receiver_->traces_url(),
            .resource = {{"service.name", "parley-test"}},
            .schedule_delay = absl::Milliseconds(20),
            .export_timeout = absl::Seconds(5),
            .initial_backoff = absl::Milliseconds(10),
            .max_backoff = absl::Milliseconds(50)};
  }

  // The value of one series in the registry's text ("name" or "name{labels}"); 0 when
  // it is not there yet.
  double Value(absl::string_view series) {
    const std::string text = registry_.RenderText();
    const std::string key = absl::StrCat("\n", series, " ");
    const size_t at = text.find(key);
    return at == std::string::npos ? 0 : std::stod(text.substr(at + key.size()));
  }
  double DroppedValue(absl::string_view reason) {
    return Value(absl::StrCat("parley_otel_spans_dropped_total{reason=\"", reason, "\"}"));
  }

  static SpanData MakeSpan(const std::string& name) {
    SpanData span;
    span.name = name;
    span.context = TraceContext::NewRoot();
    span.start = absl::Now();
    span.end = span.start + absl::Milliseconds(3);
    return span;
  }

  std::unique_ptr<OtlpReceiver> receiver_;
  Registry registry_;
  Logger logger_{"test", LogLevel::kError};
};

TEST_F(OtlpExporterTest, SendsEverySpanFieldInOtlpJson) {
  OtlpExporterOptions options = Options();
  options.headers = {{"x-api-key", "collector-secret"}};
  OtlpHttpExporter exporter(options, registry_, logger_);

  TraceContext parent =
      *TraceContext::Parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "vendor=a");
  TraceContext linked = TraceContext::NewRoot();
  SpanData span = MakeSpan("chat gpt-4o");
  span.kind = SpanKind::kClient;
  span.context = parent.NewChild();
  span.parent_span_id = parent.span_id();
  span.attributes = {{"gen_ai.request.model", "gpt-4o"},
                     {"gen_ai.usage.input_tokens", int64_t{812}},
                     {"gen_ai.response.finish_reasons", std::vector<std::string>{"stop", "length"}},
                     {"cached", true},
                     {"temperature", 0.5},
                     // Quotes, a newline and a byte that is not UTF-8 (replaced by U+FFFD).
                     {"prompt", std::string("say \"hi\"\n\xFF")}};
  span.events.push_back({.name = "gen_ai.first_token",
                         .time = span.start + absl::Milliseconds(1),
                         .attributes = {{"step", int64_t{1}}}});
  span.links.push_back({.context = linked});
  span.status = SpanStatus::kError;
  span.status_message = "provider said 500";
  exporter.OnEnd(span);
  ASSERT_TRUE(exporter.ForceFlush(absl::Seconds(10)));

  ASSERT_THAT(receiver_->decode_errors(), IsEmpty());
  std::vector<ReceivedSpan> spans = receiver_->spans();
  ASSERT_EQ(spans.size(), 1u);
  const ReceivedSpan& got = spans[0];
  EXPECT_EQ(got.service_name, "parley-test");
  EXPECT_EQ(got.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(got.span_id, span.context.SpanIdHex());
  EXPECT_EQ(got.parent_span_id, "00f067aa0ba902b7");
  EXPECT_EQ(got.trace_state, "vendor=a");
  EXPECT_EQ(got.name, "chat gpt-4o");
  EXPECT_EQ(got.kind, 3);
  EXPECT_EQ(got.status_code, 2);
  EXPECT_EQ(got.status_message, "provider said 500");
  EXPECT_EQ(got.start_unix_nanos, absl::ToUnixNanos(span.start));
  EXPECT_EQ(got.end_unix_nanos, absl::ToUnixNanos(span.end));
  EXPECT_EQ(got.attributes.at("gen_ai.request.model"), "gpt-4o");
  EXPECT_EQ(got.attributes.at("gen_ai.usage.input_tokens"), "812");
  EXPECT_EQ(got.attributes.at("gen_ai.response.finish_reasons"), "stop,length");
  EXPECT_EQ(got.attributes.at("cached"), "true");
  EXPECT_EQ(got.attributes.at("temperature"), "0.5");
  EXPECT_EQ(got.attributes.at("prompt"), "say \"hi\"\n\xEF\xBF\xBD");
  ASSERT_EQ(got.events.size(), 1u);
  EXPECT_EQ(got.events[0].name, "gen_ai.first_token");
  EXPECT_EQ(got.events[0].unix_nanos, absl::ToUnixNanos(span.start + absl::Milliseconds(1)));
  EXPECT_EQ(got.events[0].attributes.at("step"), "1");
  ASSERT_EQ(got.links.size(), 1u);
  EXPECT_EQ(got.links[0].trace_id, linked.TraceIdHex());
  EXPECT_EQ(got.links[0].span_id, linked.SpanIdHex());
  EXPECT_EQ(receiver_->server().requests()[0].headers.at("x-api-key"), "collector-secret");
  EXPECT_EQ(Value("parley_otel_spans_exported_total"), 1);
}

TEST_F(OtlpExporterTest, SendsAnRpcSpansFieldsAsTheRpcConventionsAttributes) {
  OtlpHttpExporter exporter(Options(), registry_, logger_);
  SpanData ok = MakeSpan("parley.v1.SessionService/GetSession");
  ok.kind = SpanKind::kServer;
  ok.rpc = RpcAttributes{.status_code = 0, .failed = false};
  SpanData failed = MakeSpan("parley.store.v1.StoreService/EnqueueTurn");
  failed.kind = SpanKind::kClient;
  failed.rpc = RpcAttributes{.status_code = 14, .failed = true};
  // An explicit attribute of the same key wins over the one the fields stand for.
  failed.attributes = {{"rpc.system", "grpc-web"}, {"peer", "10.0.0.7"}};
  exporter.OnEnd(ok);
  exporter.OnEnd(failed);
  ASSERT_TRUE(exporter.ForceFlush(absl::Seconds(10)));

  ASSERT_THAT(receiver_->decode_errors(), IsEmpty());
  std::map<std::string, ReceivedSpan> by_name;
  for (ReceivedSpan& span : receiver_->spans()) by_name[span.name] = std::move(span);
  ASSERT_EQ(by_name.size(), 2u);
  const auto& ok_attributes = by_name.at("parley.v1.SessionService/GetSession").attributes;
  EXPECT_EQ(ok_attributes,
            (std::map<std::string, std::string>{{"rpc.system", "grpc"},
                                                {"rpc.service", "parley.v1.SessionService"},
                                                {"rpc.method", "GetSession"},
                                                {"rpc.grpc.status_code", "0"}}));
  const auto& failed_attributes = by_name.at("parley.store.v1.StoreService/EnqueueTurn").attributes;
  EXPECT_EQ(failed_attributes,
            (std::map<std::string, std::string>{{"rpc.system", "grpc-web"},
                                                {"peer", "10.0.0.7"},
                                                {"rpc.service", "parley.store.v1.StoreService"},
                                                {"rpc.method", "EnqueueTurn"},
                                                {"rpc.grpc.status_code", "14"},
                                                {"error.type", "UNAVAILABLE"}}));
  // No key twice in a span (the receiver's map would hide a duplicate): one per span in
  // whatever requests the two went out in.
  size_t systems = 0;
  for (const auto& request : receiver_->server().requests()) {
    const std::string& body = request.body;
    for (size_t at = body.find("\"rpc.system\""); at != std::string::npos;
         at = body.find("\"rpc.system\"", at + 1)) {
      ++systems;
    }
  }
  EXPECT_EQ(systems, 2u);

  // What AllAttributes spells out is what the exporter sent.
  for (const SpanData* span : {&ok, &failed}) {
    std::map<std::string, std::string> spelled;
    for (const auto& [key, value] : AllAttributes(*span)) {
      spelled[key] = std::holds_alternative<int64_t>(value)
                         ? std::to_string(std::get<int64_t>(value))
                         : std::get<std::string>(value);
    }
    EXPECT_EQ(spelled, by_name.at(span->name).attributes) << span->name;
  }
}

TEST_F(OtlpExporterTest, SendsBatchesNoLargerThanTheBatchSize) {
  OtlpExporterOptions options = Options();
  options.max_export_batch_size = 4;
  OtlpHttpExporter exporter(options, registry_, logger_);
  for (int i = 0; i < 10; ++i) exporter.OnEnd(MakeSpan(absl::StrCat("span ", i)));
  ASSERT_TRUE(exporter.ForceFlush(absl::Seconds(10)));

  EXPECT_EQ(receiver_->spans().size(), 10u);
  EXPECT_GE(receiver_->server().requests().size(), 3u);
  for (const auto& request : receiver_->server().requests()) {
    size_t spans_in_request = 0;
    for (size_t at = request.body.find("\"spanId\""); at != std::string::npos;
         at = request.body.find("\"spanId\"", at + 1)) {
      ++spans_in_request;
    }
    EXPECT_LE(spans_in_request, 4u);
  }
}

TEST_F(OtlpExporterTest, RetriesA503AfterTheRetryAfterTheCollectorAsksFor) {
  OtlpExporterOptions options = Options();
  // A computed backoff this long would outlast the test's wait: only Retry-After: 0
  // lets the retry come in time.
  options.initial_backoff = absl::Minutes(5);
  options.max_backoff = absl::Minutes(5);
  receiver_->server().Enqueue({.status = 503, .headers = {{"Retry-After", "0"}}, .chunks = {"{}"}});
  OtlpHttpExporter exporter(options, registry_, logger_);
  exporter.OnEnd(MakeSpan("retried"));

  ASSERT_TRUE(receiver_->server().WaitForRequests(2, absl::Seconds(20)));
  ASSERT_TRUE(exporter.ForceFlush(absl::Seconds(10)));
  EXPECT_EQ(Value("parley_otel_export_retries_total"), 1);
  EXPECT_EQ(Value("parley_otel_spans_exported_total"), 1);
  EXPECT_EQ(DroppedValue("export_failed"), 0);
}

TEST_F(OtlpExporterTest, RetriesA429WithBackoffUntilAccepted) {
  receiver_->server().Enqueue({.status = 429, .chunks = {"{}"}});
  receiver_->server().Enqueue({.status = 429, .chunks = {"{}"}});
  OtlpHttpExporter exporter(Options(), registry_, logger_);
  exporter.OnEnd(MakeSpan("throttled"));
  ASSERT_TRUE(receiver_->server().WaitForRequests(3, absl::Seconds(20)));
  ASSERT_TRUE(exporter.ForceFlush(absl::Seconds(10)));
  EXPECT_EQ(Value("parley_otel_export_retries_total"), 2);
  EXPECT_EQ(Value("parley_otel_spans_exported_total"), 1);
}

TEST_F(OtlpExporterTest, DropsABatchTheCollectorRejectsWithoutRetrying) {
  receiver_->server().Enqueue({.status = 400, .chunks = {"{\"message\":\"bad\"}"}});
  OtlpHttpExporter exporter(Options(), registry_, logger_);
  exporter.OnEnd(MakeSpan("rejected"));
  ASSERT_TRUE(exporter.ForceFlush(absl::Seconds(10)));
  EXPECT_EQ(receiver_->server().requests().size(), 1u);
  EXPECT_EQ(DroppedValue("export_failed"), 1);
  EXPECT_EQ(Value("parley_otel_export_retries_total"), 0);
}

TEST_F(OtlpExporterTest, GivesUpAfterMaxAttempts) {
  OtlpExporterOptions options = Options();
  options.max_attempts = 3;
  receiver_->server().SetDefaultResponse({.status = 503, .chunks = {"{}"}});
  OtlpHttpExporter exporter(options, registry_, logger_);
  exporter.OnEnd(MakeSpan("unlucky"));
  ASSERT_TRUE(exporter.ForceFlush(absl::Seconds(10)));
  EXPECT_EQ(receiver_->server().requests().size(), 3u);
  EXPECT_EQ(DroppedValue("export_failed"), 1);
}

// The collector accepts the connection and never answers: the export thread is stuck in
// its request, yet ending spans stays a queue push, and what does not fit is dropped
// and counted.
TEST_F(OtlpExporterTest, StalledCollectorDropsWhenFullAndNeverBlocksCallers) {
  OtlpExporterOptions options = Options();
  options.max_queue_size = 16;
  options.max_export_batch_size = 4;
  options.export_timeout = absl::Minutes(5);
  options.shutdown_timeout = absl::Milliseconds(100);
  receiver_->server().SetDefaultResponse({.status = 200, .end = FakeResponse::End::kStall});
  OtlpHttpExporter exporter(options, registry_, logger_);
  exporter.OnEnd(MakeSpan("first"));
  ASSERT_TRUE(receiver_->server().WaitForRequests(1, absl::Seconds(20)));

  constexpr int kSpans = 1000;
  for (int i = 0; i < kSpans; ++i) exporter.OnEnd(MakeSpan("while stalled"));
  // At most one more batch left the queue (the stalled one holds the thread).
  EXPECT_GE(DroppedValue("queue_full"), kSpans - 16);
  EXPECT_LE(DroppedValue("queue_full"), kSpans);
}

TEST_F(OtlpExporterTest, UnreachableCollectorDropsWhenFullAndNeverBlocksCallers) {
  OtlpExporterOptions options = Options();
  options.max_queue_size = 16;
  options.max_export_batch_size = 4;
  options.initial_backoff = absl::Minutes(5);
  options.max_backoff = absl::Minutes(5);
  options.shutdown_timeout = absl::Milliseconds(100);
  // Port 1 is privileged and nothing here listens on it: connections are refused.
  options.traces_url = "http://127.0.0.1:1/v1/traces";
  OtlpHttpExporter exporter(options, registry_, logger_);

  constexpr int kSpans = 1000;
  for (int i = 0; i < kSpans; ++i) exporter.OnEnd(MakeSpan("nobody listens"));
  EXPECT_GE(DroppedValue("queue_full"), kSpans - 16 - 4);
}

TEST_F(OtlpExporterTest, DestructionSendsWhatIsQueued) {
  OtlpExporterOptions options = Options();
  options.schedule_delay = absl::Minutes(5);  // Only shutdown would send them.
  {
    OtlpHttpExporter exporter(options, registry_, logger_);
    for (int i = 0; i < 3; ++i) exporter.OnEnd(MakeSpan("last words"));
  }
  EXPECT_EQ(receiver_->spans().size(), 3u);
}

}  // namespace
}  // namespace parley::telemetry
