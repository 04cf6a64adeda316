// parley.v1.SandboxService through the real parley-gateway, over a real parley-sandbox
// (bubblewrap), parley-store, parley-session, Postgres and Redis: files and processes in
// a session's sandbox — the same sandbox its agent's tools use — with tenancy, scopes,
// closed sessions, and uploads cut short or of another length than declared that leave
// the file as it was.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "parley/v1/parley.grpc.pb.h"
#include "tests/session/session_fixture.h"

namespace parley::session::testing {
namespace {

// What an Exec call produced.
struct Ran {
  grpc::Status status;
  std::string out;
  std::string err;
  int exit_code = -1;
};

// A SandboxService client holding one API key.
// How SandboxClient::Write uploads.
struct WriteOptions {
  bool abort = false;  // Cancel the stream instead of closing it.
  std::optional<uint64_t> size;
  bool append = false;
  std::string idempotency_key;
  bool* replayed = nullptr;  // Set to whether the answer was a replay.
};

class SandboxClient {
 public:
  SandboxClient(const std::string& target, std::string key)
      : stub_(v1::SandboxService::NewStub(
            grpc::CreateChannel(target, grpc::InsecureChannelCredentials()))),
        key_(std::move(key)) {}

  Ran Exec(const std::string& session, const std::vector<std::string>& argv,
           const std::string& idempotency_key = "", bool* replayed = nullptr) {
    grpc::ClientContext context;
    Prepare(context);
    if (!idempotency_key.empty()) context.AddMetadata("idempotency-key", idempotency_key);
    v1::ExecRequest request;
    request.set_session_id(session);
    for (const std::string& arg : argv) request.add_argv(arg);
    auto reader = stub_->Exec(&context, request);
    Ran ran;
    v1::ExecResponse response;
    while (reader->Read(&response)) {
      ran.out += response.stdout();
      ran.err += response.stderr();
      if (response.has_exit()) ran.exit_code = response.exit().exit_code();
    }
    ran.status = reader->Finish();
    if (replayed != nullptr) {
      const auto& trailers = context.GetServerTrailingMetadata();
      *replayed = trailers.find("idempotent-replayed") != trailers.end();
    }
    return ran;
  }

  // Writes `chunks` to `path`.
  grpc::Status Write(const std::string& session, const std::string& path,
                     const std::vector<std::string>& chunks, v1::WriteFileResponse* response,
                     const WriteOptions& options = {}) {
    grpc::ClientContext context;
    Prepare(context);
    if (!options.idempotency_key.empty()) {
      context.AddMetadata("idempotency-key", options.idempotency_key);
    }
    auto writer = stub_->WriteFile(&context, response);
    v1::WriteFileRequest header;
    header.mutable_header()->set_session_id(session);
    header.mutable_header()->set_path(path);
    header.mutable_header()->set_create_parents(true);
    header.mutable_header()->set_append(options.append);
    if (options.size) header.mutable_header()->set_size(*options.size);
    if (!writer->Write(header)) return writer->Finish();
    for (const std::string& chunk : chunks) {
      v1::WriteFileRequest data;
      data.set_data(chunk);
      if (!writer->Write(data)) return writer->Finish();
    }
    if (options.abort) {
      context.TryCancel();
      return writer->Finish();
    }
    writer->WritesDone();
    grpc::Status status = writer->Finish();
    if (options.replayed != nullptr) {
      const auto& trailers = context.GetServerTrailingMetadata();
      *options.replayed = trailers.find("idempotent-replayed") != trailers.end();
    }
    return status;
  }

  grpc::Status Read(const std::string& session, const std::string& path, std::string* content,
                    v1::FileInfo* info = nullptr) {
    grpc::ClientContext context;
    Prepare(context);
    v1::ReadFileRequest request;
    request.set_session_id(session);
    request.set_path(path);
    auto reader = stub_->ReadFile(&context, request);
    v1::ReadFileResponse response;
    content->clear();
    while (reader->Read(&response)) {
      if (response.has_info() && info != nullptr) *info = response.info();
      *content += response.data();
    }
    return reader->Finish();
  }

  grpc::Status List(const std::string& session, const std::string& path,
                    v1::ListFilesResponse* response) {
    grpc::ClientContext context;
    Prepare(context);
    v1::ListFilesRequest request;
    request.set_session_id(session);
    request.set_path(path);
    request.set_recursive(true);
    return stub_->ListFiles(&context, request, response);
  }

  grpc::Status Stat(const std::string& session, const std::string& path,
                    v1::StatFileResponse* response) {
    grpc::ClientContext context;
    Prepare(context);
    v1::StatFileRequest request;
    request.set_session_id(session);
    request.set_path(path);
    return stub_->StatFile(&context, request, response);
  }

  // Every rpc of the service once on `session`, each with how it ended.
  std::vector<std::pair<std::string, grpc::Status>> CallEach(const std::string& session) {
    std::vector<std::pair<std::string, grpc::Status>> out;
    out.emplace_back("Exec", Exec(session, {"true"}).status);
    std::string content;
    out.emplace_back("ReadFile", Read(session, "a.txt", &content));
    v1::WriteFileResponse written;
    out.emplace_back("WriteFile", Write(session, "b.txt", {"x"}, &written));
    v1::ListFilesResponse listed;
    out.emplace_back("ListFiles", List(session, "", &listed));
    v1::StatFileResponse stat;
    out.emplace_back("StatFile", Stat(session, "a.txt", &stat));
    return out;
  }

 private:
  void Prepare(grpc::ClientContext& context) {
    if (!key_.empty()) context.AddMetadata("authorization", "Bearer " + key_);
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  }

  std::unique_ptr<v1::SandboxService::Stub> stub_;
  std::string key_;
};

class GatewaySandbox : public SessionFixture {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 1, .gateway = true, .sandbox = true}));
  }

  SandboxClient As(const std::string& key) { return SandboxClient(gateway()->grpc_target(), key); }
};

TEST_F(GatewaySandbox, FilesAndProcessesOfASessionAreTheSandboxItsAgentUses) {
  v1::AgentConfig config;
  config.add_tools("read_file");
  const std::string session = CreateSessionWith(kTenantA, config);
  SandboxClient client = As(StoredKey(kTenantA, {"sandbox:exec", "sandbox:files"}));

  const std::string program = "print('hello from the sandbox')\n";
  v1::WriteFileResponse written;
  grpc::Status status =
      client.Write(session, "src/hello.py", {program.substr(0, 13), program.substr(13)}, &written);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(written.bytes_written(), program.size());
  EXPECT_EQ(written.info().path(), "src/hello.py");

  std::string content;
  v1::FileInfo info;
  status = client.Read(session, "src/hello.py", &content, &info);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(content, program);
  EXPECT_EQ(info.size_bytes(), program.size());

  v1::ListFilesResponse listed;
  status = client.List(session, "", &listed);
  ASSERT_TRUE(status.ok()) << Describe(status);
  std::vector<std::string> paths;
  for (const v1::FileInfo& entry : listed.entries()) paths.push_back(entry.path());
  EXPECT_EQ(paths, (std::vector<std::string>{"src", "src/hello.py"}));

  v1::StatFileResponse stat;
  status = client.Stat(session, "src", &stat);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(stat.info().type(), v1::FILE_TYPE_DIRECTORY);

  Ran ran = client.Exec(session, {"bash", "-c", "cat src/hello.py; echo oops >&2; exit 3"});
  ASSERT_TRUE(ran.status.ok()) << Describe(ran.status);
  EXPECT_EQ(ran.out, program);
  EXPECT_EQ(ran.err, "oops\n");
  EXPECT_EQ(ran.exit_code, 3);

  // One sandbox for the session, and the agent's read_file sees the file written above.
  absl::StatusOr<std::vector<sandbox::v1::Sandbox>> sandboxes = SessionSandboxes(kTenantA, session);
  ASSERT_TRUE(sandboxes.ok()) << sandboxes.status();
  EXPECT_EQ(sandboxes->size(), 1u);
  absl::StatusOr<std::string> turn_id =
      SubmitTurn(kTenantA, session, "@tool read_file {\"path\": \"src/hello.py\"}\n@say done");
  ASSERT_TRUE(turn_id.ok()) << turn_id.status();
  absl::StatusOr<v1::Turn> turn = WaitForTurnEnd(kTenantA, session, *turn_id, absl::Seconds(90));
  ASSERT_TRUE(turn.ok()) << turn.status();
  EXPECT_EQ(turn->status(), v1::TURN_STATUS_SUCCEEDED);
  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  int results = 0;
  for (const v1::Event& event : *events) {
    if (!event.has_tool_result()) continue;
    ++results;
    EXPECT_FALSE(event.tool_result().is_error()) << event.tool_result().output();
    EXPECT_NE(event.tool_result().output().find("hello from the sandbox"), std::string::npos)
        << event.tool_result().output();
  }
  EXPECT_EQ(results, 1);
  sandboxes = SessionSandboxes(kTenantA, session);
  ASSERT_TRUE(sandboxes.ok()) << sandboxes.status();
  EXPECT_EQ(sandboxes->size(), 1u);
}

// What it proves: an upload that declares its size and is cancelled before all of it
// was sent leaves the file as it was. The gateway cannot always tell a cancel from the
// end of the stream (the cancel may not be visible yet when the read fails), so the
// declared size decides: fewer bytes than declared never commit, whichever end arrived.
TEST_F(GatewaySandbox, AnAbortedUploadLeavesTheFileAsItWas) {
  const std::string session = CreateSession(kTenantA);
  SandboxClient client = As(kGatewayApiKey);
  v1::WriteFileResponse written;
  grpc::Status status = client.Write(session, "notes.txt", {"first version\n"}, &written);
  ASSERT_TRUE(status.ok()) << Describe(status);

  const std::string second = "the whole of a second version\n";
  status = client.Write(session, "notes.txt", {"the whole of", " a second"}, &written,
                        {.abort = true, .size = second.size()});
  EXPECT_THAT(status.error_code(),
              ::testing::AnyOf(grpc::StatusCode::CANCELLED, grpc::StatusCode::INVALID_ARGUMENT))
      << Describe(status);
  std::string content;
  status = client.Read(session, "notes.txt", &content);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(content, "first version\n");
}

// What it proves: the declared size is held both ways, with a clear error naming the
// field, and the file is untouched; the exact size commits. How it makes sure: the short
// stream is half-closed normally (no cancel), so only the size can refuse it.
TEST_F(GatewaySandbox, AnUploadOfAnotherLengthThanDeclaredWritesNothing) {
  const std::string session = CreateSession(kTenantA);
  SandboxClient client = As(kGatewayApiKey);
  v1::WriteFileResponse written;
  ASSERT_TRUE(client.Write(session, "notes.txt", {"first version\n"}, &written).ok());

  grpc::Status status = client.Write(session, "notes.txt", {"short"}, &written, {.size = 100});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  EXPECT_THAT(status.error_message(), ::testing::HasSubstr("header.size"));
  EXPECT_THAT(status.error_message(), ::testing::HasSubstr("after 5 of the 100 bytes"));
  status = client.Write(session, "notes.txt", {"too", " long"}, &written, {.size = 4});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  EXPECT_THAT(status.error_message(), ::testing::HasSubstr("longer than the 4 bytes declared"));
  std::string content;
  ASSERT_TRUE(client.Read(session, "notes.txt", &content).ok());
  EXPECT_EQ(content, "first version\n");

  status = client.Write(session, "notes.txt", {"exact", "ly"}, &written, {.size = 7});
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(written.bytes_written(), 7u);
  ASSERT_TRUE(client.Read(session, "notes.txt", &content).ok());
  EXPECT_EQ(content, "exactly");
}

TEST_F(GatewaySandbox, AnotherTenantsSessionIsNotFoundAndNoSandboxIsMadeForIt) {
  const std::string session = CreateSession(kTenantA);
  CreateSession(kTenantB);  // Tenant B exists, with a key of every scope.
  SandboxClient other = As(StoredKey(kTenantB, {"*"}));
  for (const auto& [rpc, status] : other.CallEach(session)) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << rpc << ": " << Describe(status);
  }
  SandboxClient mine = As(StoredKey(kTenantA, {"*"}));
  for (const auto& [rpc, status] : mine.CallEach("ses_does_not_exist")) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << rpc << ": " << Describe(status);
  }
  absl::StatusOr<std::vector<sandbox::v1::Sandbox>> sandboxes = SessionSandboxes(kTenantA, session);
  ASSERT_TRUE(sandboxes.ok()) << sandboxes.status();
  EXPECT_TRUE(sandboxes->empty());
}

// A malformed request on a valid session is INVALID_ARGUMENT naming its field, and
// touches nothing: no sandbox is created for it.
TEST_F(GatewaySandbox, AMalformedRequestIsRefusedBeforeASandboxIsMade) {
  const std::string session = CreateSession(kTenantA);
  SandboxClient all = As(StoredKey(kTenantA, {"*"}));
  std::string content;
  v1::WriteFileResponse written;
  v1::ListFilesResponse listed;
  v1::StatFileResponse stat;
  const std::vector<std::tuple<std::string, grpc::Status, std::string>> refused = {
      {"Exec", all.Exec(session, {}).status, "argv"},
      {"ReadFile", all.Read(session, "../outside", &content), "path"},
      {"WriteFile", all.Write(session, "/etc/passwd", {"x"}, &written), "header.path"},
      {"ListFiles", all.List(session, "a/../..", &listed), "path"},
      {"StatFile", all.Stat(session, "/", &stat), "path"},
  };
  for (const auto& [rpc, status, field] : refused) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << rpc << ": " << Describe(status);
    auto violations = GetBadRequest(FromGrpcStatus(status));
    ASSERT_TRUE(violations.has_value() && violations->field_violations_size() > 0) << rpc;
    EXPECT_EQ(violations->field_violations(0).field(), field) << rpc;
  }
  absl::StatusOr<std::vector<sandbox::v1::Sandbox>> sandboxes = SessionSandboxes(kTenantA, session);
  ASSERT_TRUE(sandboxes.ok()) << sandboxes.status();
  EXPECT_TRUE(sandboxes->empty());
}

TEST_F(GatewaySandbox, EachCallNeedsItsScopeAndAnOpenSessionNamedByItsId) {
  const std::string session = CreateSession(kTenantA);
  SandboxClient reader = As(StoredKey(kTenantA, {"sessions:read", "sessions:write"}));
  for (const auto& [rpc, status] : reader.CallEach(session)) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED)
        << rpc << ": " << Describe(status);
    std::optional<v1::ErrorInfo> info = GetErrorInfo(FromGrpcStatus(status));
    ASSERT_TRUE(info.has_value()) << rpc;
    EXPECT_EQ(info->metadata().at("scope"), rpc == "Exec" ? "sandbox:exec" : "sandbox:files")
        << rpc;
  }
  // Files only: Exec is refused, files work.
  SandboxClient files = As(StoredKey(kTenantA, {"sandbox:files"}));
  EXPECT_EQ(files.Exec(session, {"true"}).status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  v1::ListFilesResponse listed;
  grpc::Status status = files.List(session, "", &listed);
  EXPECT_TRUE(status.ok()) << Describe(status);

  SandboxClient all = As(kGatewayApiKey);
  for (const auto& [rpc, status] : all.CallEach("")) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << rpc << ": " << Describe(status);
  }
  v1::CloseSessionResponse closed;
  status = CloseSession(kTenantA, session, &closed);
  ASSERT_TRUE(status.ok()) << Describe(status);
  for (const auto& [rpc, status] : all.CallEach(session)) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
        << rpc << ": " << Describe(status);
    std::optional<v1::ErrorInfo> info = GetErrorInfo(FromGrpcStatus(status));
    ASSERT_TRUE(info.has_value()) << rpc;
    EXPECT_EQ(info->reason(), "SESSION_CLOSED") << rpc;
  }
}

// An Exec with an idempotency key runs once: a retry gets the first run's exit again
// and its trailer says so, without running the command (the file it appends to has one
// line); the same key with another command is refused, and another key runs again.
TEST_F(GatewaySandbox, AnExecWithAnIdempotencyKeyRunsAtMostOnce) {
  const std::string session = CreateSession(kTenantA);
  SandboxClient client = As(StoredKey(kTenantA, {"*"}));
  const std::vector<std::string> append = {"bash", "-c", "echo ran >> runs.txt; exit 3"};
  bool replayed = true;
  Ran first = client.Exec(session, append, "exec-once", &replayed);
  ASSERT_TRUE(first.status.ok()) << Describe(first.status);
  EXPECT_EQ(first.exit_code, 3);
  EXPECT_FALSE(replayed);
  std::string runs;
  ASSERT_TRUE(client.Read(session, "runs.txt", &runs).ok());
  EXPECT_EQ(runs, "ran\n");

  // The session's sandbox goes away; the retry only replays, so it makes no new one.
  absl::StatusOr<std::vector<sandbox::v1::Sandbox>> before = SessionSandboxes(kTenantA, session);
  ASSERT_TRUE(before.ok() && before->size() == 1u) << before.status();
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    sandbox::v1::DestroySandboxRequest destroy;
    destroy.set_tenant_id(kTenantA);
    destroy.set_sandbox_id((*before)[0].id());
    sandbox::v1::DestroySandboxResponse destroyed;
    ASSERT_TRUE(sandboxes().DestroySandbox(&context, destroy, &destroyed).ok());
  }
  Ran again = client.Exec(session, append, "exec-once", &replayed);
  ASSERT_TRUE(again.status.ok()) << Describe(again.status);
  EXPECT_EQ(again.exit_code, 3) << "the first run's exit";
  EXPECT_TRUE(replayed);
  absl::StatusOr<std::vector<sandbox::v1::Sandbox>> after = SessionSandboxes(kTenantA, session);
  ASSERT_TRUE(after.ok()) << after.status();
  for (const sandbox::v1::Sandbox& box : *after) {
    EXPECT_EQ(box.id(), (*before)[0].id()) << "a replay acquired a sandbox";
  }

  Ran reused = client.Exec(session, {"bash", "-c", "echo other >> runs.txt"}, "exec-once");
  EXPECT_EQ(reused.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << Describe(reused.status);
  auto info = GetErrorInfo(FromGrpcStatus(reused.status));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->reason(), "IDEMPOTENCY_KEY_REUSED");
  Ran other = client.Exec(session, append, "exec-twice");
  ASSERT_TRUE(other.status.ok()) << Describe(other.status);
  ASSERT_TRUE(client.Read(session, "runs.txt", &runs).ok());
  EXPECT_EQ(runs, "ran\n") << "a new key runs again, in the new sandbox";

  Ran malformed = client.Exec(session, append, std::string(300, 'k'));
  EXPECT_EQ(malformed.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << Describe(malformed.status);
}

// What it proves: an upload with an idempotency key runs once: a retry of an append
// gets the first upload's answer (and the trailer says so) while the file holds the
// data once; the same key with another header is refused, and another key appends
// again. How: the retry sends other bytes, which must not reach the file.
TEST_F(GatewaySandbox, AnUploadWithAnIdempotencyKeyRunsAtMostOnce) {
  const std::string session = CreateSession(kTenantA);
  SandboxClient client = As(StoredKey(kTenantA, {"*"}));
  v1::WriteFileResponse written;
  bool replayed = true;
  grpc::Status status =
      client.Write(session, "log.txt", {"one ", "line\n"}, &written,
                   {.append = true, .idempotency_key = "upload-once", .replayed = &replayed});
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(written.bytes_written(), 9u);
  EXPECT_FALSE(replayed);

  v1::WriteFileResponse again;
  status = client.Write(session, "log.txt", {"a different retry\n"}, &again,
                        {.append = true, .idempotency_key = "upload-once", .replayed = &replayed});
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_TRUE(replayed);
  EXPECT_EQ(again.bytes_written(), 9u) << "the first upload's answer";
  std::string content;
  ASSERT_TRUE(client.Read(session, "log.txt", &content).ok());
  EXPECT_EQ(content, "one line\n");

  v1::WriteFileResponse reused;
  status = client.Write(session, "other.txt", {"x"}, &reused,
                        {.append = true, .idempotency_key = "upload-once"});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Describe(status);
  auto info = GetErrorInfo(FromGrpcStatus(status));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->reason(), "IDEMPOTENCY_KEY_REUSED");

  ASSERT_TRUE(client
                  .Write(session, "log.txt", {"two\n"}, &written,
                         {.append = true, .idempotency_key = "upload-twice"})
                  .ok());
  ASSERT_TRUE(client.Read(session, "log.txt", &content).ok());
  EXPECT_EQ(content, "one line\ntwo\n");
}

}  // namespace
}  // namespace parley::session::testing
