// The interceptors, in process: a trace entering one server continues into the call it
// makes to the next, and every call is counted.
#include "telemetry/grpc_telemetry.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "parley/router/v1/router.grpc.pb.h"

namespace parley::telemetry {
namespace {

using ::testing::HasSubstr;

// The last hop: records the traceparent it was called with.
class RecordingRouter final : public router::v1::SessionRouter::CallbackService {
 public:
  grpc::ServerUnaryReactor* SubmitMessage(grpc::CallbackServerContext* context,
                                          const router::v1::SubmitMessageRequest*,
                                          v1::SendMessageResponse*) override {
    auto it = context->client_metadata().find("traceparent");
    if (it != context->client_metadata().end()) {
      seen_traceparent = std::string(it->second.data(), it->second.size());
    }
    seen_span = CurrentSpan(context);
    seen_deadline = absl::FromChrono(context->deadline());
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "no such session"));
    return reactor;
  }
  std::string seen_traceparent;
  std::optional<TraceContext> seen_span;
  absl::Time seen_deadline = absl::InfinitePast();
};

// The middle hop: forwards to the last one with PrepareDownstream.
class ForwardingRouter final : public router::v1::SessionRouter::CallbackService {
 public:
  explicit ForwardingRouter(std::shared_ptr<grpc::Channel> next)
      : next_(router::v1::SessionRouter::NewStub(next)) {}
  grpc::ServerUnaryReactor* SubmitMessage(grpc::CallbackServerContext* context,
                                          const router::v1::SubmitMessageRequest* request,
                                          v1::SendMessageResponse* response) override {
    seen_span = CurrentSpan(context);
    grpc::ClientContext downstream;
    PrepareDownstream(*context, downstream, absl::Seconds(5));
    grpc::Status status = next_->SubmitMessage(&downstream, *request, response);
    auto* reactor = context->DefaultReactor();
    reactor->Finish(status);
    return reactor;
  }
  std::optional<TraceContext> seen_span;

 private:
  std::unique_ptr<router::v1::SessionRouter::Stub> next_;
};

// A server span ends when the server has finished the call, which may be just after the
// client already holds the answer; so tests wait for the spans (bounded, 10 s) instead of
// reading the sink at once. Returns what the sink holds then.
std::vector<SpanData> WaitForSpans(RecordingSpanSink& sink, size_t count) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (sink.spans().size() < count && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  return sink.spans();
}

// The same for the registry: server counters are updated when calls end.
std::string WaitForMetric(const Registry& registry, const std::string& line) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  std::string text = registry.RenderText();
  while (text.find(line) == std::string::npos && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
    text = registry.RenderText();
  }
  return text;
}

struct Server {
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

Server StartServer(grpc::Service* service, GrpcTelemetry& telemetry) {
  Server out;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &out.port);
  builder.RegisterService(service);
  builder.experimental().SetInterceptorCreators(telemetry.ServerInterceptors());
  out.server = builder.BuildAndStart();
  return out;
}

// A background worker (a turn) opens a ContextScope instead of passing the trace to
// every call; its calls become children of the scope's span, and an unsampled scope
// keeps the next hop from recording.
TEST(GrpcTelemetry, CallsInsideAContextScopeAreChildrenOfItsSpan) {
  Registry registry;
  Logger logger("test", LogLevel::kError);
  RecordingSpanSink sink;
  GrpcTelemetry telemetry(registry, logger, sink);
  RecordingRouter last;
  Server last_server = StartServer(&last, telemetry);
  auto stub = router::v1::SessionRouter::NewStub(
      telemetry.CreateChannel("127.0.0.1:" + std::to_string(last_server.port)));

  const TraceContext turn = TraceContext::NewRoot().NewChild();
  {
    ContextScope scope(turn);
    grpc::ClientContext context;
    router::v1::SubmitMessageRequest request;
    v1::SendMessageResponse response;
    stub->SubmitMessage(&context, request, &response);
  }
  std::vector<SpanData> spans = WaitForSpans(sink, 2);
  ASSERT_EQ(spans.size(), 2u);
  for (const SpanData& span : spans) {
    EXPECT_EQ(span.context.trace_id(), turn.trace_id());
    if (span.kind == SpanKind::kClient) {
      EXPECT_EQ(span.parent_span_id, turn.span_id());
    }
  }
  ASSERT_TRUE(last.seen_span.has_value());
  EXPECT_EQ(last.seen_span->trace_id(), turn.trace_id());

  const TraceContext unsampled = TraceContext::NewRoot(/*sampled=*/false);
  for (const TraceContext& parent : {unsampled, turn}) {
    ContextScope scope(parent);
    grpc::ClientContext context;
    router::v1::SubmitMessageRequest request;
    v1::SendMessageResponse response;
    stub->SubmitMessage(&context, request, &response);
    if (!parent.sampled()) {
      ASSERT_TRUE(last.seen_span.has_value());
      EXPECT_FALSE(last.seen_span->sampled());
    }
  }
  // The server records a span before it answers, so once the sampled call after it is
  // in, anything the unsampled call recorded would be too.
  spans = WaitForSpans(sink, 4);
  EXPECT_EQ(spans.size(), 4u);
  for (const SpanData& span : spans) EXPECT_NE(span.context.trace_id(), unsampled.trace_id());
}

TEST(GrpcTelemetry, TraceAndDeadlineContinueAcrossTwoHopsAndCallsAreCounted) {
  Registry registry;
  Logger logger("test", LogLevel::kError);
  RecordingSpanSink sink;
  GrpcTelemetry telemetry(registry, logger, sink);

  RecordingRouter last;
  Server last_server = StartServer(&last, telemetry);
  ForwardingRouter middle(telemetry.CreateChannel("127.0.0.1:" + std::to_string(last_server.port)));
  Server middle_server = StartServer(&middle, telemetry);

  TraceContext caller = TraceContext::NewRoot();
  auto stub = router::v1::SessionRouter::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(middle_server.port), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.AddMetadata("traceparent", caller.ToTraceparent());
  const absl::Time caller_deadline = absl::Now() + absl::Seconds(3);
  context.set_deadline(absl::ToChronoTime(caller_deadline));
  router::v1::SubmitMessageRequest request;
  v1::SendMessageResponse response;
  grpc::Status status = stub->SubmitMessage(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);

  // The caller's deadline reached the last hop (not the middle hop's 5 s cap).
  EXPECT_LE(last.seen_deadline, caller_deadline + absl::Milliseconds(50));
  EXPECT_GT(last.seen_deadline, caller_deadline - absl::Seconds(3));

  // The middle server's span is a child of the caller's span, in the same trace.
  ASSERT_TRUE(middle.seen_span.has_value());
  EXPECT_EQ(middle.seen_span->trace_id(), caller.trace_id());
  EXPECT_NE(middle.seen_span->span_id(), caller.span_id());

  // The last hop sees the same trace id, with a parent that is neither the caller's
  // span nor the middle server's span: it is the middle server's CLIENT span.
  auto received = TraceContext::Parse(last.seen_traceparent);
  ASSERT_TRUE(received.has_value()) << last.seen_traceparent;
  EXPECT_EQ(received->trace_id(), caller.trace_id());
  EXPECT_NE(received->span_id(), caller.span_id());
  EXPECT_NE(received->span_id(), middle.seen_span->span_id());
  ASSERT_TRUE(last.seen_span.has_value());
  EXPECT_EQ(last.seen_span->trace_id(), caller.trace_id());

  // Spans link up: server(middle) <- client(middle->last) <- server(last).
  std::vector<SpanData> spans = WaitForSpans(sink, 3);
  ASSERT_EQ(spans.size(), 3u);
  const SpanData* client_span = nullptr;
  for (const SpanData& span : spans) {
    EXPECT_EQ(span.context.trace_id(), caller.trace_id());
    if (span.kind == SpanKind::kClient) client_span = &span;
  }
  ASSERT_NE(client_span, nullptr);
  EXPECT_EQ(client_span->parent_span_id, middle.seen_span->span_id());
  EXPECT_EQ(client_span->context.span_id(), received->span_id());
  EXPECT_EQ(client_span->status, SpanStatus::kError);
  EXPECT_EQ(std::get<int64_t>(AllAttributes(*client_span).at("rpc.grpc.status_code")),
            static_cast<int64_t>(grpc::StatusCode::NOT_FOUND));

  std::string metrics =
      WaitForMetric(registry,
                    "parley_grpc_server_handling_seconds_count{method=\"/parley.router.v1."
                    "SessionRouter/SubmitMessage\"} 2");
  EXPECT_THAT(metrics, HasSubstr("parley_grpc_server_handled_total{method=\"/parley.router.v1."
                                 "SessionRouter/SubmitMessage\",code=\"NOT_FOUND\"} 2"));
  EXPECT_THAT(metrics, HasSubstr("parley_grpc_client_handled_total{method=\"/parley.router.v1."
                                 "SessionRouter/SubmitMessage\",code=\"NOT_FOUND\"} 1"));
  EXPECT_THAT(metrics, HasSubstr("parley_grpc_server_handling_seconds_count{method=\"/parley."
                                 "router.v1.SessionRouter/SubmitMessage\"} 2"));

  // A caller without a deadline: the middle hop caps the call it makes (5 s here), so
  // no backend call waits forever.
  grpc::ClientContext no_deadline;
  last.seen_deadline = absl::InfinitePast();
  const absl::Time sent = absl::Now();
  EXPECT_EQ(stub->SubmitMessage(&no_deadline, request, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_LE(last.seen_deadline, absl::Now() + absl::Seconds(5) + absl::Milliseconds(50));
  EXPECT_GT(last.seen_deadline, sent);
  middle_server.server->Shutdown();
  last_server.server->Shutdown();
}

TEST(GrpcTelemetry, CallWithoutTraceparentStartsANewTrace) {
  Registry registry;
  Logger logger("test", LogLevel::kError);
  RecordingSpanSink sink;
  GrpcTelemetry telemetry(registry, logger, sink);
  RecordingRouter last;
  Server server = StartServer(&last, telemetry);
  auto stub = router::v1::SessionRouter::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(server.port), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  router::v1::SubmitMessageRequest request;
  v1::SendMessageResponse response;
  stub->SubmitMessage(&context, request, &response);
  ASSERT_TRUE(last.seen_span.has_value());
  std::vector<SpanData> spans = WaitForSpans(sink, 1);
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_FALSE(spans[0].parent_span_id.has_value());
  server.server->Shutdown();
}

}  // namespace
}  // namespace parley::telemetry
