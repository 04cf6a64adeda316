// One turn with a tool call, sent through the real parley-gateway over real
// parley-session, parley-sandbox (bubblewrap) and parley-store, every one of them
// exporting its spans over OTLP/HTTP to a receiver in this test: together they must form
// one connected trace — gateway SendMessage → session-svc → invoke_agent → chat and
// execute_tool → sandbox-svc and store-svc — with the GenAI attributes on the turn's
// spans, although the turn runs after SendMessage returned.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "parley/v1/parley.grpc.pb.h"
#include "tests/session/session_fixture.h"
#include "tests/telemetry/otlp_receiver.h"

namespace parley::session::testing {
namespace {

using ::parley::testing::FakeResponse;
using ::parley::testing::OtlpReceiver;
using ::parley::testing::ReceivedSpan;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int kServer = 2;
constexpr int kClient = 3;

// The spans of one trace, by span id.
class Trace {
 public:
  Trace(const std::vector<ReceivedSpan>& all, const std::string& trace_id) {
    for (const ReceivedSpan& span : all) {
      if (span.trace_id == trace_id) spans_[span.span_id] = span;
    }
  }

  const ReceivedSpan* Find(const std::string& service, const std::string& name,
                           int kind = 0) const {
    for (const auto& [id, span] : spans_) {
      if (span.service_name == service && span.name == name && (kind == 0 || span.kind == kind)) {
        return &span;
      }
    }
    return nullptr;
  }
  std::vector<const ReceivedSpan*> FindAll(const std::string& service, int kind) const {
    std::vector<const ReceivedSpan*> out;
    for (const auto& [id, span] : spans_) {
      if (span.service_name == service && span.kind == kind) out.push_back(&span);
    }
    return out;
  }
  const ReceivedSpan* Parent(const ReceivedSpan& span) const {
    auto it = spans_.find(span.parent_span_id);
    return it == spans_.end() ? nullptr : &it->second;
  }
  // True when `ancestor` is on the path from `span` to the root.
  bool Descends(const ReceivedSpan& span, const ReceivedSpan& ancestor) const {
    for (const ReceivedSpan* at = Parent(span); at != nullptr; at = Parent(*at)) {
      if (at->span_id == ancestor.span_id) return true;
    }
    return false;
  }
  // Spans whose parent is named but not in the trace (yet).
  std::vector<std::string> Orphans() const {
    std::vector<std::string> out;
    for (const auto& [id, span] : spans_) {
      if (!span.parent_span_id.empty() && Parent(span) == nullptr) {
        out.push_back(absl::StrCat(span.service_name, " ", span.name));
      }
    }
    return out;
  }
  size_t size() const { return spans_.size(); }
  std::string Describe() const {
    std::vector<std::string> lines;
    for (const auto& [id, span] : spans_) {
      lines.push_back(absl::StrCat(span.service_name, " | ", span.name, " | ", id, " <- ",
                                   span.parent_span_id));
    }
    return absl::StrJoin(lines, "\n");
  }

 private:
  std::map<std::string, ReceivedSpan> spans_;
};

class TurnTrace : public SessionFixture {
 protected:
  void SetUp() override {
    auto receiver = OtlpReceiver::Start();
    ASSERT_TRUE(receiver.ok()) << receiver.status();
    receiver_ = *std::move(receiver);
    ASSERT_NO_FATAL_FAILURE(
        StartCluster({.replicas = 1,
                      .gateway = true,
                      .sandbox = true,
                      .service_env = {{"OTEL_EXPORTER_OTLP_ENDPOINT", receiver_->endpoint()},
                                      {"OTEL_BSP_SCHEDULE_DELAY", "50"}}}));
  }

  std::unique_ptr<OtlpReceiver> receiver_;
};

TEST_F(TurnTrace, OneTurnWithAToolCallIsOneTraceAcrossAllFourServices) {
  v1::AgentConfig config;
  config.add_tools("bash");
  const std::string session = CreateSessionWith(kTenantA, config);

  auto stub = v1::SessionService::NewStub(
      grpc::CreateChannel(gateway()->grpc_target(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.AddMetadata("authorization", absl::StrCat("Bearer ", kGatewayApiKey));
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  v1::SendMessageRequest request;
  request.set_session_id(session);
  request.add_content()->set_text("@tool bash {\"command\":\"echo traced\"}\n@say all done");
  v1::SendMessageResponse sent;
  grpc::Status status = stub->SendMessage(&context, request, &sent);
  ASSERT_TRUE(status.ok()) << status.error_message();
  absl::StatusOr<v1::Turn> turn = WaitForTurnEnd(kTenantA, session, sent.turn().id());
  ASSERT_TRUE(turn.ok()) << turn.status();
  ASSERT_EQ(turn->status(), v1::TURN_STATUS_SUCCEEDED);

  // The gateway's SendMessage span is the root (the test sent no traceparent). Spans
  // arrive in batches as each service exports them: poll until the trace is whole.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  std::string trace_id;
  std::unique_ptr<Trace> trace;
  auto complete = [&] {
    std::vector<ReceivedSpan> all = receiver_->spans();
    for (const ReceivedSpan& span : all) {
      if (span.service_name == "parley-gateway" &&
          span.name == "parley.v1.SessionService/SendMessage" && span.kind == kServer) {
        trace_id = span.trace_id;
      }
    }
    if (trace_id.empty()) return false;
    trace = std::make_unique<Trace>(all, trace_id);
    return trace->Find("parley-session", "invoke_agent") != nullptr &&
           trace->Find("parley-session", "execute_tool bash") != nullptr &&
           trace->Find("parley-store", "parley.store.v1.StoreService/CompleteTurn", kServer) !=
               nullptr &&
           !trace->FindAll("parley-sandbox", kServer).empty() && trace->Orphans().empty();
  };
  while (!complete() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(50));
  ASSERT_EQ(receiver_->decode_errors(), std::vector<std::string>{});
  ASSERT_FALSE(trace_id.empty()) << "no SendMessage span from the gateway";
  ASSERT_TRUE(trace != nullptr);
  ASSERT_TRUE(complete()) << "orphans: " << absl::StrJoin(trace->Orphans(), ", ") << "\n"
                          << trace->Describe();

  const ReceivedSpan& root =
      *trace->Find("parley-gateway", "parley.v1.SessionService/SendMessage", kServer);
  EXPECT_TRUE(root.parent_span_id.empty());
  const ReceivedSpan* submit =
      trace->Find("parley-session", "parley.router.v1.SessionRouter/SubmitMessage", kServer);
  ASSERT_NE(submit, nullptr) << trace->Describe();
  EXPECT_TRUE(trace->Descends(*submit, root));

  // The turn: invoke_agent under the SubmitMessage that enqueued it, chat and
  // execute_tool under invoke_agent, sandbox-svc under execute_tool.
  const ReceivedSpan& agent = *trace->Find("parley-session", "invoke_agent");
  EXPECT_EQ(agent.parent_span_id, submit->span_id) << trace->Describe();
  const ReceivedSpan* chat = trace->Find("parley-session", "chat echo", kClient);
  ASSERT_NE(chat, nullptr) << trace->Describe();
  EXPECT_EQ(chat->parent_span_id, agent.span_id);
  const ReceivedSpan& tool = *trace->Find("parley-session", "execute_tool bash");
  EXPECT_EQ(tool.parent_span_id, agent.span_id);
  bool sandbox_under_tool = false;
  for (const ReceivedSpan* span : trace->FindAll("parley-sandbox", kServer)) {
    sandbox_under_tool = sandbox_under_tool || trace->Descends(*span, tool);
  }
  EXPECT_TRUE(sandbox_under_tool) << trace->Describe();
  EXPECT_TRUE(trace->Descends(
      *trace->Find("parley-store", "parley.store.v1.StoreService/CompleteTurn", kServer), root));

  // GenAI attributes.
  for (const ReceivedSpan* span : {&agent, chat, &tool}) {
    EXPECT_EQ(span->attributes.at("gen_ai.conversation.id"), session) << span->name;
    EXPECT_EQ(span->attributes.at("gen_ai.provider.name"), "scripted") << span->name;
    EXPECT_EQ(span->attributes.at("gen_ai.request.model"), "echo") << span->name;
  }
  EXPECT_EQ(agent.attributes.at("gen_ai.operation.name"), "invoke_agent");
  EXPECT_EQ(agent.attributes.at("gen_ai.response.finish_reasons"), "stop");
  EXPECT_EQ(chat->attributes.at("gen_ai.operation.name"), "chat");
  EXPECT_NE(chat->Attribute("gen_ai.usage.input_tokens"), nullptr);
  EXPECT_NE(chat->Attribute("gen_ai.usage.output_tokens"), nullptr);
  EXPECT_NE(chat->Attribute("gen_ai.response.finish_reasons"), nullptr);
  EXPECT_EQ(tool.attributes.at("gen_ai.operation.name"), "execute_tool");
  EXPECT_EQ(tool.attributes.at("gen_ai.tool.name"), "bash");
  EXPECT_FALSE(tool.attributes.at("gen_ai.tool.call.id").empty());
  // The step that streamed text marked its first token.
  bool first_token = false;
  for (const ReceivedSpan& span : receiver_->spans()) {
    if (span.trace_id != trace_id || span.name != "chat echo") continue;
    for (const ReceivedSpan::Event& event : span.events) {
      first_token = first_token || event.name == "gen_ai.first_token";
    }
  }
  EXPECT_TRUE(first_token);

  // The same turn in session-svc's metrics, by label values that are never ids.
  auto metrics = parley::testing::HttpGet(replica(0).admin_port(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  const std::string& text = metrics->second;
  EXPECT_THAT(text, HasSubstr("parley_turns_total{finish_reason=\"stop\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("parley_tool_duration_seconds_count{tool=\"bash\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("parley_turn_steps_count{provider=\"scripted\"} 1\n"));
  EXPECT_THAT(
      text, HasSubstr("parley_turn_time_to_first_token_seconds_count{provider=\"scripted\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("parley_turn_tokens_total{provider=\"scripted\",type=\"output\"}"));
  EXPECT_THAT(text, Not(HasSubstr(session)));
}

// A stalled collector (it accepts the connection and never answers) must cost spans,
// never turns: the services' export queues fill up and drop, counted, while turns keep
// running to the end. The drop counter of parley-session rising proves the turns' spans
// were produced and refused, so the collector really was in their way.
class StalledCollector : public SessionFixture {
 protected:
  void SetUp() override {
    auto receiver = OtlpReceiver::Start();
    ASSERT_TRUE(receiver.ok()) << receiver.status();
    receiver_ = *std::move(receiver);
    receiver_->server().SetDefaultResponse({.status = 200, .end = FakeResponse::End::kStall});
    ASSERT_NO_FATAL_FAILURE(
        StartCluster({.replicas = 1,
                      .gateway = true,
                      .service_env = {{"OTEL_EXPORTER_OTLP_ENDPOINT", receiver_->endpoint()},
                                      {"OTEL_BSP_MAX_QUEUE_SIZE", "4"},
                                      {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2"},
                                      {"OTEL_BSP_SCHEDULE_DELAY", "10"}}}));
  }

  std::unique_ptr<OtlpReceiver> receiver_;
};

TEST_F(StalledCollector, TurnsRunToTheEndAndTheDropCounterRises) {
  const std::string session = CreateSession(kTenantA);
  auto stub = v1::SessionService::NewStub(
      grpc::CreateChannel(gateway()->grpc_target(), grpc::InsecureChannelCredentials()));
  for (int i = 0; i < 5; ++i) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", absl::StrCat("Bearer ", kGatewayApiKey));
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    v1::SendMessageRequest request;
    request.set_session_id(session);
    request.add_content()->set_text(absl::StrCat("@say reply ", i));
    v1::SendMessageResponse sent;
    grpc::Status status = stub->SendMessage(&context, request, &sent);
    ASSERT_TRUE(status.ok()) << status.error_message();
    absl::StatusOr<v1::Turn> turn = WaitForTurnEnd(kTenantA, session, sent.turn().id());
    ASSERT_TRUE(turn.ok()) << turn.status();
    EXPECT_EQ(turn->status(), v1::TURN_STATUS_SUCCEEDED);
  }
  std::optional<double> dropped;
  EXPECT_TRUE(parley::testing::WaitFor(
      absl::Seconds(30),
      [&] {
        absl::StatusOr<std::pair<int, std::string>> page =
            parley::testing::HttpGet(replica(0).admin_port(), "/metrics");
        if (!page.ok() || page->first != 200) return false;
        dropped = parley::testing::MetricSample(
            page->second, "parley_otel_spans_dropped_total{reason=\"queue_full\"}");
        return dropped.has_value() && *dropped > 0;
      }))
      << "dropped: " << (dropped.has_value() ? absl::StrCat(*dropped) : "absent");
}

}  // namespace
}  // namespace parley::session::testing
