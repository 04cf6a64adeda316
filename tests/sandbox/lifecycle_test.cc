// Sandbox lifecycle through the SandboxManager API on real bubblewrap sandboxes:
// create/exec/files/destroy, tenancy, acquire-for-session, quotas, listing, warm pools,
// TTL and idle expiry on a FakeClock, pause/resume keeping TTL and limits, dead
// sandboxes, and the protocol check at connect.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "parley/sandboxd/v1/sandboxd.grpc.pb.h"
#include "sandbox-svc/manager/daemon_client.h"
#include "tests/sandbox/cgroup_probe.h"
#include "tests/sandbox/sandbox_stack.h"

namespace parley::testing {
namespace {

constexpr char kTenant[] = "tenant-a";

// A template with a warm pool and one that pauses on expiry, beside the default.
constexpr char kTemplates[] = R"({
  "default_template": "default",
  "templates": [
    {"name": "default", "limits": {"memory_bytes": 1073741824, "max_processes": 256,
                                   "max_open_files": 512, "max_file_size_bytes": 10485760},
     "default_ttl_s": 3600, "default_idle_timeout_s": 900},
    {"name": "pooled", "warm_pool_target": 2, "default_ttl_s": 600},
    {"name": "pausing", "default_on_expiry": "pause", "default_ttl_s": 120,
     "default_idle_timeout_s": 0,
     "limits": {"memory_bytes": 536870912, "max_processes": 100, "max_open_files": 321,
                "max_file_size_bytes": 2097152}}
  ]})";

// Bounded wait for a condition that depends on real processes.
template <typename Predicate>
bool Eventually(Predicate predicate, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time give_up = absl::Now() + timeout;
  while (!predicate()) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

class Lifecycle : public ::testing::Test {
 protected:
  Lifecycle() {
    StackOptions options;
    options.templates_json = kTemplates;
    options.clock = &clock_;
    options.manager = ManualManagerOptions();
    options.manager.max_sandboxes_per_tenant = 3;
    stack_ = std::make_unique<SandboxStack>(options);
  }
  FakeClock clock_;
  std::unique_ptr<SandboxStack> stack_;
};

TEST_F(Lifecycle, CreateRunsCommandsAndFilesThenDestroyRemovesEverything) {
  sandbox_pb::Sandbox sandbox = stack_->Create(kTenant);
  ASSERT_EQ(sandbox.state(), sandbox_pb::SANDBOX_STATE_READY);
  EXPECT_EQ(sandbox.tenant_id(), kTenant);
  EXPECT_EQ(sandbox.template_(), "default");
  EXPECT_EQ(sandbox.provider(), "local");
  EXPECT_EQ(sandbox.ttl_s(), 3600u);
  EXPECT_EQ(FromTimestamp(sandbox.expire_time()), clock_.Now() + absl::Seconds(3600));
  EXPECT_EQ(sandbox.limits().max_open_files(), 512u);

  ExecResult hello = stack_->Exec(kTenant, sandbox.id(), {"sh", "-c", "echo hi; id -u; pwd"});
  ASSERT_TRUE(hello.status.ok()) << GrpcStatusText(hello.status);
  EXPECT_EQ(hello.stdout_text, "hi\n1000\n/workspace\n");
  EXPECT_EQ(hello.exit.exit_code(), 0);

  ASSERT_TRUE(stack_->WriteFile(kTenant, sandbox.id(), "a.txt", "content").ok());
  EXPECT_EQ(stack_->Shell(kTenant, sandbox.id(), "cat a.txt"), "content");
  std::string back;
  ASSERT_TRUE(stack_->ReadFile(kTenant, sandbox.id(), "a.txt", &back).ok());
  EXPECT_EQ(back, "content");
  sandbox_pb::StatFileRequest stat;
  stat.set_tenant_id(kTenant);
  stat.set_sandbox_id(sandbox.id());
  stat.mutable_stat()->set_path("a.txt");
  sandboxd::v1::StatResponse stat_response;
  ASSERT_TRUE(stack_->Call(&sandbox_pb::SandboxManager::Stub::StatFile, stat, &stat_response).ok());
  EXPECT_EQ(stat_response.info().size_bytes(), 7u);

  sandbox::ProviderState state = stack_->StateOf(sandbox.id());
  const std::string workspace = state["workspace"];
  struct stat st {};
  ASSERT_EQ(::stat(workspace.c_str(), &st), 0);

  sandbox_pb::DestroySandboxRequest destroy;
  destroy.set_tenant_id(kTenant);
  destroy.set_sandbox_id(sandbox.id());
  sandbox_pb::DestroySandboxResponse destroyed;
  ASSERT_TRUE(
      stack_->Call(&sandbox_pb::SandboxManager::Stub::DestroySandbox, destroy, &destroyed).ok());
  EXPECT_EQ(destroyed.sandbox().state(), sandbox_pb::SANDBOX_STATE_DESTROYED);
  EXPECT_NE(::stat(workspace.c_str(), &st), 0) << "workspace survived";
  int64_t init = 0;
  ASSERT_TRUE(absl::SimpleAtoi(state["init_pid"], &init));
  EXPECT_EQ(sandbox::ProcessState(static_cast<pid_t>(init)), '\0');
  // Idempotent, and the sandbox is then gone for operations.
  ASSERT_TRUE(
      stack_->Call(&sandbox_pb::SandboxManager::Stub::DestroySandbox, destroy, &destroyed).ok());
  ExecResult after = stack_->Exec(kTenant, sandbox.id(), {"true"});
  EXPECT_EQ(after.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(ErrorReasonOf(after.status), "SANDBOX_GONE");
}

TEST_F(Lifecycle, AnotherTenantsSandboxLooksExactlyLikeAMissingOne) {
  sandbox_pb::Sandbox sandbox = stack_->Create(kTenant);
  sandbox_pb::Sandbox out;
  grpc::Status other = stack_->Get("tenant-b", sandbox.id(), &out);
  grpc::Status missing = stack_->Get("tenant-b", "sbx_01AAAAAAAAAAAAAAAAAAAAAAAA", &out);
  EXPECT_EQ(other.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(other.error_message(), absl::StrCat("sandbox \"", sandbox.id(), "\" not found"));
  ExecResult exec = stack_->Exec("tenant-b", sandbox.id(), {"true"});
  EXPECT_EQ(exec.status.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(Lifecycle, AcquireForSessionIsIdempotentUnderConcurrentCalls) {
  std::vector<sandbox_pb::AcquireForSessionResponse> responses(4);
  std::vector<grpc::Status> statuses(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      sandbox_pb::AcquireForSessionRequest request;
      request.set_tenant_id(kTenant);
      request.set_session_id("ses_1");
      statuses[i] = stack_->Call(&sandbox_pb::SandboxManager::Stub::AcquireForSession, request,
                                 &responses[i]);
    });
  }
  for (auto& thread : threads) thread.join();
  std::set<std::string> ids;
  int created = 0;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << GrpcStatusText(statuses[i]);
    ids.insert(responses[i].sandbox().id());
    created += responses[i].created();
  }
  ASSERT_EQ(ids.size(), 1u);
  stack_->Track(kTenant, *ids.begin());
  EXPECT_EQ(created, 1);
  EXPECT_EQ(responses[0].sandbox().session_id(), "ses_1");
}

TEST_F(Lifecycle, AcquireReplacesADestroyedSandboxWithAFreshOne) {
  sandbox_pb::AcquireForSessionRequest request;
  request.set_tenant_id(kTenant);
  request.set_session_id("ses_2");
  sandbox_pb::AcquireForSessionResponse first, second;
  ASSERT_TRUE(
      stack_->Call(&sandbox_pb::SandboxManager::Stub::AcquireForSession, request, &first).ok());
  stack_->Track(kTenant, first.sandbox().id());
  stack_->Shell(kTenant, first.sandbox().id(), "echo x > kept");
  ASSERT_TRUE(stack_->manager().Destroy(kTenant, first.sandbox().id()).ok());
  ASSERT_TRUE(
      stack_->Call(&sandbox_pb::SandboxManager::Stub::AcquireForSession, request, &second).ok());
  stack_->Track(kTenant, second.sandbox().id());
  EXPECT_NE(second.sandbox().id(), first.sandbox().id());
  EXPECT_TRUE(second.created());
  EXPECT_EQ(stack_->Shell(kTenant, second.sandbox().id(), "ls"), "");
}

TEST_F(Lifecycle, TenantQuotaIsResourceExhaustedWithTheLimit) {
  for (int i = 0; i < 3; ++i) stack_->Create(kTenant);
  sandbox_pb::CreateSandboxRequest request;
  request.set_tenant_id(kTenant);
  grpc::Status status = stack_->TryCreate(request, nullptr);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(ErrorReasonOf(status), "SANDBOX_QUOTA");
  auto info = GetErrorInfo(FromGrpcStatus(status));
  EXPECT_EQ(info->metadata().at("scope"), "tenant");
  EXPECT_EQ(info->metadata().at("limit"), "3");
  // Other tenants are unaffected.
  request.set_tenant_id("tenant-b");
  EXPECT_TRUE(stack_->TryCreate(request, nullptr).ok());
}

TEST(LifecycleNodeQuota, NodeQuotaCountsEverySandboxOnTheNode) {
  StackOptions options;
  options.manager = ManualManagerOptions();
  options.manager.max_sandboxes = 2;
  SandboxStack stack(options);
  stack.Create("t1");
  stack.Create("t2");
  sandbox_pb::CreateSandboxRequest request;
  request.set_tenant_id("t3");
  grpc::Status status = stack.TryCreate(request, nullptr);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(GetErrorInfo(FromGrpcStatus(status))->metadata().at("scope"), "node");
}

TEST_F(Lifecycle, ListFiltersByLabelsAndStatesNewestFirstWithPages) {
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    sandbox_pb::CreateSandboxRequest request;
    request.set_tenant_id(kTenant);
    (*request.mutable_labels())["team"] = i < 2 ? "red" : "blue";
    sandbox_pb::Sandbox sandbox;
    ASSERT_TRUE(stack_->TryCreate(request, &sandbox).ok());
    ids.push_back(sandbox.id());
    clock_.Advance(absl::Seconds(1));
  }
  sandbox_pb::ListSandboxesRequest list;
  list.set_tenant_id(kTenant);
  (*list.mutable_label_selector())["team"] = "red";
  list.set_page_size(1);
  sandbox_pb::ListSandboxesResponse page1, page2, page3;
  ASSERT_TRUE(stack_->Call(&sandbox_pb::SandboxManager::Stub::ListSandboxes, list, &page1).ok());
  ASSERT_EQ(page1.sandboxes_size(), 1);
  EXPECT_EQ(page1.sandboxes(0).id(), ids[1]);
  ASSERT_FALSE(page1.next_page_token().empty());
  list.set_page_token(page1.next_page_token());
  ASSERT_TRUE(stack_->Call(&sandbox_pb::SandboxManager::Stub::ListSandboxes, list, &page2).ok());
  ASSERT_EQ(page2.sandboxes_size(), 1);
  EXPECT_EQ(page2.sandboxes(0).id(), ids[0]);
  EXPECT_TRUE(page2.next_page_token().empty());
  list.set_page_token("garbage");
  EXPECT_EQ(
      stack_->Call(&sandbox_pb::SandboxManager::Stub::ListSandboxes, list, &page3).error_code(),
      grpc::StatusCode::INVALID_ARGUMENT);
  // Destroyed ones are hidden unless asked for.
  ASSERT_TRUE(stack_->manager().Destroy(kTenant, ids[2]).ok());
  sandbox_pb::ListSandboxesRequest all;
  all.set_tenant_id(kTenant);
  sandbox_pb::ListSandboxesResponse live, destroyed;
  ASSERT_TRUE(stack_->Call(&sandbox_pb::SandboxManager::Stub::ListSandboxes, all, &live).ok());
  EXPECT_EQ(live.sandboxes_size(), 2);
  all.add_states(sandbox_pb::SANDBOX_STATE_DESTROYED);
  ASSERT_TRUE(stack_->Call(&sandbox_pb::SandboxManager::Stub::ListSandboxes, all, &destroyed).ok());
  ASSERT_EQ(destroyed.sandboxes_size(), 1);
  EXPECT_EQ(destroyed.sandboxes(0).id(), ids[2]);
}

TEST_F(Lifecycle, BadRequestsChangeNothing) {
  sandbox_pb::CreateSandboxRequest request;
  sandbox_pb::Sandbox sandbox;
  EXPECT_EQ(stack_->TryCreate(request, &sandbox).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  request.set_tenant_id(kTenant);
  request.set_template_("nope");
  EXPECT_EQ(stack_->TryCreate(request, &sandbox).error_code(), grpc::StatusCode::NOT_FOUND);
  request.clear_template_();
  for (int i = 0; i < 33; ++i) (*request.mutable_labels())[absl::StrCat("k", i)] = "v";
  grpc::Status labels = stack_->TryCreate(request, &sandbox);
  EXPECT_EQ(labels.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(GetBadRequest(FromGrpcStatus(labels))->field_violations(0).limit(), "32 entries");
  sandbox_pb::ListSandboxesRequest list;
  list.set_tenant_id(kTenant);
  sandbox_pb::ListSandboxesResponse listed;
  ASSERT_TRUE(stack_->Call(&sandbox_pb::SandboxManager::Stub::ListSandboxes, list, &listed).ok());
  EXPECT_EQ(listed.sandboxes_size(), 0);
}

TEST_F(Lifecycle, TtlExpiryDestroysOnTheClockNotBefore) {
  sandbox_pb::Sandbox sandbox = stack_->Create(kTenant, "", 60);
  clock_.Advance(absl::Seconds(59));
  stack_->manager().ReapOnce();
  sandbox_pb::Sandbox now;
  ASSERT_TRUE(stack_->Get(kTenant, sandbox.id(), &now).ok());
  EXPECT_EQ(now.state(), sandbox_pb::SANDBOX_STATE_READY);
  clock_.Advance(absl::Seconds(2));
  stack_->manager().ReapOnce();
  ASSERT_TRUE(stack_->Get(kTenant, sandbox.id(), &now).ok());
  EXPECT_EQ(now.state(), sandbox_pb::SANDBOX_STATE_DESTROYED);
  EXPECT_EQ(now.state_message(), "ttl expired");
}

TEST_F(Lifecycle, IdleExpiryCountsFromTheLastOperation) {
  sandbox_pb::CreateSandboxRequest request;
  request.set_tenant_id(kTenant);
  request.set_idle_timeout_s(30);
  sandbox_pb::Sandbox sandbox;
  ASSERT_TRUE(stack_->TryCreate(request, &sandbox).ok());
  clock_.Advance(absl::Seconds(20));
  stack_->Shell(kTenant, sandbox.id(), "true");  // Resets the idle timer.
  clock_.Advance(absl::Seconds(20));
  stack_->manager().ReapOnce();
  sandbox_pb::Sandbox now;
  ASSERT_TRUE(stack_->Get(kTenant, sandbox.id(), &now).ok());
  EXPECT_EQ(now.state(), sandbox_pb::SANDBOX_STATE_READY);
  clock_.Advance(absl::Seconds(11));
  stack_->manager().ReapOnce();
  ASSERT_TRUE(stack_->Get(kTenant, sandbox.id(), &now).ok());
  EXPECT_EQ(now.state(), sandbox_pb::SANDBOX_STATE_DESTROYED);
  EXPECT_EQ(now.state_message(), "idle timeout");
}

TEST_F(Lifecycle, WarmPoolHandsOffAReadySandboxAndRefills) {
  stack_->manager().FillPoolsOnce();
  ASSERT_EQ(stack_->manager().PoolReady("pooled"), 2);
  std::set<std::string> warm;
  for (const auto& entry :
       std::filesystem::directory_iterator(stack_->state_dir() + "/workspaces")) {
    warm.insert(entry.path().filename().string());
  }
  ASSERT_EQ(warm.size(), 2u);
  // Warm sandboxes belong to nobody.
  sandbox_pb::ListSandboxesRequest list;
  list.set_tenant_id(kTenant);
  sandbox_pb::ListSandboxesResponse listed;
  ASSERT_TRUE(stack_->Call(&sandbox_pb::SandboxManager::Stub::ListSandboxes, list, &listed).ok());
  EXPECT_EQ(listed.sandboxes_size(), 0);

  sandbox_pb::Sandbox sandbox = stack_->Create(kTenant, "pooled");
  EXPECT_TRUE(warm.count(sandbox.id())) << "not handed out from the pool";
  EXPECT_EQ(sandbox.state(), sandbox_pb::SANDBOX_STATE_READY);
  EXPECT_EQ(sandbox.tenant_id(), kTenant);
  EXPECT_EQ(FromTimestamp(sandbox.expire_time()), clock_.Now() + absl::Seconds(600));
  EXPECT_EQ(stack_->Shell(kTenant, sandbox.id(), "echo warm"), "warm\n");
  EXPECT_EQ(stack_->manager().PoolReady("pooled"), 1);
  stack_->manager().FillPoolsOnce();
  EXPECT_EQ(stack_->manager().PoolReady("pooled"), 2);
  sandbox_pb::GetTemplateRequest get;
  get.set_name("pooled");
  sandbox_pb::GetTemplateResponse got;
  ASSERT_TRUE(stack_->Call(&sandbox_pb::SandboxManager::Stub::GetTemplate, get, &got).ok());
  EXPECT_EQ(got.template_().warm_pool_target(), 2u);
  EXPECT_EQ(got.template_().warm_pool_ready(), 2u);
}

TEST(LifecyclePool, BackgroundFillerRefillsAfterAHandOff) {
  StackOptions options;
  options.templates_json = kTemplates;
  options.manager = ManualManagerOptions();
  options.manager.fill_pools = true;
  SandboxStack stack(options);
  ASSERT_TRUE(Eventually([&] { return stack.manager().PoolReady("pooled") == 2; }));
  stack.Create(kTenant, "pooled");
  ASSERT_TRUE(Eventually([&] { return stack.manager().PoolReady("pooled") == 2; }))
      << "the pool was not refilled";
}

TEST_F(Lifecycle, ASandboxWhoseProcessesDiedIsFailedAndReplacedOnAcquire) {
  sandbox_pb::AcquireForSessionRequest request;
  request.set_tenant_id(kTenant);
  request.set_session_id("ses_dead");
  sandbox_pb::AcquireForSessionResponse first;
  ASSERT_TRUE(
      stack_->Call(&sandbox_pb::SandboxManager::Stub::AcquireForSession, request, &first).ok());
  stack_->Track(kTenant, first.sandbox().id());
  int64_t init = 0;
  ASSERT_TRUE(absl::SimpleAtoi(stack_->StateOf(first.sandbox().id())["init_pid"], &init));
  ::kill(static_cast<pid_t>(init), SIGKILL);
  ASSERT_TRUE(Eventually([&] {
    return sandbox::ProcessState(static_cast<pid_t>(init)) == '\0' ||
           sandbox::ProcessState(static_cast<pid_t>(init)) == 'Z';
  }));
  stack_->manager().ReapOnce();
  sandbox_pb::Sandbox now;
  ASSERT_TRUE(stack_->Get(kTenant, first.sandbox().id(), &now).ok());
  EXPECT_EQ(now.state(), sandbox_pb::SANDBOX_STATE_FAILED);
  sandbox_pb::AcquireForSessionResponse second;
  ASSERT_TRUE(
      stack_->Call(&sandbox_pb::SandboxManager::Stub::AcquireForSession, request, &second).ok());
  stack_->Track(kTenant, second.sandbox().id());
  EXPECT_TRUE(second.created());
  EXPECT_NE(second.sandbox().id(), first.sandbox().id());
}

// ---------------------------------------------------------------------------------
// Pause and resume, with both freezing mechanisms.

class PauseResume : public ::testing::TestWithParam<std::string> {
 protected:
  PauseResume() {
    StackOptions options;
    options.templates_json = kTemplates;
    options.clock = &clock_;
    options.manager = ManualManagerOptions();
    options.pause_mechanism = GetParam();
    stack_ = std::make_unique<SandboxStack>(options);
  }

  // True when every process of the sandbox is frozen (stopped by signal, or in a
  // frozen cgroup).
  bool Frozen(const std::string& id) {
    sandbox::ProviderState state = stack_->StateOf(id);
    int64_t init = 0;
    if (!absl::SimpleAtoi(state["init_pid"], &init)) return false;
    if (state["paused_by"] == "cgroup") return CgroupFrozen(static_cast<pid_t>(init));
    std::vector<pid_t> pids = sandbox::ProcessesInPidNamespace(static_cast<pid_t>(init));
    if (pids.empty()) return false;
    // A child that exited just as its parent stopped stays a zombie until the parent
    // runs again: it has nothing left to stop.
    for (pid_t pid : pids) {
      // As StopPidNamespace: blocked in the kernel with the stop pending is stopped.
      const char state = sandbox::ProcessState(pid);
      if (state == 'D' && sandbox::StopPending(pid)) continue;
      if (state != 'T' && state != 'Z' && state != 'X' && state != '\0') return false;
    }
    return true;
  }

  FakeClock clock_;
  std::unique_ptr<SandboxStack> stack_;
};

TEST_P(PauseResume, KeepsTtlLimitsProcessesAndWorkspaceAcrossPauseAndResume) {
  sandbox_pb::Sandbox sandbox = stack_->Create(kTenant, "pausing");
  const std::string id = sandbox.id();
  const std::string limits_before = stack_->Shell(kTenant, id, "ulimit -n; ulimit -v; ulimit -f");
  EXPECT_EQ(limits_before, "321\n524288\n4096\n");
  // A background process that keeps counting while the sandbox runs.
  stack_->Shell(kTenant, id,
                "(while true; do echo tick >> ticks; sleep 0.01; done) >/dev/null 2>&1 &");

  sandbox_pb::PauseSandboxRequest pause;
  pause.set_tenant_id(kTenant);
  pause.set_sandbox_id(id);
  sandbox_pb::PauseSandboxResponse paused;
  ASSERT_TRUE(stack_->Call(&sandbox_pb::SandboxManager::Stub::PauseSandbox, pause, &paused).ok());
  EXPECT_EQ(paused.sandbox().state(), sandbox_pb::SANDBOX_STATE_PAUSED);
  EXPECT_FALSE(paused.sandbox().has_expire_time());
  EXPECT_TRUE(Frozen(id)) << "processes still running while PAUSED";
  // Pausing again is fine; paused time does not count against the TTL.
  ASSERT_TRUE(stack_->Call(&sandbox_pb::SandboxManager::Stub::PauseSandbox, pause, &paused).ok());
  clock_.Advance(absl::Hours(5));
  stack_->manager().ReapOnce();
  sandbox_pb::Sandbox now;
  ASSERT_TRUE(stack_->Get(kTenant, id, &now).ok());
  EXPECT_EQ(now.state(), sandbox_pb::SANDBOX_STATE_PAUSED);

  sandbox_pb::ResumeSandboxRequest resume;
  resume.set_tenant_id(kTenant);
  resume.set_sandbox_id(id);
  sandbox_pb::ResumeSandboxResponse resumed;
  ASSERT_TRUE(
      stack_->Call(&sandbox_pb::SandboxManager::Stub::ResumeSandbox, resume, &resumed).ok());
  const sandbox_pb::Sandbox& after = resumed.sandbox();
  EXPECT_EQ(after.state(), sandbox_pb::SANDBOX_STATE_READY);
  EXPECT_EQ(after.ttl_s(), 120u);
  EXPECT_EQ(after.on_expiry(), sandbox_pb::ON_EXPIRY_PAUSE);
  EXPECT_EQ(after.idle_timeout_s(), sandbox.idle_timeout_s());
  EXPECT_EQ(after.limits().SerializeAsString(), sandbox.limits().SerializeAsString());
  EXPECT_EQ(FromTimestamp(after.expire_time()), clock_.Now() + absl::Seconds(120));
  EXPECT_FALSE(Frozen(id));
  // Same processes, same limits, same workspace.
  EXPECT_EQ(stack_->Shell(kTenant, id, "ulimit -n; ulimit -v; ulimit -f"), limits_before);
  std::string first = stack_->Shell(kTenant, id, "wc -l < ticks");
  ASSERT_TRUE(Eventually([&] { return stack_->Shell(kTenant, id, "wc -l < ticks") != first; }))
      << "the background process did not continue after resume";

  // The TTL runs again from the resume: it is not replaced by some default.
  clock_.Advance(absl::Seconds(119));
  stack_->manager().ReapOnce();
  ASSERT_TRUE(stack_->Get(kTenant, id, &now).ok());
  EXPECT_EQ(now.state(), sandbox_pb::SANDBOX_STATE_READY);
  clock_.Advance(absl::Seconds(2));
  stack_->manager().ReapOnce();
  ASSERT_TRUE(stack_->Get(kTenant, id, &now).ok());
  EXPECT_EQ(now.state(), sandbox_pb::SANDBOX_STATE_PAUSED);  // on_expiry: pause.
  EXPECT_EQ(now.state_message(), "ttl expired");
  EXPECT_TRUE(Frozen(id));

  // An operation on a paused sandbox resumes it first.
  EXPECT_EQ(stack_->Shell(kTenant, id, "echo back"), "back\n");
  ASSERT_TRUE(stack_->Get(kTenant, id, &now).ok());
  EXPECT_EQ(now.state(), sandbox_pb::SANDBOX_STATE_READY);
  EXPECT_EQ(FromTimestamp(now.expire_time()), clock_.Now() + absl::Seconds(120));
}

TEST_P(PauseResume, AcquireResumesThePausedSessionSandbox) {
  sandbox_pb::AcquireForSessionRequest request;
  request.set_tenant_id(kTenant);
  request.set_session_id("ses_p");
  sandbox_pb::AcquireForSessionResponse first, second;
  ASSERT_TRUE(
      stack_->Call(&sandbox_pb::SandboxManager::Stub::AcquireForSession, request, &first).ok());
  stack_->Track(kTenant, first.sandbox().id());
  stack_->Shell(kTenant, first.sandbox().id(), "echo kept > f");
  ASSERT_TRUE(stack_->manager().Pause(kTenant, first.sandbox().id()).ok());
  ASSERT_TRUE(
      stack_->Call(&sandbox_pb::SandboxManager::Stub::AcquireForSession, request, &second).ok());
  EXPECT_EQ(second.sandbox().id(), first.sandbox().id());
  EXPECT_TRUE(second.resumed());
  EXPECT_FALSE(second.created());
  EXPECT_EQ(stack_->Shell(kTenant, first.sandbox().id(), "cat f"), "kept\n");
}

INSTANTIATE_TEST_SUITE_P(Mechanisms, PauseResume, ::testing::Values("auto", "signal"));

// ---------------------------------------------------------------------------------
// Protocol check at connect, from the manager's side.

class FutureDaemon final : public ::parley::sandboxd::v1::Sandboxd::CallbackService {
  grpc::ServerUnaryReactor* Hello(grpc::CallbackServerContext* context,
                                  const ::parley::sandboxd::v1::HelloRequest* request,
                                  ::parley::sandboxd::v1::HelloResponse* response) override {
    response->set_daemon_protocol_version(2);
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

TEST(DaemonConnection, RefusesADaemonOfAnotherProtocolVersionAndSaysWhy) {
  FutureDaemon daemon;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&daemon);
  auto server = builder.BuildAndStart();
  auto connection =
      sandbox::DaemonConnection::Connect({absl::StrCat("127.0.0.1:", port), ""}, absl::Seconds(10));
  ASSERT_FALSE(connection.ok());
  EXPECT_EQ(connection.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(connection.status().message(), "sandboxd protocol mismatch: client 1, daemon 2");
  EXPECT_EQ(GetErrorInfo(connection.status())->reason(), "PROTOCOL_MISMATCH");
  server->Shutdown();
}

}  // namespace
}  // namespace parley::testing
