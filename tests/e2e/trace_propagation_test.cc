// A trace id sent to the gateway in `traceparent` shows up in the gateway's own log and
// in the `traceparent` it sends downstream, where a fake session-svc (a real gRPC server
// speaking the SessionRouter protocol) records what arrives.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/ids.h"
#include "common/status.h"
#include "parley/router/v1/router.grpc.pb.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "parley/v1/parley.grpc.pb.h"
#include "telemetry/trace_context.h"
#include "tests/harness/services.h"

namespace parley::testing {
namespace {

using telemetry::TraceContext;
using ::testing::HasSubstr;

constexpr char kApiKey[] = "pk_test_bootstrap_secret";

class FakeSessionRouter final : public router::v1::SessionRouter::CallbackService {
 public:
  grpc::ServerUnaryReactor* SubmitMessage(grpc::CallbackServerContext* context,
                                          const router::v1::SubmitMessageRequest* request,
                                          v1::SendMessageResponse* response) override {
    absl::MutexLock lock(&mu_);
    ++calls_;
    tenant_id_ = request->tenant_id();
    auto it = context->client_metadata().find("traceparent");
    if (it != context->client_metadata().end()) {
      traceparent_ = std::string(it->second.data(), it->second.size());
    }
    auto* reactor = context->DefaultReactor();
    if (request->request().session_id() == "ses_slow") {
      // Answer later, from another thread, so the call is in flight for a while.
      received_slow_.Notify();
      std::thread([reactor, response, this] {
        release_slow_.WaitForNotification();
        response->mutable_turn()->set_id("turn_slow");
        reactor->Finish(grpc::Status::OK);
      }).detach();
      return reactor;
    }
    if (request->request().session_id() == "ses_busy") {
      absl::Status busy = absl::FailedPreconditionError("a turn is running");
      SetErrorInfo(busy, "SESSION_BUSY");
      reactor->Finish(ToGrpcStatus(busy));
    } else {
      response->mutable_turn()->set_id("turn_fake");
      reactor->Finish(grpc::Status::OK);
    }
    return reactor;
  }
  // For the slow path: the call has arrived / may now finish.
  absl::Notification received_slow_;
  absl::Notification release_slow_;

  int calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  std::string traceparent() {
    absl::MutexLock lock(&mu_);
    return traceparent_;
  }
  std::string tenant_id() {
    absl::MutexLock lock(&mu_);
    return tenant_id_;
  }

 private:
  absl::Mutex mu_;
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::string traceparent_ ABSL_GUARDED_BY(mu_);
  std::string tenant_id_ ABSL_GUARDED_BY(mu_);
};

// The part of store-svc these tests reach: key lookups, answered the way store-svc
// answers a secret it does not know.
class UnknownKeysStore final : public store::v1::StoreService::CallbackService {
 public:
  grpc::ServerUnaryReactor* ResolveApiKey(grpc::CallbackServerContext* context,
                                          const store::v1::ResolveApiKeyRequest*,
                                          store::v1::ResolveApiKeyResponse*) override {
    lookups_.fetch_add(1);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown or revoked api key"));
    return reactor;
  }
  int lookups() const { return lookups_.load(); }

 private:
  std::atomic<int> lookups_ = 0;
};

class TracePropagationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &router_port_);
    builder.RegisterService(&router_);
    router_server_ = builder.BuildAndStart();
    ASSERT_NE(router_port_, 0);
    // The gateway serves only while Redis and store-svc answer; these calls need
    // neither, so a healthy stand-in that knows no key is enough for the store.
    auto redis = TestRedis::Create();
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    auto store = ServingHealthServer::Start(&keys_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto gateway = ServiceProcess::Start(
        {.binary = BinaryPath("gateway/parley-gateway"),
         .args = {"--grpc_addr=127.0.0.1:0", "--admin_addr=127.0.0.1:0", "--log_level=debug",
                  "--session_addr=127.0.0.1:" + std::to_string(router_port_),
                  "--redis_url=" + redis_->url(), "--store_addr=" + store_->target()},
         .env = {{"PARLEY_BOOTSTRAP_API_KEY", kApiKey}}});
    ASSERT_TRUE(gateway.ok()) << gateway.status();
    gateway_ = *std::move(gateway);
    ASSERT_TRUE(gateway_->WaitUntilServing(absl::Seconds(30)).ok()) << gateway_->Output();
    stub_ = v1::SessionService::NewStub(
        grpc::CreateChannel(gateway_->grpc_target(), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (router_server_) router_server_->Shutdown();
  }

  grpc::Status Send(const std::string& session_id, const TraceContext* trace,
                    const char* api_key = kApiKey) {
    grpc::ClientContext context;
    if (api_key != nullptr) context.AddMetadata("authorization", std::string("Bearer ") + api_key);
    if (trace != nullptr) context.AddMetadata("traceparent", trace->ToTraceparent());
    v1::SendMessageRequest request;
    request.set_session_id(session_id);
    v1::SendMessageResponse response;
    grpc::Status status = stub_->SendMessage(&context, request, &response);
    last_turn_id_ = response.turn().id();
    return status;
  }

  // JSON log lines of the gateway that carry `trace_id`.
  std::vector<nlohmann::json> LinesOfTrace(const std::string& trace_id) {
    std::vector<nlohmann::json> lines;
    for (absl::string_view line : absl::StrSplit(gateway_->Output(), '\n')) {
      if (line.empty() || line.front() != '{') continue;
      nlohmann::json json = nlohmann::json::parse(std::string(line), nullptr, false);
      if (!json.is_discarded() && json.value("trace_id", "") == trace_id) lines.push_back(json);
    }
    return lines;
  }

  FakeSessionRouter router_;
  std::unique_ptr<grpc::Server> router_server_;
  std::unique_ptr<TestRedis> redis_;
  UnknownKeysStore keys_;  // Outlives store_, which serves it.
  std::unique_ptr<ServingHealthServer> store_;
  int router_port_ = 0;
  std::unique_ptr<ServiceProcess> gateway_;
  std::unique_ptr<v1::SessionService::Stub> stub_;
  std::string last_turn_id_;
};

TEST_F(TracePropagationTest, TraceIdReachesTheLogAndTheDownstreamCall) {
  TraceContext caller = TraceContext::NewRoot();
  grpc::Status status = Send("ses_1", &caller);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(last_turn_id_, "turn_fake");
  EXPECT_EQ(router_.tenant_id(), "default");

  auto downstream = TraceContext::Parse(router_.traceparent());
  ASSERT_TRUE(downstream.has_value()) << router_.traceparent();
  EXPECT_EQ(downstream->TraceIdHex(), caller.TraceIdHex());
  EXPECT_NE(downstream->span_id(), caller.span_id());

  // The gateway logged the call with the caller's trace id; its span chain is
  // caller -> gateway SERVER span -> gateway CLIENT span (the downstream parent).
  // Log lines are written when spans end, so wait for them briefly.
  std::vector<nlohmann::json> lines;
  for (int i = 0; i < 1000; ++i) {
    lines = LinesOfTrace(caller.TraceIdHex());
    if (lines.size() >= 3) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  std::string server_span_id;
  for (const auto& line : lines) {
    if (line["msg"] == "rpc" && line["method"] == "/parley.v1.SessionService/SendMessage") {
      server_span_id = line["span_id"];
    }
  }
  ASSERT_FALSE(server_span_id.empty()) << gateway_->Output();
  bool client_span_found = false;
  for (const auto& line : lines) {
    if (line["msg"] == "span" && line["span_id"] == downstream->SpanIdHex()) {
      client_span_found = true;
      EXPECT_EQ(line["parent_span_id"], server_span_id);
      EXPECT_EQ(line["span_name"], "parley.router.v1.SessionRouter/SubmitMessage");
    }
  }
  EXPECT_TRUE(client_span_found) << gateway_->Output();
}

// Proves: ids that calls carry (session ids, trace and span ids, the tenant, the API
// key) never become metric labels, where each distinct value would be a new series.
// Making sure ids were there to leak: the calls reached the gateway's handlers (the
// router saw them, with their trace) and the page does count them.
TEST_F(TracePropagationTest, MetricsCarryNoIdInAnyLabel) {
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    const std::string session_id = NewId("ses");
    TraceContext trace = TraceContext::NewRoot();
    ASSERT_TRUE(Send(session_id, &trace).ok());
    ASSERT_FALSE(last_turn_id_.empty());
    ids.insert(ids.end(), {session_id, trace.TraceIdHex(), trace.SpanIdHex(), last_turn_id_});
    ASSERT_EQ(Send("ses_busy", &trace).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  EXPECT_EQ(Send(NewId("ses"), nullptr, "pk_wrong").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  ASSERT_EQ(router_.calls(), 6);
  ASSERT_FALSE(router_.tenant_id().empty());
  ids.insert(ids.end(), {"ses_busy", router_.tenant_id(), kApiKey, "pk_wrong"});

  // Handled-call counters are updated as calls end: wait until all seven are counted.
  std::string metrics;
  const bool counted = WaitFor(absl::Seconds(10), [&] {
    auto page = HttpGet(gateway_->admin_port(), "/metrics");
    if (!page.ok() || page->first != 200) return false;
    metrics = page->second;
    return metrics.find(
               "parley_grpc_server_handled_total{method=\"/parley.v1.SessionService/"
               "SendMessage\",code=\"OK\"} 3") != std::string::npos;
  });
  ASSERT_TRUE(counted) << metrics;

  for (const std::string& value : MetricLabelValues(metrics)) {
    for (const std::string& id : ids) {
      EXPECT_EQ(value.find(id), std::string::npos)
          << "label value \"" << value << "\" holds " << id;
    }
    EXPECT_FALSE(HoldsIdShape(value)) << "label value looks like an id: " << value;
  }
}

TEST_F(TracePropagationTest, StructuredErrorsPassThroughTheGatewayUnchanged) {
  grpc::Status status = Send("ses_busy", nullptr);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  auto info = GetErrorInfo(FromGrpcStatus(status));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->reason(), "SESSION_BUSY");
}

TEST_F(TracePropagationTest, MissingOrWrongApiKeyIsRejectedBeforeAnythingIsForwarded) {
  EXPECT_EQ(Send("ses_1", nullptr, nullptr).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  grpc::Status wrong = Send("ses_1", nullptr, "pk_wrong");
  EXPECT_EQ(wrong.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(keys_.lookups(), 1) << "the unknown key was not looked up in store-svc";
  EXPECT_THAT(wrong.error_message(), ::testing::Not(HasSubstr("pk_wrong")));
  EXPECT_EQ(router_.calls(), 0);
  EXPECT_THAT(gateway_->Output(), ::testing::Not(HasSubstr(kApiKey)));
}

TEST_F(TracePropagationTest, SigtermDrainsTheInFlightCallThenExitsZero) {
  absl::Notification done;
  grpc::Status status;
  v1::SendMessageResponse response;
  grpc::ClientContext context;
  context.AddMetadata("authorization", std::string("Bearer ") + kApiKey);
  v1::SendMessageRequest request;
  request.set_session_id("ses_slow");
  stub_->async()->SendMessage(&context, &request, &response, [&](grpc::Status s) {
    status = std::move(s);
    done.Notify();
  });
  ASSERT_TRUE(router_.received_slow_.WaitForNotificationWithTimeout(absl::Seconds(10)));

  gateway_->Signal(SIGTERM);
  // The gateway is draining: it has not exited while the call is still open.
  for (int i = 0; i < 500 && gateway_->Output().find("draining") == std::string::npos; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_THAT(gateway_->Output(), HasSubstr("draining"));
  EXPECT_TRUE(gateway_->running());
  EXPECT_FALSE(done.HasBeenNotified());

  router_.release_slow_.Notify();
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.turn().id(), "turn_slow");
  auto code = gateway_->WaitForExit(absl::Seconds(20));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
}

}  // namespace
}  // namespace parley::testing
