// The kubernetes provider against FakeKubeApiServer, which speaks the real JSON API
// for the calls the provider makes and runs a real parley-sandboxd per Pod: the Pod
// and NetworkPolicy it creates, readiness through a watch, exec over TCP with the
// per-sandbox token, failures, pause/resume, destroy, and kubeconfig loading.
#include <gtest/gtest.h>

#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/status.h"
#include "parley/sandbox/v1/sandbox.grpc.pb.h"
#include "sandbox-svc/api/service.h"
#include "sandbox-svc/manager/manager.h"
#include "sandbox-svc/provider/kubernetes_provider.h"
#include "tests/harness/services.h"
#include "tests/sandbox/kube_fake_server.h"
#include "tests/sandbox/sandbox_test_util.h"

namespace parley::testing {
namespace {

namespace sv1 = ::parley::sandbox::v1;
using nlohmann::json;

constexpr char kToken[] = "test-api-token";
constexpr char kTenant[] = "tenant-k";
constexpr int kDaemonPort = 17080;

constexpr char kTemplates[] = R"({
  "default_template": "k8s",
  "templates": [
    {"name": "k8s", "provider": "kubernetes", "image": "ghcr.io/example/sandbox:1",
     "limits": {"memory_bytes": 536870912, "max_processes": 128, "network": false},
     "kubernetes": {"namespace": "sandboxes", "runtime_class_name": "gvisor", "cpu_millis": 500}},
    {"name": "k8s-net", "provider": "kubernetes", "image": "ghcr.io/example/sandbox:1",
     "limits": {"network": true}, "kubernetes": {"namespace": "sandboxes"}}
  ]})";

class Kubernetes : public ::testing::Test {
 protected:
  Kubernetes() : api_(kToken, kDaemonPort) {
    sandbox::KubeConfig config;
    config.server = api_.url();
    config.token = kToken;
    config.namespace_name = "default";
    sandbox::KubernetesOptions options;
    options.sandboxd_port = kDaemonPort;
    options.ready_timeout = absl::Seconds(20);
    options.liveness_cache = absl::ZeroDuration();
    provider_ = std::make_unique<sandbox::KubernetesProvider>(
        std::make_unique<sandbox::KubeClient>(config), options);
    store_ = std::make_unique<sandbox::StateStore>(TestTempDir() + "/records");
    logger_ = std::make_unique<telemetry::Logger>("k8s-test", telemetry::LogLevel::kWarn);
    sandbox::ManagerOptions manager_options;
    manager_options.reap_interval = absl::ZeroDuration();
    manager_options.fill_pools = false;
    auto templates = sandbox::ParseTemplates(kTemplates);
    EXPECT_TRUE(templates.ok()) << templates.status();
    manager_ = std::make_unique<sandbox::SandboxManager>(
        manager_options, *std::move(templates),
        std::map<std::string, sandbox::SandboxProvider*>{{"kubernetes", provider_.get()}},
        store_.get(), RealClock::Get(), logger_.get());
    EXPECT_TRUE(manager_->Start().ok());
    service_ = std::make_unique<sandbox::SandboxManagerService>(manager_.get(), 2);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    stub_ = sv1::SandboxManager::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  }

  ~Kubernetes() override {
    for (const std::string& id : created_) (void)manager_->Destroy(kTenant, id);
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    manager_->Stop(true);
  }

  absl::StatusOr<sv1::Sandbox> Create(const std::string& template_name) {
    sv1::CreateSandboxRequest request;
    request.set_tenant_id(kTenant);
    request.set_template_(template_name);
    absl::StatusOr<sv1::Sandbox> sandbox = manager_->Create(request);
    if (sandbox.ok()) created_.push_back(sandbox->id());
    return sandbox;
  }

  ExecResult Shell(const std::string& id, const std::string& script) {
    sv1::ExecRequest request;
    request.set_tenant_id(kTenant);
    request.set_sandbox_id(id);
    request.add_argv("sh");
    request.add_argv("-c");
    request.add_argv(script);
    return RunExec(*stub_, request);
  }

  static std::string PodName(const std::string& id) {
    std::string name = "parley-" + id;
    for (char& c : name) c = c == '_' ? '-' : static_cast<char>(std::tolower(c));
    return name;
  }

  FakeKubeApiServer api_;
  std::unique_ptr<sandbox::KubernetesProvider> provider_;
  std::unique_ptr<sandbox::StateStore> store_;
  std::unique_ptr<telemetry::Logger> logger_;
  std::unique_ptr<sandbox::SandboxManager> manager_;
  std::unique_ptr<sandbox::SandboxManagerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<sv1::SandboxManager::Stub> stub_;
  std::vector<std::string> created_;
};

TEST_F(Kubernetes, CreatesAHardenedPodWithItsRuntimeClassLimitsAndADenyEgressPolicy) {
  absl::StatusOr<sv1::Sandbox> sandbox = Create("k8s");
  ASSERT_TRUE(sandbox.ok()) << sandbox.status();
  EXPECT_EQ(sandbox->state(), sv1::SANDBOX_STATE_READY);
  EXPECT_EQ(sandbox->provider(), "kubernetes");
  const std::string pod_name = PodName(sandbox->id());
  json pod = api_.Object("pods", "sandboxes", pod_name);
  ASSERT_FALSE(pod.is_null());
  EXPECT_EQ(pod["spec"]["runtimeClassName"], "gvisor");
  EXPECT_EQ(pod["spec"]["automountServiceAccountToken"], false);
  EXPECT_EQ(pod["spec"]["securityContext"]["runAsNonRoot"], true);
  const json& container = pod["spec"]["containers"][0];
  EXPECT_EQ(container["image"], "ghcr.io/example/sandbox:1");
  EXPECT_EQ(container["resources"]["limits"]["memory"], "536870912");
  EXPECT_EQ(container["resources"]["limits"]["cpu"], "500m");
  EXPECT_EQ(container["securityContext"]["allowPrivilegeEscalation"], false);
  EXPECT_EQ(container["securityContext"]["capabilities"]["drop"][0], "ALL");
  EXPECT_EQ(container["command"][0], "/usr/local/bin/parley-sandboxd");
  json policy = api_.Object("networkpolicies", "sandboxes", pod_name);
  ASSERT_FALSE(policy.is_null());
  EXPECT_EQ(policy["spec"]["podSelector"]["matchLabels"]["parley.dev/sandbox"], pod_name);
  EXPECT_EQ(policy["spec"]["policyTypes"], json({"Ingress", "Egress"}));
  EXPECT_EQ(policy["spec"]["egress"], json::array()) << "egress must be denied";
  EXPECT_EQ(policy["spec"]["ingress"][0]["ports"][0]["port"], kDaemonPort);
  // The policy exists before the Pod does.
  std::vector<std::string> requests = api_.Requests();
  auto policy_post =
      std::find(requests.begin(), requests.end(),
                "POST /apis/networking.k8s.io/v1/namespaces/sandboxes/networkpolicies");
  auto pod_post =
      std::find(requests.begin(), requests.end(), "POST /api/v1/namespaces/sandboxes/pods");
  ASSERT_NE(policy_post, requests.end());
  EXPECT_LT(policy_post, pod_post);
  // Readiness was waited for with a watch.
  EXPECT_NE(std::find(requests.begin(), requests.end(), "GET /api/v1/namespaces/sandboxes/pods"),
            requests.end());
}

TEST_F(Kubernetes, ExecAndFilesGoToTheDaemonInThePodWithItsToken) {
  absl::StatusOr<sv1::Sandbox> sandbox = Create("k8s");
  ASSERT_TRUE(sandbox.ok()) << sandbox.status();
  ExecResult result = Shell(sandbox->id(), "echo from-pod > f && cat f");
  ASSERT_TRUE(result.status.ok()) << GrpcStatusText(result.status);
  EXPECT_EQ(result.stdout_text, "from-pod\n");
  // Without the token the daemon refuses.
  json pod = api_.Object("pods", "sandboxes", PodName(sandbox->id()));
  auto stub = ::parley::sandboxd::v1::Sandboxd::NewStub(
      grpc::CreateChannel(absl::StrCat(pod["status"]["podIP"].get<std::string>(), ":", kDaemonPort),
                          grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_wait_for_ready(true);
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  ::parley::sandboxd::v1::HelloRequest hello;
  hello.set_client_protocol_version(1);
  ::parley::sandboxd::v1::HelloResponse response;
  EXPECT_EQ(stub->Hello(&context, hello, &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(Kubernetes, NetworkAllowedTemplatesGetAnAllowEgressPolicy) {
  absl::StatusOr<sv1::Sandbox> sandbox = Create("k8s-net");
  ASSERT_TRUE(sandbox.ok()) << sandbox.status();
  json policy = api_.Object("networkpolicies", "sandboxes", PodName(sandbox->id()));
  EXPECT_EQ(policy["spec"]["egress"], json::array({json::object()}));
  EXPECT_FALSE(api_.Object("pods", "sandboxes", PodName(sandbox->id()))["spec"].contains(
      "runtimeClassName"));
}

TEST_F(Kubernetes, DestroyDeletesThePodAndItsPolicy) {
  absl::StatusOr<sv1::Sandbox> sandbox = Create("k8s");
  ASSERT_TRUE(sandbox.ok()) << sandbox.status();
  const std::string pod_name = PodName(sandbox->id());
  ASSERT_TRUE(api_.DaemonRunning("sandboxes", pod_name));
  ASSERT_TRUE(manager_->Destroy(kTenant, sandbox->id()).ok());
  EXPECT_TRUE(api_.Object("pods", "sandboxes", pod_name).is_null());
  EXPECT_TRUE(api_.Object("networkpolicies", "sandboxes", pod_name).is_null());
  EXPECT_FALSE(api_.DaemonRunning("sandboxes", pod_name));
}

TEST_F(Kubernetes, APodThatFailsMakesCreateUnavailableAndIsCleanedUp) {
  api_.set_fail_pods(true);
  absl::StatusOr<sv1::Sandbox> sandbox = Create("k8s");
  ASSERT_FALSE(sandbox.ok());
  EXPECT_EQ(sandbox.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(sandbox.status().message().find("fake image failure"), std::string::npos)
      << sandbox.status();
  sv1::ListSandboxesRequest list;
  list.set_tenant_id(kTenant);
  list.add_states(sv1::SANDBOX_STATE_FAILED);
  auto failed = manager_->List(list);
  ASSERT_TRUE(failed.ok());
  ASSERT_EQ(failed->sandboxes_size(), 1);
  const std::string pod_name = PodName(failed->sandboxes(0).id());
  EXPECT_TRUE(api_.Object("pods", "sandboxes", pod_name).is_null());
  EXPECT_TRUE(api_.Object("networkpolicies", "sandboxes", pod_name).is_null());
}

TEST_F(Kubernetes, PauseDeletesThePodAndResumeCreatesItAgain) {
  absl::StatusOr<sv1::Sandbox> sandbox = Create("k8s");
  ASSERT_TRUE(sandbox.ok()) << sandbox.status();
  const std::string pod_name = PodName(sandbox->id());
  auto paused = manager_->Pause(kTenant, sandbox->id());
  ASSERT_TRUE(paused.ok()) << paused.status();
  EXPECT_EQ(paused->state(), sv1::SANDBOX_STATE_PAUSED);
  EXPECT_TRUE(api_.Object("pods", "sandboxes", pod_name).is_null());
  EXPECT_FALSE(api_.Object("networkpolicies", "sandboxes", pod_name).is_null());
  auto resumed = manager_->Resume(kTenant, sandbox->id());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->state(), sv1::SANDBOX_STATE_READY);
  EXPECT_EQ(resumed->ttl_s(), sandbox->ttl_s());
  EXPECT_FALSE(api_.Object("pods", "sandboxes", pod_name).is_null());
  EXPECT_EQ(Shell(sandbox->id(), "echo again").stdout_text, "again\n");
}

TEST(KubeConfig, ReadsAJsonKubeconfigAndRefusesAWrongToken) {
  FakeKubeApiServer api(kToken, kDaemonPort);
  auto write = [](const std::string& token) {
    std::string path = TestTempDir() + "/kubeconfig.json";
    json config = {{"apiVersion", "v1"},
                   {"kind", "Config"},
                   {"current-context", "test"},
                   {"contexts",
                    {{{"name", "test"},
                      {"context", {{"cluster", "c"}, {"user", "u"}, {"namespace", "team"}}}}}},
                   {"clusters", {{{"name", "c"}, {"cluster", {{"server", "SERVER"}}}}}},
                   {"users", {{{"name", "u"}, {"user", {{"token", token}}}}}}};
    std::ofstream(path) << config.dump();
    return path;
  };
  std::string good = write(kToken);
  {
    std::ifstream in(good);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    text.replace(text.find("SERVER"), 6, api.url());
    std::ofstream(good) << text;
  }
  auto config = sandbox::LoadKubeConfig(good);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->namespace_name, "team");
  EXPECT_EQ(config->server, api.url());
  sandbox::KubeClient client(*config);
  EXPECT_EQ(client.Get("/api/v1/namespaces/team/pods/none").status().code(),
            absl::StatusCode::kNotFound);
  config->token = "wrong";
  sandbox::KubeClient wrong(*config);
  EXPECT_EQ(wrong.Get("/api/v1/namespaces/team/pods/none").status().code(),
            absl::StatusCode::kPermissionDenied);
  std::string yaml = TestTempDir() + "/kubeconfig.yaml";
  std::ofstream(yaml) << "apiVersion: v1\nkind: Config\n";
  auto refused = sandbox::LoadKubeConfig(yaml);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("kubectl config view"), std::string::npos);
}

}  // namespace
}  // namespace parley::testing
