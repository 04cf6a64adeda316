// Restart recovery with the real parley-sandbox binary: after a crash (SIGKILL) the
// next process finds its live sandboxes again from the state dir, reaps the orphans
// (a sandbox that died meanwhile, a creation interrupted half-way, a workspace nobody
// recorded), and a graceful shutdown keeps tenant sandboxes but releases warm ones.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "parley/sandbox/v1/sandbox.grpc.pb.h"
#include "sandbox-svc/manager/state_store.h"
#include "sandbox-svc/provider/process.h"
#include "tests/harness/services.h"
#include "tests/sandbox/sandbox_test_util.h"

namespace parley::testing {
namespace {

namespace sandbox_pb = ::parley::sandbox::v1;
constexpr char kTenant[] = "tenant-r";

template <typename Predicate>
bool Eventually(Predicate predicate, absl::Duration timeout = absl::Seconds(15)) {
  const absl::Time give_up = absl::Now() + timeout;
  while (!predicate()) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

bool Exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

class Recovery : public ::testing::Test {
 protected:
  Recovery() : state_dir_(TestTempDir() + "/st") {}

  ~Recovery() override {
    // The finally: destroy what we created, stop the service, sweep the state dir.
    if (manager_ == nullptr || !manager_->running()) Start();
    for (const std::string& id : created_) {
      grpc::ClientContext context;
      sandbox_pb::DestroySandboxRequest request;
      request.set_tenant_id(kTenant);
      request.set_sandbox_id(id);
      sandbox_pb::DestroySandboxResponse response;
      (void)stub_->DestroySandbox(&context, request, &response);
    }
    manager_->Signal(SIGTERM);
    (void)manager_->WaitForExit(absl::Seconds(20));
    for (const auto& entry : std::filesystem::directory_iterator(state_dir_ + "/workspaces")) {
      for (pid_t pid : sandbox::ProcessesWithArgument(
               absl::StrCat("parley-sbx:", entry.path().filename().string()))) {
        ::kill(pid, SIGKILL);
      }
    }
  }

  void Start(const std::string& templates = "") {
    std::vector<std::string> args = {"--grpc_addr=127.0.0.1:0",
                                     "--admin_addr=127.0.0.1:0",
                                     "--state_dir=" + state_dir_,
                                     "--sandboxd_path=" + BinaryPath("sandbox-svc/parley-sandboxd"),
                                     "--sandbox_uid_base=2200000",
                                     "--reap_interval=100ms"};
    if (!templates.empty()) args.push_back("--templates=" + templates);
    auto process =
        ServiceProcess::Start({.binary = BinaryPath("sandbox-svc/parley-sandbox"), .args = args});
    ASSERT_TRUE(process.ok()) << process.status();
    manager_ = *std::move(process);
    absl::Status serving = manager_->WaitUntilServing(absl::Seconds(30));
    ASSERT_TRUE(serving.ok()) << serving << manager_->Output();
    stub_ = sandbox_pb::SandboxManager::NewStub(
        grpc::CreateChannel(manager_->grpc_target(), grpc::InsecureChannelCredentials()));
  }

  void Crash() {
    manager_->Signal(SIGKILL);
    ASSERT_TRUE(manager_->WaitForExit(absl::Seconds(10)).ok());
  }

  std::unique_ptr<grpc::ClientContext> Context() {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    return context;
  }

  sandbox_pb::Sandbox Create() {
    sandbox_pb::CreateSandboxRequest request;
    request.set_tenant_id(kTenant);
    sandbox_pb::CreateSandboxResponse response;
    grpc::Status status = stub_->CreateSandbox(Context().get(), request, &response);
    EXPECT_TRUE(status.ok()) << GrpcStatusText(status) << manager_->Output();
    created_.push_back(response.sandbox().id());
    return response.sandbox();
  }

  sandbox_pb::Sandbox Get(const std::string& id) {
    sandbox_pb::GetSandboxRequest request;
    request.set_tenant_id(kTenant);
    request.set_sandbox_id(id);
    sandbox_pb::GetSandboxResponse response;
    grpc::Status status = stub_->GetSandbox(Context().get(), request, &response);
    EXPECT_TRUE(status.ok()) << GrpcStatusText(status);
    return response.sandbox();
  }

  ExecResult Shell(const std::string& id, const std::string& script) {
    sandbox_pb::ExecRequest request;
    request.set_tenant_id(kTenant);
    request.set_sandbox_id(id);
    request.mutable_command()->add_argv("sh");
    request.mutable_command()->add_argv("-c");
    request.mutable_command()->add_argv(script);
    return RunExec(*stub_, request);
  }

  sandbox::SandboxRecord Record(const std::string& id) {
    auto record = sandbox::StateStore(state_dir_ + "/sandboxes").Read(id);
    EXPECT_TRUE(record.ok()) << record.status();
    return record.ok() ? *record : sandbox::SandboxRecord();
  }

  std::string state_dir_;
  std::unique_ptr<ServiceProcess> manager_;
  std::unique_ptr<sandbox_pb::SandboxManager::Stub> stub_;
  std::vector<std::string> created_;
};

TEST_F(Recovery, AfterACrashLiveSandboxesAreFoundAgainAndOrphansReaped) {
  Start();
  sandbox_pb::Sandbox kept = Create();
  ASSERT_EQ(Shell(kept.id(), "echo survived > note").exit.exit_code(), 0);
  sandbox_pb::Sandbox paused = Create();
  ASSERT_EQ(Shell(paused.id(), "echo paused-data > note").exit.exit_code(), 0);
  sandbox_pb::PauseSandboxRequest pause;
  pause.set_tenant_id(kTenant);
  pause.set_sandbox_id(paused.id());
  sandbox_pb::PauseSandboxResponse pause_response;
  ASSERT_TRUE(stub_->PauseSandbox(Context().get(), pause, &pause_response).ok());
  sandbox_pb::Sandbox doomed = Create();
  const std::string doomed_workspace = Record(doomed.id()).provider_state["workspace"];

  Crash();
  // While the service is down: one sandbox dies, a creation is left half-done (its
  // record says CREATING and a process of it runs), and a workspace has no record.
  int64_t doomed_init = 0;
  ASSERT_TRUE(absl::SimpleAtoi(Record(doomed.id()).provider_state["init_pid"], &doomed_init));
  ::kill(static_cast<pid_t>(doomed_init), SIGKILL);
  const std::string orphan_id = "sbx_01ORPHAN000000000000000000";
  sandbox::SandboxRecord orphan;
  orphan.sandbox.set_id(orphan_id);
  orphan.sandbox.set_tenant_id(kTenant);
  orphan.sandbox.set_template_("default");
  orphan.sandbox.set_provider("local");
  orphan.sandbox.set_state(sandbox_pb::SANDBOX_STATE_CREATING);
  const std::string orphan_workspace = absl::StrCat(state_dir_, "/workspaces/", orphan_id);
  orphan.provider_state = {{"id", orphan_id}, {"workspace", orphan_workspace}};
  ASSERT_TRUE(sandbox::StateStore(state_dir_ + "/sandboxes").Write(orphan).ok());
  ::mkdir(orphan_workspace.c_str(), 0700);
  auto orphan_process = ServiceProcess::Start(
      {.binary = "/bin/bash",
       .args = {"-c", absl::StrCat("exec -a parley-sbx:", orphan_id, " sleep 1000")}});
  ASSERT_TRUE(orphan_process.ok());
  ASSERT_TRUE(Eventually([&] {
    return !sandbox::ProcessesWithArgument(absl::StrCat("parley-sbx:", orphan_id)).empty();
  }));
  const std::string stray = absl::StrCat(state_dir_, "/workspaces/sbx_01STRAY0000000000000000000");
  ::mkdir(stray.c_str(), 0700);
  std::ofstream(stray + "/left-behind") << "x";

  Start();
  sandbox_pb::Sandbox found = Get(kept.id());
  EXPECT_EQ(found.state(), sandbox_pb::SANDBOX_STATE_READY);
  ExecResult note = Shell(kept.id(), "cat note");
  EXPECT_EQ(note.stdout_text, "survived\n") << GrpcStatusText(note.status);
  EXPECT_EQ(Get(paused.id()).state(), sandbox_pb::SANDBOX_STATE_PAUSED);
  ExecResult resumed = Shell(paused.id(), "cat note");  // Resumes it first.
  EXPECT_EQ(resumed.stdout_text, "paused-data\n") << GrpcStatusText(resumed.status);
  EXPECT_EQ(Get(paused.id()).state(), sandbox_pb::SANDBOX_STATE_READY);

  sandbox_pb::Sandbox dead = Get(doomed.id());
  EXPECT_EQ(dead.state(), sandbox_pb::SANDBOX_STATE_FAILED);
  EXPECT_FALSE(Exists(doomed_workspace));
  sandbox_pb::Sandbox interrupted = Get(orphan_id);
  EXPECT_EQ(interrupted.state(), sandbox_pb::SANDBOX_STATE_FAILED);
  EXPECT_NE(interrupted.state_message().find("being created"), std::string::npos);
  EXPECT_TRUE(Eventually([&] { return !(*orphan_process)->running(); }))
      << "the orphan process survived the restart";
  EXPECT_FALSE(Exists(orphan_workspace));
  EXPECT_FALSE(Exists(stray));
}

TEST_F(Recovery, GracefulShutdownKeepsTenantSandboxesAndReleasesWarmOnes) {
  const std::string templates = TestTempDir() + "/templates.json";
  std::ofstream(templates) << R"({"templates": [{"name": "default", "warm_pool_target": 1}]})";
  Start(templates);
  ASSERT_TRUE(Eventually([&] {
    sandbox_pb::ListTemplatesResponse response;
    return stub_->ListTemplates(Context().get(), sandbox_pb::ListTemplatesRequest(), &response)
               .ok() &&
           response.templates(0).warm_pool_ready() == 1;
  })) << manager_->Output();
  std::set<std::string> warm;
  auto records_before = sandbox::StateStore(state_dir_ + "/sandboxes").ReadAll(nullptr);
  ASSERT_TRUE(records_before.ok()) << records_before.status();
  for (const auto& record : *records_before) {
    if (record.pooled) warm.insert(record.sandbox.id());
  }
  ASSERT_EQ(warm.size(), 1u);
  sandbox_pb::Sandbox tenant = Create();
  EXPECT_TRUE(warm.count(tenant.id())) << "not handed out from the pool";
  ASSERT_TRUE(Eventually([&] {
    sandbox_pb::ListTemplatesResponse response;
    return stub_->ListTemplates(Context().get(), sandbox_pb::ListTemplatesRequest(), &response)
               .ok() &&
           response.templates(0).warm_pool_ready() == 1;
  }));
  manager_->Signal(SIGTERM);
  ASSERT_TRUE(manager_->WaitForExit(absl::Seconds(20)).ok());
  std::vector<std::string> records;
  for (const auto& entry : std::filesystem::directory_iterator(state_dir_ + "/sandboxes")) {
    records.push_back(entry.path().filename().string());
  }
  EXPECT_EQ(records, std::vector<std::string>{tenant.id() + ".json"});
  std::vector<std::string> workspaces;
  for (const auto& entry : std::filesystem::directory_iterator(state_dir_ + "/workspaces")) {
    workspaces.push_back(entry.path().filename().string());
  }
  EXPECT_EQ(workspaces, std::vector<std::string>{tenant.id()});
  Start(templates);
  EXPECT_EQ(Get(tenant.id()).state(), sandbox_pb::SANDBOX_STATE_READY);
  EXPECT_EQ(Shell(tenant.id(), "echo still here").stdout_text, "still here\n");
}

}  // namespace
}  // namespace parley::testing
