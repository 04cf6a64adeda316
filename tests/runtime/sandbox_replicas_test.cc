// sandbox-svc scaled out: two parley-sandbox processes on loopback (ordinals 2 and 3, one
// state dir each, addresses from the template "127.0.0.{replica}:P"), with real
// bubblewrap, a real parley-session, parley-store, Postgres and Redis. What is asserted
// is what a caller sees: ids that name their owner, calls that reach it through the
// template, a wrong replica that refuses and changes nothing, one sandbox per session
// whichever replica an acquire reaches, and a turn whose tools run on the second one.
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "sandbox-svc/client/replicas.h"
#include "sandbox-svc/contract/sandbox_id.h"
#include "tests/session/session_fixture.h"

namespace parley::session::testing {
namespace {

namespace sandbox_pb = ::parley::sandbox::v1;
namespace sandboxd_pb = ::parley::sandboxd::v1;
using ::parley::sandbox::SandboxReplicas;

constexpr int kFirst = 0;   // Ordinal 2: where services send acquires (the "Service").
constexpr int kSecond = 1;  // Ordinal 3.

class SandboxReplicasTest : public SessionFixture {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 1, .sandbox = true, .sandbox_replicas = 2}));
    absl::StatusOr<std::unique_ptr<SandboxReplicas>> replicas = SandboxReplicas::Create(
        {.service_address = sandbox_process(kFirst).grpc_target(),
         .replica_address_template = sandbox_address_template()},
        [](const std::string& address) {
          return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
        });
    ASSERT_TRUE(replicas.ok()) << replicas.status();
    replicas_ = *std::move(replicas);
  }

  static grpc::ClientContext* WithDeadline(grpc::ClientContext* context) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    return context;
  }

  // Creates a sandbox of kTenantA on replica `index`.
  sandbox_pb::Sandbox CreateOn(int index) {
    grpc::ClientContext context;
    sandbox_pb::CreateSandboxRequest request;
    request.set_tenant_id(kTenantA);
    sandbox_pb::CreateSandboxResponse response;
    grpc::Status status =
        sandboxes(index).CreateSandbox(WithDeadline(&context), request, &response);
    EXPECT_TRUE(status.ok()) << Describe(status);
    return response.sandbox();
  }

  grpc::Status AcquireOn(SandboxReplicas::Stub& stub, const std::string& session,
                         sandbox_pb::AcquireForSessionResponse* response) {
    grpc::ClientContext context;
    sandbox_pb::AcquireForSessionRequest request;
    request.set_tenant_id(kTenantA);
    request.set_session_id(session);
    return stub.AcquireForSession(WithDeadline(&context), request, response);
  }

  // Runs `bash -c command` in `sandbox_id` on `stub`; stdout, or the call's error.
  grpc::Status ExecOn(SandboxReplicas::Stub& stub, const std::string& sandbox_id,
                      const std::string& command, std::string* out) {
    grpc::ClientContext context;
    sandbox_pb::ExecRequest request;
    request.set_tenant_id(kTenantA);
    request.set_sandbox_id(sandbox_id);
    for (const char* arg : {"bash", "-c"}) request.mutable_command()->add_argv(arg);
    request.mutable_command()->add_argv(command);
    auto reader = stub.Exec(WithDeadline(&context), request);
    sandboxd_pb::ExecResponse response;
    while (reader->Read(&response)) *out += response.stdout();
    return reader->Finish();
  }

  // `sandbox_id` as its owner reports it, through the template.
  sandbox_pb::Sandbox GetThroughTemplate(const std::string& sandbox_id) {
    absl::StatusOr<SandboxReplicas::Stub*> owner = replicas_->ForSandbox(sandbox_id);
    EXPECT_TRUE(owner.ok()) << owner.status();
    if (!owner.ok()) return {};
    grpc::ClientContext context;
    sandbox_pb::GetSandboxRequest request;
    request.set_tenant_id(kTenantA);
    request.set_sandbox_id(sandbox_id);
    sandbox_pb::GetSandboxResponse response;
    grpc::Status status = (*owner)->GetSandbox(WithDeadline(&context), request, &response);
    EXPECT_TRUE(status.ok()) << Describe(status);
    return response.sandbox();
  }

  std::unique_ptr<SandboxReplicas> replicas_;
};

std::optional<uint32_t> OwnerOf(const std::string& sandbox_id) {
  absl::StatusOr<std::optional<uint32_t>> owner = parley::sandbox::SandboxIdOwner(sandbox_id);
  EXPECT_TRUE(owner.ok()) << owner.status();
  return owner.ok() ? *owner : std::nullopt;
}

TEST_F(SandboxReplicasTest, SandboxesCreatedThroughEitherReplicaNameIt) {
  const sandbox_pb::Sandbox first = CreateOn(kFirst);
  const sandbox_pb::Sandbox second = CreateOn(kSecond);
  EXPECT_EQ(OwnerOf(first.id()), SandboxOrdinal(kFirst)) << first.id();
  EXPECT_EQ(OwnerOf(second.id()), SandboxOrdinal(kSecond)) << second.id();
  EXPECT_TRUE(absl::StartsWith(second.id(), "sbx_r3_")) << second.id();
  EXPECT_EQ(first.state(), sandbox_pb::SANDBOX_STATE_READY);
  EXPECT_EQ(second.state(), sandbox_pb::SANDBOX_STATE_READY);
}

// Exec and files for each sandbox go to its owner through the template: what one call
// wrote, the next one (routed the same way) reads, on both replicas.
TEST_F(SandboxReplicasTest, ExecAndFilesReachTheOwnerThroughTheTemplate) {
  for (int index : {kFirst, kSecond}) {
    const std::string id = CreateOn(index).id();
    absl::StatusOr<SandboxReplicas::Stub*> owner = replicas_->ForSandbox(id);
    ASSERT_TRUE(owner.ok()) << owner.status();

    grpc::ClientContext write_context;
    sandboxd_pb::WriteFileResponse written;
    auto writer = (*owner)->WriteFile(WithDeadline(&write_context), &written);
    sandbox_pb::WriteFileRequest header;
    header.mutable_header()->set_tenant_id(kTenantA);
    header.mutable_header()->set_sandbox_id(id);
    header.mutable_header()->mutable_file()->set_path("where.txt");
    ASSERT_TRUE(writer->Write(header));
    sandbox_pb::WriteFileRequest data;
    data.set_data(absl::StrCat("written on ", index));
    ASSERT_TRUE(writer->Write(data));
    writer->WritesDone();
    grpc::Status status = writer->Finish();
    ASSERT_TRUE(status.ok()) << Describe(status);

    std::string out;
    status = ExecOn(**owner, id, "cat where.txt", &out);
    ASSERT_TRUE(status.ok()) << Describe(status);
    EXPECT_EQ(out, absl::StrCat("written on ", index));

    grpc::ClientContext read_context;
    sandbox_pb::ReadFileRequest read;
    read.set_tenant_id(kTenantA);
    read.set_sandbox_id(id);
    read.mutable_file()->set_path("where.txt");
    auto reader = (*owner)->ReadFile(WithDeadline(&read_context), read);
    sandboxd_pb::ReadFileResponse chunk;
    std::string content;
    while (reader->Read(&chunk)) content += chunk.data();
    status = reader->Finish();
    ASSERT_TRUE(status.ok()) << Describe(status);
    EXPECT_EQ(content, absl::StrCat("written on ", index));
  }
}

// The second replica's sandbox asked of the first: refused, naming the owner, and
// nothing happened to it (a destroy sent there leaves it READY and its files intact).
TEST_F(SandboxReplicasTest, ACallToTheWrongReplicaIsRefusedNamingTheOwnerAndChangesNothing) {
  const std::string id = CreateOn(kSecond).id();
  std::string out;
  grpc::Status status = ExecOn(sandboxes(kSecond), id, "echo kept > kept.txt", &out);
  ASSERT_TRUE(status.ok()) << Describe(status);

  status = ExecOn(sandboxes(kFirst), id, "rm kept.txt", &out);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Describe(status);
  EXPECT_EQ(ErrorReason(status), "SANDBOX_WRONG_REPLICA");
  EXPECT_TRUE(absl::StrContains(status.error_message(), "replica 3")) << status.error_message();

  grpc::ClientContext context;
  sandbox_pb::DestroySandboxRequest destroy;
  destroy.set_tenant_id(kTenantA);
  destroy.set_sandbox_id(id);
  sandbox_pb::DestroySandboxResponse destroyed;
  status = sandboxes(kFirst).DestroySandbox(WithDeadline(&context), destroy, &destroyed);
  EXPECT_EQ(ErrorReason(status), "SANDBOX_WRONG_REPLICA") << Describe(status);

  EXPECT_EQ(GetThroughTemplate(id).state(), sandbox_pb::SANDBOX_STATE_READY);
  out.clear();
  status = ExecOn(sandboxes(kSecond), id, "cat kept.txt", &out);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(out, "kept\n");
}

// A session's sandbox on the second replica is the one an acquire on the first returns
// (forwarded there), and concurrent first acquires on both replicas end on one sandbox.
TEST_F(SandboxReplicasTest, ASessionHasOneSandboxWhicheverReplicaAnAcquireReaches) {
  const std::string session = CreateSession(kTenantA);
  sandbox_pb::AcquireForSessionResponse on_second;
  grpc::Status status = AcquireOn(sandboxes(kSecond), session, &on_second);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_TRUE(on_second.created());
  sandbox_pb::AcquireForSessionResponse on_first;
  status = AcquireOn(sandboxes(kFirst), session, &on_first);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(on_first.sandbox().id(), on_second.sandbox().id());
  EXPECT_FALSE(on_first.created());

  // Racing first acquires of another session: both callers get the same sandbox, and
  // only one stays alive.
  const std::string raced = CreateSession(kTenantA);
  sandbox_pb::AcquireForSessionResponse answers[2];
  grpc::Status statuses[2];
  std::thread other([&] { statuses[1] = AcquireOn(sandboxes(kSecond), raced, &answers[1]); });
  statuses[0] = AcquireOn(sandboxes(kFirst), raced, &answers[0]);
  other.join();
  ASSERT_TRUE(statuses[0].ok()) << Describe(statuses[0]);
  ASSERT_TRUE(statuses[1].ok()) << Describe(statuses[1]);
  EXPECT_EQ(answers[0].sandbox().id(), answers[1].sandbox().id());
  // Each replica's own sandboxes (a list without a session is never forwarded).
  int live = 0;
  for (int index : {kFirst, kSecond}) {
    grpc::ClientContext context;
    sandbox_pb::ListSandboxesRequest list;
    list.set_tenant_id(kTenantA);
    list.add_states(sandbox_pb::SANDBOX_STATE_READY);
    sandbox_pb::ListSandboxesResponse listed;
    status = sandboxes(index).ListSandboxes(WithDeadline(&context), list, &listed);
    ASSERT_TRUE(status.ok()) << Describe(status);
    for (const sandbox_pb::Sandbox& box : listed.sandboxes()) live += box.session_id() == raced;
  }
  EXPECT_EQ(live, 1);
}

// A turn whose session's sandbox lives on the second replica: session-svc acquires
// through the first (which forwards), then runs the tools on the second through the
// template, and sees the file put there before the turn.
TEST_F(SandboxReplicasTest, ATurnsToolCallRunsInItsSessionsSandboxOnTheSecondReplica) {
  v1::AgentConfig config;
  config.add_tools("bash");
  const std::string session = CreateSessionWith(kTenantA, config);
  sandbox_pb::AcquireForSessionResponse acquired;
  grpc::Status status = AcquireOn(sandboxes(kSecond), session, &acquired);
  ASSERT_TRUE(status.ok()) << Describe(status);
  ASSERT_EQ(OwnerOf(acquired.sandbox().id()), SandboxOrdinal(kSecond));
  std::string out;
  status =
      ExecOn(sandboxes(kSecond), acquired.sandbox().id(), "echo from replica 3 > note.txt", &out);
  ASSERT_TRUE(status.ok()) << Describe(status);

  absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, session, R"(@say Reading it.
@tool bash {"command": "cat note.txt"})");
  ASSERT_TRUE(turn.ok()) << turn.status();
  absl::StatusOr<v1::Turn> ended = WaitForTurnEnd(kTenantA, session, *turn, absl::Seconds(90));
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->status(), v1::TURN_STATUS_SUCCEEDED) << ended->error().message();
  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  std::vector<std::string> outputs;
  std::vector<std::string> attached;
  for (const v1::Event& event : EventsOfTurn(*events, *turn)) {
    if (event.has_tool_result()) outputs.push_back(event.tool_result().output());
    if (event.has_sandbox_attached()) attached.push_back(event.sandbox_attached().sandbox_id());
  }
  ASSERT_EQ(outputs.size(), 1u);
  EXPECT_EQ(outputs[0], "from replica 3\n");
  // No new sandbox was made for the turn (an attach event would say created).
  for (const std::string& id : attached) EXPECT_EQ(id, acquired.sandbox().id());
}

}  // namespace
}  // namespace parley::session::testing
