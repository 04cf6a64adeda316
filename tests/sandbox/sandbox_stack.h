// SandboxStack: the whole sandbox service in the test process — BwrapProvider (real
// bubblewrap), SandboxManager on an injected clock, and the gRPC SandboxManagerService
// on a loopback port — with a client stub. Tests drive it through the public API and,
// for expiry, through ReapOnce()/FillPoolsOnce() with a FakeClock.
//
//   SandboxStack stack({.templates_json = kTemplates});
//   sandbox_pb::Sandbox sandbox = stack.Create("tenant-a");
//   ExecResult result = stack.Exec("tenant-a", sandbox.id(), {"echo", "hi"});
//
// Teardown destroys every sandbox it created (a finally, even when a test fails half
// way), then sweeps the state dir so no process or workspace survives the test.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/status.h"
#include "parley/sandbox/v1/sandbox.grpc.pb.h"
#include "sandbox-svc/api/service.h"
#include "sandbox-svc/manager/manager.h"
#include "sandbox-svc/provider/bwrap_provider.h"
#include "sandbox-svc/provider/process.h"
#include "tests/harness/services.h"
#include "tests/sandbox/sandbox_test_util.h"

namespace parley::testing {

namespace sandbox_pb = ::parley::sandbox::v1;

struct StackOptions {
  std::string templates_json;  // Empty: the built-in default template.
  Clock* clock = nullptr;      // Null: the real clock.
  sandbox::ManagerOptions manager;
  std::string pause_mechanism = "auto";
  std::string state_dir;  // Empty: a fresh one (tests of restarts pass the same dir twice).
};

inline sandbox::ManagerOptions ManualManagerOptions() {
  sandbox::ManagerOptions options;
  options.reap_interval = absl::ZeroDuration();  // Tests call ReapOnce().
  options.fill_pools = false;                    // Tests call FillPoolsOnce().
  return options;
}

class SandboxStack {
 public:
  explicit SandboxStack(StackOptions options) : options_(std::move(options)) {
    state_dir_ = options_.state_dir.empty() ? TestTempDir() + "/st" : options_.state_dir;
    ::mkdir(state_dir_.c_str(), 0711);
    auto templates = options_.templates_json.empty()
                         ? absl::StatusOr<sandbox::TemplateSet>(sandbox::DefaultTemplates())
                         : sandbox::ParseTemplates(options_.templates_json);
    EXPECT_TRUE(templates.ok()) << templates.status();
    sandbox::BwrapOptions bwrap;
    bwrap.state_dir = state_dir_;
    bwrap.sandboxd_path = BinaryPath("sandbox-svc/parley-sandboxd");
    bwrap.uid_base = ::geteuid() == 0 ? 2'100'000 : 0;
    bwrap.pause_mechanism = options_.pause_mechanism;
    provider_ = std::make_unique<sandbox::BwrapProvider>(bwrap);
    absl::Status init = provider_->Init();
    EXPECT_TRUE(init.ok()) << init;
    store_ = std::make_unique<sandbox::StateStore>(state_dir_ + "/sandboxes");
    logger_ = std::make_unique<telemetry::Logger>("sandbox-test", telemetry::LogLevel::kWarn);
    Clock& clock = options_.clock != nullptr ? *options_.clock : RealClock::Get();
    manager_ = std::make_unique<sandbox::SandboxManager>(
        options_.manager, *std::move(templates),
        std::map<std::string, sandbox::SandboxProvider*>{{"local", provider_.get()}}, store_.get(),
        clock, logger_.get());
    absl::Status started = manager_->Start();
    EXPECT_TRUE(started.ok()) << started;
    service_ = std::make_unique<sandbox::SandboxManagerService>(manager_.get(), 4);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    stub_ = sandbox_pb::SandboxManager::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  }

  ~SandboxStack() { Shutdown(/*destroy=*/true); }

  // Stops serving; with `destroy`, destroys every sandbox it created and sweeps the
  // state dir (the test's finally). Without it the sandboxes stay for a restart test.
  void Shutdown(bool destroy) {
    if (server_ == nullptr) return;
    if (destroy) {
      for (const auto& [tenant, id] : created_) (void)manager_->Destroy(tenant, id);
    }
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    server_.reset();
    service_.reset();
    manager_->Stop(/*destroy_pooled=*/destroy);
    manager_.reset();
    if (destroy) {
      provider_->CollectGarbage({});  // Nothing of ours may survive.
      provider_->ReleaseCgroupParent();
    }
  }

  sandbox_pb::SandboxManager::Stub& stub() { return *stub_; }
  sandbox::SandboxManager& manager() { return *manager_; }
  sandbox::BwrapProvider& provider() { return *provider_; }
  const std::string& state_dir() const { return state_dir_; }

  // Remembers a sandbox to destroy at teardown.
  void Track(const std::string& tenant, const std::string& id) {
    created_.emplace_back(tenant, id);
  }

  grpc::Status TryCreate(const sandbox_pb::CreateSandboxRequest& request,
                         sandbox_pb::Sandbox* out) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    sandbox_pb::CreateSandboxResponse response;
    grpc::Status status = stub_->CreateSandbox(&context, request, &response);
    if (status.ok()) {
      Track(request.tenant_id(), response.sandbox().id());
      if (out != nullptr) *out = response.sandbox();
    }
    return status;
  }

  sandbox_pb::Sandbox Create(const std::string& tenant, const std::string& template_name = "",
                             uint64_t ttl_s = 0) {
    sandbox_pb::CreateSandboxRequest request;
    request.set_tenant_id(tenant);
    request.set_template_(template_name);
    request.set_ttl_s(ttl_s);
    sandbox_pb::Sandbox sandbox;
    grpc::Status status = TryCreate(request, &sandbox);
    EXPECT_TRUE(status.ok()) << GrpcStatusText(status);
    return sandbox;
  }

  ExecResult Exec(const std::string& tenant, const std::string& id, std::vector<std::string> argv,
                  uint64_t timeout_ms = 0, const std::string& stdin_data = "") {
    sandbox_pb::ExecRequest request;
    request.set_tenant_id(tenant);
    request.set_sandbox_id(id);
    for (auto& arg : argv) request.mutable_command()->add_argv(arg);
    request.mutable_command()->set_timeout_ms(timeout_ms);
    request.mutable_command()->set_stdin(stdin_data);
    return RunExec(*stub_, request);
  }

  // sh -c SCRIPT, returning stdout; expects exit 0.
  std::string Shell(const std::string& tenant, const std::string& id, const std::string& script) {
    ExecResult result = Exec(tenant, id, {"sh", "-c", script});
    EXPECT_TRUE(result.status.ok()) << GrpcStatusText(result.status);
    EXPECT_EQ(result.exit.exit_code(), 0) << script << "\nstderr: " << result.stderr_text;
    return result.stdout_text;
  }

  grpc::Status Get(const std::string& tenant, const std::string& id, sandbox_pb::Sandbox* out) {
    grpc::ClientContext context;
    sandbox_pb::GetSandboxRequest request;
    request.set_tenant_id(tenant);
    request.set_sandbox_id(id);
    sandbox_pb::GetSandboxResponse response;
    grpc::Status status = stub_->GetSandbox(&context, request, &response);
    if (out != nullptr) *out = response.sandbox();
    return status;
  }

  template <typename Request, typename Response, typename Method>
  grpc::Status Call(Method method, const Request& request, Response* response) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    return ((*stub_).*method)(&context, request, response);
  }

  grpc::Status WriteFile(const std::string& tenant, const std::string& id, const std::string& path,
                         const std::string& content) {
    grpc::ClientContext context;
    sandboxd::v1::WriteFileResponse response;
    auto writer = stub_->WriteFile(&context, &response);
    sandbox_pb::WriteFileRequest header;
    header.mutable_header()->set_tenant_id(tenant);
    header.mutable_header()->set_sandbox_id(id);
    header.mutable_header()->mutable_file()->set_path(path);
    writer->Write(header);
    for (size_t offset = 0; offset < content.size(); offset += 1 << 20) {
      sandbox_pb::WriteFileRequest chunk;
      chunk.set_data(content.substr(offset, 1 << 20));
      if (!writer->Write(chunk)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }

  grpc::Status ReadFile(const std::string& tenant, const std::string& id, const std::string& path,
                        std::string* content) {
    grpc::ClientContext context;
    sandbox_pb::ReadFileRequest request;
    request.set_tenant_id(tenant);
    request.set_sandbox_id(id);
    request.mutable_file()->set_path(path);
    auto reader = stub_->ReadFile(&context, request);
    sandboxd::v1::ReadFileResponse message;
    content->clear();
    while (reader->Read(&message)) *content += message.data();
    return reader->Finish();
  }

  // The provider state recorded for a sandbox (pids, paths).
  // Read-only: the manager owns the directory.
  sandbox::ProviderState StateOf(const std::string& id) {
    auto record = sandbox::StateStore(state_dir_ + "/sandboxes").Read(id);
    return record.ok() ? record->provider_state : sandbox::ProviderState();
  }

 private:
  StackOptions options_;
  std::string state_dir_;
  std::unique_ptr<sandbox::BwrapProvider> provider_;
  std::unique_ptr<sandbox::StateStore> store_;
  std::unique_ptr<telemetry::Logger> logger_;
  std::unique_ptr<sandbox::SandboxManager> manager_;
  std::unique_ptr<sandbox::SandboxManagerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<sandbox_pb::SandboxManager::Stub> stub_;
  std::vector<std::pair<std::string, std::string>> created_;
};

inline std::string ErrorReasonOf(const grpc::Status& status) {
  auto info = GetErrorInfo(FromGrpcStatus(status));
  return info ? info->reason() : "";
}

}  // namespace parley::testing
