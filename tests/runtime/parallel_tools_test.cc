// The agent loop on its own, with the scripted model, a TurnOutput that records what it
// is given, and a sandbox-svc stand-in served in-process over real gRPC: for what needs
// control over the sandbox's timing — read-only calls of one step must overlap.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "parley/sandbox/v1/sandbox.grpc.pb.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "session-svc/agent/agent_runner.h"
#include "session-svc/model/scripted.h"
#include "tests/runtime/recording_output.h"

namespace parley::session {
namespace {

namespace sandbox_pb = ::parley::sandbox::v1;

// ListFiles answers only once `expected` calls are in flight together (or fails after
// ten seconds): calls made one after another can never satisfy it.
class OverlapSandbox final : public sandbox_pb::SandboxManager::Service {
 public:
  explicit OverlapSandbox(int expected) : expected_(expected) {}

  grpc::Status AcquireForSession(grpc::ServerContext*, const sandbox_pb::AcquireForSessionRequest*,
                                 sandbox_pb::AcquireForSessionResponse* response) override {
    response->mutable_sandbox()->set_id("sbx_fake");
    response->set_created(true);
    return grpc::Status::OK;
  }

  grpc::Status ListFiles(grpc::ServerContext*, const sandbox_pb::ListFilesRequest*,
                         sandboxd::v1::ListDirResponse* response) override {
    absl::MutexLock lock(&mu_);
    ++in_flight_;
    auto all_here = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return in_flight_ >= expected_; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&all_here), absl::Seconds(10))) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the calls did not overlap");
    }
    response->add_entries()->set_path("a.txt");
    return grpc::Status::OK;
  }

 private:
  const int expected_;
  absl::Mutex mu_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
};

TEST(ParallelTools, ReadOnlyCallsOfOneStepRunTogether) {
  OverlapSandbox sandbox(/*expected=*/3);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&sandbox);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  sandbox::SandboxReplicas sandbox_replicas(sandbox_pb::SandboxManager::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials())));
  // The scripted model needs no history, so the store is never called.
  auto store_stub = store::v1::StoreService::NewStub(
      grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials()));

  model::ProviderRegistry providers("scripted");
  providers.Add(std::make_unique<model::ScriptedProvider>(model::ScriptedOptions{}));
  AgentRunner runner({}, providers, *store_stub, &sandbox_replicas, RealClock::Get());
  v1::Turn turn;
  turn.set_id("turn_1");
  v1::Session session;
  session.set_id("ses_1");
  session.set_tenant_id("tenant");
  v1::AgentConfig config;
  config.add_tools("list_files");
  v1::Message user;
  user.set_role(v1::ROLE_USER);
  user.add_parts()->set_text(
      "@tool list_files {}\n@tool list_files {\"path\": \"src\"}\n@tool list_files {}");
  RecordingOutput output;
  absl::StatusOr<RunOutcome> outcome = runner.Run(
      {.turn = turn, .session = session, .config = config, .user_message = user}, output);
  server->Shutdown();
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(outcome->finish_reason, v1::FINISH_REASON_STOP);
  int results = 0;
  for (const v1::Event& event : output.events) {
    if (!event.has_tool_result()) continue;
    ++results;
    EXPECT_FALSE(event.tool_result().is_error()) << event.tool_result().output();
    EXPECT_EQ(event.tool_result().output(), "a.txt (0 bytes)\n");
  }
  EXPECT_EQ(results, 3);
}

}  // namespace
}  // namespace parley::session
