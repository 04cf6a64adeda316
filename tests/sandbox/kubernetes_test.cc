// The kubernetes provider against FakeKubeApiServer, which speaks the real JSON API
// for the calls the provider makes and runs a real parley-sandboxd per Pod: the four
// objects of a sandbox (NetworkPolicy, PersistentVolumeClaim, Secret, Pod), readiness
// through a watch, exec over TCP with the per-sandbox token from the Secret, failures,
// pause/resume keeping the workspace, destroy, recovery and garbage collection after a
// restart, and kubeconfig loading (YAML and JSON).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/status.h"
#include "parley/sandbox/v1/sandbox.grpc.pb.h"
#include "sandbox-svc/api/service.h"
#include "sandbox-svc/manager/manager.h"
#include "sandbox-svc/provider/kube_config.h"
#include "sandbox-svc/provider/kubernetes_provider.h"
#include "tests/harness/services.h"
#include "tests/sandbox/kube_fake_server.h"
#include "tests/sandbox/sandbox_test_util.h"

namespace parley::testing {
namespace {

namespace sandbox_pb = ::parley::sandbox::v1;
using nlohmann::json;

constexpr char kToken[] = "test-api-token";
constexpr char kTenant[] = "tenant-k";
constexpr int kDaemonPort = 17080;

constexpr char kTemplates[] = R"({
  "default_template": "k8s",
  "templates": [
    {"name": "k8s", "provider": "kubernetes", "image": "ghcr.io/example/sandbox:1",
     "limits": {"memory_bytes": 536870912, "max_processes": 128, "network": false},
     "kubernetes": {"namespace": "sandboxes", "runtime_class_name": "gvisor", "cpu_millis": 500,
                    "workspace_storage_bytes": 2147483648, "storage_class_name": "fast-ssd"}},
    {"name": "k8s-net", "provider": "kubernetes", "image": "ghcr.io/example/sandbox:1",
     "limits": {"network": true}, "kubernetes": {"namespace": "sandboxes"}}
  ]})";

constexpr char kOwner[] = "test-owner";

class Kubernetes : public ::testing::Test {
 protected:
  Kubernetes() : api_(kToken, kDaemonPort) {
    provider_ = MakeProvider(kOwner);
    store_ = std::make_unique<sandbox::StateStore>(TestTempDir() + "/records");
    logger_ = std::make_unique<telemetry::Logger>("k8s-test", telemetry::LogLevel::kWarn);
    StartManager();
  }

  ~Kubernetes() override {
    for (const std::string& id : created_) (void)manager_->Destroy(kTenant, id);
    StopManager();
  }

  std::unique_ptr<sandbox::KubernetesProvider> MakeProvider(const std::string& owner) {
    sandbox::KubeConfig config;
    config.server = api_.url();
    config.token = kToken;
    config.namespace_name = "default";
    sandbox::KubernetesOptions options;
    options.sandboxd_port = kDaemonPort;
    options.ready_timeout = absl::Seconds(20);
    options.liveness_cache = absl::ZeroDuration();
    options.owner = owner;
    options.namespaces = {"sandboxes"};
    return std::make_unique<sandbox::KubernetesProvider>(
        std::make_unique<sandbox::KubeClient>(config), options);
  }

  void StartManager() {
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
    stub_ = sandbox_pb::SandboxManager::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  }

  // Like a crash of parley-sandbox: nothing is destroyed, the records stay.
  void StopManager() {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    manager_->Stop(false);
    stub_.reset();
    server_.reset();
    service_.reset();
    manager_.reset();
  }

  absl::StatusOr<sandbox_pb::Sandbox> Create(const std::string& template_name) {
    sandbox_pb::CreateSandboxRequest request;
    request.set_tenant_id(kTenant);
    request.set_template_(template_name);
    absl::StatusOr<sandbox_pb::Sandbox> sandbox = manager_->Create(request);
    if (sandbox.ok()) created_.push_back(sandbox->id());
    return sandbox;
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

  static std::string PodName(const std::string& id) {
    std::string name = "parley-" + id;
    for (char& c : name) c = c == '_' ? '-' : static_cast<char>(std::tolower(c));
    return name;
  }

  // Every object of a sandbox is named like its Pod.
  bool AllFourExist(const std::string& name) {
    return !api_.Object("pods", "sandboxes", name).is_null() && NoneMissingButThePod(name);
  }
  bool NoneMissingButThePod(const std::string& name) {
    return !api_.Object("networkpolicies", "sandboxes", name).is_null() &&
           !api_.Object("persistentvolumeclaims", "sandboxes", name).is_null() &&
           !api_.Object("secrets", "sandboxes", name).is_null();
  }
  bool NoneExists(const std::string& name) {
    for (const char* kind : {"pods", "networkpolicies", "persistentvolumeclaims", "secrets"}) {
      if (!api_.Object(kind, "sandboxes", name).is_null()) return false;
    }
    return true;
  }

  FakeKubeApiServer api_;
  std::unique_ptr<sandbox::KubernetesProvider> provider_;
  std::unique_ptr<sandbox::StateStore> store_;
  std::unique_ptr<telemetry::Logger> logger_;
  std::unique_ptr<sandbox::SandboxManager> manager_;
  std::unique_ptr<sandbox::SandboxManagerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<sandbox_pb::SandboxManager::Stub> stub_;
  std::vector<std::string> created_;
};

TEST_F(Kubernetes, CreatesAHardenedPodWithItsRuntimeClassLimitsAndADenyEgressPolicy) {
  absl::StatusOr<sandbox_pb::Sandbox> sandbox = Create("k8s");
  ASSERT_TRUE(sandbox.ok()) << sandbox.status();
  EXPECT_EQ(sandbox->state(), sandbox_pb::SANDBOX_STATE_READY);
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
  auto claim_post = std::find(requests.begin(), requests.end(),
                              "POST /api/v1/namespaces/sandboxes/persistentvolumeclaims");
  auto secret_post =
      std::find(requests.begin(), requests.end(), "POST /api/v1/namespaces/sandboxes/secrets");
  auto pod_post =
      std::find(requests.begin(), requests.end(), "POST /api/v1/namespaces/sandboxes/pods");
  ASSERT_NE(pod_post, requests.end());
  EXPECT_LT(policy_post, claim_post);
  EXPECT_LT(claim_post, secret_post);
  EXPECT_LT(secret_post, pod_post);
  // Readiness was waited for with a watch on this Pod (garbage collection lists Pods too,
  // so the request log alone cannot tell).
  EXPECT_THAT(api_.Watches(), ::testing::Contains(absl::StrCat("sandboxes/", pod_name)));
}

TEST_F(Kubernetes, ExecAndFilesGoToTheDaemonInThePodWithItsToken) {
  absl::StatusOr<sandbox_pb::Sandbox> sandbox = Create("k8s");
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
  absl::StatusOr<sandbox_pb::Sandbox> sandbox = Create("k8s-net");
  ASSERT_TRUE(sandbox.ok()) << sandbox.status();
  json policy = api_.Object("networkpolicies", "sandboxes", PodName(sandbox->id()));
  EXPECT_EQ(policy["spec"]["egress"], json::array({json::object()}));
  EXPECT_FALSE(api_.Object("pods", "sandboxes", PodName(sandbox->id()))["spec"].contains(
      "runtimeClassName"));
}

TEST_F(Kubernetes, TheWorkspaceIsAClaimOfTheTemplatesSizeAndClassMountedByThePod) {
  absl::StatusOr<sandbox_pb::Sandbox> sandbox = Create("k8s");
  ASSERT_TRUE(sandbox.ok()) << sandbox.status();
  const std::string name = PodName(sandbox->id());
  json claim = api_.Object("persistentvolumeclaims", "sandboxes", name);
  ASSERT_FALSE(claim.is_null());
  EXPECT_EQ(claim["spec"]["accessModes"], json({"ReadWriteOnce"}));
  EXPECT_EQ(claim["spec"]["resources"]["requests"]["storage"], "2147483648");
  EXPECT_EQ(claim["spec"]["storageClassName"], "fast-ssd");
  EXPECT_EQ(claim["metadata"]["labels"]["parley.dev/sandbox-id"], sandbox->id());
  EXPECT_EQ(claim["metadata"]["labels"]["parley.dev/owner"], kOwner);
  EXPECT_EQ(claim["metadata"]["labels"]["app.kubernetes.io/managed-by"], "parley-sandbox");
  json pod = api_.Object("pods", "sandboxes", name);
  json workspace_volume;
  for (const json& volume : pod["spec"]["volumes"]) {
    if (volume["name"] == "workspace") workspace_volume = volume;
  }
  EXPECT_EQ(workspace_volume["persistentVolumeClaim"]["claimName"], name);
  EXPECT_FALSE(workspace_volume.contains("emptyDir"));
  json mount = pod["spec"]["containers"][0]["volumeMounts"][0];
  EXPECT_EQ(mount["name"], "workspace");
  EXPECT_EQ(mount["mountPath"], "/workspace");
  // What the Pod writes lands on the claim's volume.
  ASSERT_EQ(Shell(sandbox->id(), "echo kept > notes.txt").status.error_code(),
            grpc::StatusCode::OK);
  std::ifstream written(api_.VolumePath("sandboxes", name) + "/notes.txt");
  std::string line;
  std::getline(written, line);
  EXPECT_EQ(line, "kept");
}

TEST_F(Kubernetes, WithoutStorageSettingsTheClaimIsOneGibibyteOfTheDefaultClass) {
  absl::StatusOr<sandbox_pb::Sandbox> sandbox = Create("k8s-net");
  ASSERT_TRUE(sandbox.ok()) << sandbox.status();
  json claim = api_.Object("persistentvolumeclaims", "sandboxes", PodName(sandbox->id()));
  EXPECT_EQ(claim["spec"]["resources"]["requests"]["storage"], "1073741824");
  EXPECT_FALSE(claim["spec"].contains("storageClassName"));
}

TEST_F(Kubernetes, TheDaemonTokenIsInASecretAndNeverInThePodSpec) {
  absl::StatusOr<sandbox_pb::Sandbox> sandbox = Create("k8s");
  ASSERT_TRUE(sandbox.ok()) << sandbox.status();
  const std::string name = PodName(sandbox->id());
  json secret = api_.Object("secrets", "sandboxes", name);
  ASSERT_FALSE(secret.is_null());
  EXPECT_EQ(secret["type"], "Opaque");
  std::string token;
  ASSERT_TRUE(absl::Base64Unescape(secret["data"]["token"].get<std::string>(), &token));
  ASSERT_GE(token.size(), 32u);
  json pod = api_.Object("pods", "sandboxes", name);
  const std::string pod_text = pod.dump();
  EXPECT_EQ(pod_text.find(token), std::string::npos) << "the token is in the Pod spec";
  EXPECT_EQ(pod_text.find(secret["data"]["token"].get<std::string>()), std::string::npos);
  json token_env;
  for (const json& entry : pod["spec"]["containers"][0]["env"]) {
    if (entry["name"] == "PARLEY_SANDBOXD_TOKEN") token_env = entry;
  }
  EXPECT_FALSE(token_env.contains("value"));
  EXPECT_EQ(token_env["valueFrom"]["secretKeyRef"], json({{"name", name}, {"key", "token"}}));
  // And the daemon got it from there: the manager's calls, which carry it, are accepted.
  EXPECT_EQ(Shell(sandbox->id(), "echo ok").stdout_text, "ok\n");
}

TEST_F(Kubernetes, DestroyDeletesAllFourObjectsAndASecondDestroySucceeds) {
  absl::StatusOr<sandbox_pb::Sandbox> sandbox = Create("k8s");
  ASSERT_TRUE(sandbox.ok()) << sandbox.status();
  const std::string name = PodName(sandbox->id());
  ASSERT_TRUE(api_.DaemonRunning("sandboxes", name));
  ASSERT_TRUE(AllFourExist(name));
  auto destroyed = manager_->Destroy(kTenant, sandbox->id());
  ASSERT_TRUE(destroyed.ok()) << destroyed.status();
  EXPECT_TRUE(NoneExists(name));
  EXPECT_FALSE(api_.DaemonRunning("sandboxes", name));
  EXPECT_FALSE(std::filesystem::exists(api_.VolumePath("sandboxes", name)));
  auto again = manager_->Destroy(kTenant, sandbox->id());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->state(), sandbox_pb::SANDBOX_STATE_DESTROYED);
  // The provider itself is idempotent too: every object answers 404, which is success.
  const size_t before = api_.Requests().size();
  EXPECT_TRUE(
      provider_->Destroy({{"id", sandbox->id()}, {"namespace", "sandboxes"}, {"pod", name}}).ok());
  std::vector<std::string> requests = api_.Requests();
  std::vector<std::string> deletes(requests.begin() + static_cast<long>(before), requests.end());
  EXPECT_EQ(
      deletes,
      std::vector<std::string>(
          {"DELETE /api/v1/namespaces/sandboxes/pods/" + name,
           "DELETE /api/v1/namespaces/sandboxes/secrets/" + name,
           "DELETE /api/v1/namespaces/sandboxes/persistentvolumeclaims/" + name,
           "DELETE /apis/networking.k8s.io/v1/namespaces/sandboxes/networkpolicies/" + name}));
}

TEST_F(Kubernetes, APodThatFailsMakesCreateUnavailableAndIsCleanedUp) {
  api_.set_fail_pods(true);
  absl::StatusOr<sandbox_pb::Sandbox> sandbox = Create("k8s");
  ASSERT_FALSE(sandbox.ok());
  EXPECT_EQ(sandbox.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(sandbox.status().message().find("fake image failure"), std::string::npos)
      << sandbox.status();
  sandbox_pb::ListSandboxesRequest list;
  list.set_tenant_id(kTenant);
  list.add_states(sandbox_pb::SANDBOX_STATE_FAILED);
  auto failed = manager_->List(list);
  ASSERT_TRUE(failed.ok());
  ASSERT_EQ(failed->sandboxes_size(), 1);
  EXPECT_TRUE(NoneExists(PodName(failed->sandboxes(0).id())));
}

TEST_F(Kubernetes, PauseDeletesOnlyThePodAndTheClaimKeepsTheWorkspace) {
  absl::StatusOr<sandbox_pb::Sandbox> sandbox = Create("k8s");
  ASSERT_TRUE(sandbox.ok()) << sandbox.status();
  const std::string name = PodName(sandbox->id());
  ASSERT_EQ(Shell(sandbox->id(), "echo before-pause > state.txt").status.error_code(),
            grpc::StatusCode::OK);
  auto paused = manager_->Pause(kTenant, sandbox->id());
  ASSERT_TRUE(paused.ok()) << paused.status();
  EXPECT_EQ(paused->state(), sandbox_pb::SANDBOX_STATE_PAUSED);
  EXPECT_TRUE(api_.Object("pods", "sandboxes", name).is_null());
  EXPECT_FALSE(api_.DaemonRunning("sandboxes", name));
  EXPECT_TRUE(NoneMissingButThePod(name));
  for (const std::string& request : api_.Requests()) {
    EXPECT_FALSE(absl::StartsWith(request, "DELETE") && !absl::StrContains(request, "/pods/"))
        << "pause deleted more than the Pod: " << request;
  }
}

TEST_F(Kubernetes, ResumeCreatesAPodOnTheSameClaimAndTheFilesAreStillThere) {
  absl::StatusOr<sandbox_pb::Sandbox> sandbox = Create("k8s");
  ASSERT_TRUE(sandbox.ok()) << sandbox.status();
  const std::string name = PodName(sandbox->id());
  ASSERT_EQ(
      Shell(sandbox->id(), "mkdir -p src && echo before-pause > src/state.txt").status.error_code(),
      grpc::StatusCode::OK);
  const json first_pod = api_.Object("pods", "sandboxes", name);
  const json claim = api_.Object("persistentvolumeclaims", "sandboxes", name);
  ASSERT_TRUE(manager_->Pause(kTenant, sandbox->id()).ok());
  auto resumed = manager_->Resume(kTenant, sandbox->id());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->state(), sandbox_pb::SANDBOX_STATE_READY);
  EXPECT_EQ(resumed->ttl_s(), sandbox->ttl_s());
  json pod = api_.Object("pods", "sandboxes", name);
  ASSERT_FALSE(pod.is_null());
  EXPECT_NE(pod["metadata"]["uid"], first_pod["metadata"]["uid"]) << "not a new Pod";
  EXPECT_EQ(pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], name);
  // The same claim object, not a new one of the same name.
  EXPECT_EQ(api_.Object("persistentvolumeclaims", "sandboxes", name)["metadata"]["uid"],
            claim["metadata"]["uid"]);
  ExecResult result = Shell(sandbox->id(), "cat src/state.txt");
  ASSERT_TRUE(result.status.ok()) << GrpcStatusText(result.status);
  EXPECT_EQ(result.stdout_text, "before-pause\n");
}

TEST_F(Kubernetes, ARestartAdoptsRecordedSandboxesAndCollectsOnlyItsOwnUnrecordedObjects) {
  absl::StatusOr<sandbox_pb::Sandbox> kept = Create("k8s");
  absl::StatusOr<sandbox_pb::Sandbox> paused = Create("k8s");
  absl::StatusOr<sandbox_pb::Sandbox> lost = Create("k8s");
  ASSERT_TRUE(kept.ok() && paused.ok() && lost.ok());
  ASSERT_EQ(Shell(paused->id(), "echo paused-file > f").status.error_code(), grpc::StatusCode::OK);
  ASSERT_TRUE(manager_->Pause(kTenant, paused->id()).ok());
  // Another replica's sandbox in the same namespace, with no record here.
  std::unique_ptr<sandbox::KubernetesProvider> other = MakeProvider("other-owner");
  sandbox::SandboxSpec spec;
  spec.id = "sbx_01JOTHERREPLICA0000000000";
  spec.template_name = "k8s";
  spec.image = "ghcr.io/example/sandbox:1";
  spec.kubernetes.namespace_name = "sandboxes";
  absl::StatusOr<sandbox::ProviderState> other_state = other->Plan(spec);
  ASSERT_TRUE(other_state.ok());
  ASSERT_TRUE(other->Start(spec, *other_state, nullptr).ok());
  const std::string other_name = (*other_state)["pod"];

  StopManager();
  ASSERT_TRUE(store_->Remove(lost->id()).ok());  // As if its record were lost.
  StartManager();

  EXPECT_TRUE(NoneExists(PodName(lost->id()))) << "an unrecorded sandbox's objects remain";
  EXPECT_TRUE(AllFourExist(PodName(kept->id())));
  EXPECT_TRUE(NoneMissingButThePod(PodName(paused->id())));
  EXPECT_TRUE(AllFourExist(other_name)) << "another owner's sandbox was collected";
  EXPECT_EQ(Shell(kept->id(), "echo adopted").stdout_text, "adopted\n");
  ASSERT_TRUE(manager_->Resume(kTenant, paused->id()).ok());
  EXPECT_EQ(Shell(paused->id(), "cat f").stdout_text, "paused-file\n");
  EXPECT_TRUE(other->Destroy(*other_state).ok());
}

TEST(KubernetesTemplates, RefuseAnEmptyWorkspaceClaim) {
  auto templates = sandbox::ParseTemplates(R"({"templates": [{"name": "k", "provider":
      "kubernetes", "image": "i", "kubernetes": {"workspace_storage_bytes": 0}}]})");
  ASSERT_FALSE(templates.ok());
  EXPECT_NE(templates.status().message().find("templates[0].kubernetes.workspace_storage_bytes"),
            std::string::npos)
      << templates.status();
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
}

std::string WriteFile(const std::string& name, const std::string& text) {
  std::string path = TestTempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

// A kubeconfig as kubectl writes it, with what YAML adds over JSON: comments, quoting
// styles, block lists of mappings, and entries the current context does not use.
constexpr char kYamlKubeconfig[] = R"(# written by hand for the test
apiVersion: v1
kind: Config
preferences: {}
current-context: "test"   # the one in use
clusters:
- name: other
  cluster:
    server: https://10.0.0.9:6443
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==
    insecure-skip-tls-verify: true
    server: 'SERVER'
  name: c
contexts:
  - name: test
    context:
      cluster: c
      user: 'u'
      namespace: "team-a"
  - name: unused
    context: {cluster: other, user: nobody}
users:
- name: nobody
  user:
    token: "not#a comment: really"
- name: u
  user:
    token: TOKEN
)";

TEST(KubeConfig, AYamlKubeconfigGivesTheSameConfigAsItsJsonForm) {
  FakeKubeApiServer api(kToken, kDaemonPort);
  std::string yaml_text = kYamlKubeconfig;
  yaml_text.replace(yaml_text.find("SERVER"), 6, api.url());
  yaml_text.replace(yaml_text.find("TOKEN"), 5, kToken);
  json json_form = {
      {"apiVersion", "v1"},
      {"kind", "Config"},
      {"current-context", "test"},
      {"clusters",
       {{{"name", "other"}, {"cluster", {{"server", "https://10.0.0.9:6443"}}}},
        {{"name", "c"},
         {"cluster",
          {{"server", api.url()},
           {"insecure-skip-tls-verify", true},
           {"certificate-authority-data", "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="}}}}}},
      {"contexts",
       {{{"name", "test"}, {"context", {{"cluster", "c"}, {"user", "u"}, {"namespace", "team-a"}}}},
        {{"name", "unused"}, {"context", {{"cluster", "other"}, {"user", "nobody"}}}}}},
      {"users",
       {{{"name", "nobody"}, {"user", {{"token", "not#a comment: really"}}}},
        {{"name", "u"}, {"user", {{"token", kToken}}}}}}};
  auto from_yaml = sandbox::LoadKubeConfig(WriteFile("kubeconfig.yaml", yaml_text));
  auto from_json = sandbox::LoadKubeConfig(WriteFile("kubeconfig.json", json_form.dump(2)));
  ASSERT_TRUE(from_yaml.ok()) << from_yaml.status();
  ASSERT_TRUE(from_json.ok()) << from_json.status();
  EXPECT_EQ(*from_yaml, *from_json);
  EXPECT_EQ(from_yaml->server, api.url());
  EXPECT_EQ(from_yaml->token, kToken);
  EXPECT_EQ(from_yaml->namespace_name, "team-a");
  EXPECT_TRUE(from_yaml->insecure_skip_tls_verify);
  EXPECT_EQ(from_yaml->ca_pem, "-----BEGIN CERTIFICATE-----\n");
  // And it works against the API server.
  sandbox::KubeClient client(*from_yaml);
  EXPECT_EQ(client.Get("/api/v1/namespaces/team-a/pods/none").status().code(),
            absl::StatusCode::kNotFound);
  // The whole documents agree too, not only the fields the provider reads.
  auto document = sandbox::ParseKubeConfigDocument(yaml_text);
  ASSERT_TRUE(document.ok()) << document.status();
  json expected = json_form;
  expected["preferences"] = json::object();
  EXPECT_EQ(*document, expected);
}

TEST(KubeConfig, YamlScalarsGetTheirTypesOnlyWhenPlain) {
  auto document = sandbox::ParseKubeConfigDocument(
      "a: 'true'\nb: true\nc: 007\nd: ~\ne: \"1\"\nf: 1.5\ng:\nh: -3\ni: False\n"
      "j: |\n  two\n  lines\n");
  ASSERT_TRUE(document.ok()) << document.status();
  EXPECT_EQ(*document, json({{"a", "true"},
                             {"b", true},
                             {"c", 7},
                             {"d", nullptr},
                             {"e", "1"},
                             {"f", "1.5"},
                             {"g", nullptr},
                             {"h", -3},
                             {"i", false},
                             {"j", "two\nlines\n"}}));
}

TEST(KubeConfig, FilesItNamesAreFoundNextToIt) {
  const std::string dir = TestTempDir();
  std::ofstream(dir + "/token.txt") << "from-a-file\n";
  std::ofstream(dir + "/config") << "current-context: x\n"
                                    "contexts: [{name: x, context: {cluster: c, user: u}}]\n"
                                    "clusters: [{name: c, cluster: {server: 'http://h:1'}}]\n"
                                    "users: [{name: u, user: {tokenFile: token.txt}}]\n";
  auto config = sandbox::LoadKubeConfig(dir + "/config");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->token, "from-a-file");
  EXPECT_EQ(config->namespace_name, "default");
}

TEST(KubeConfig, AMalformedKubeconfigIsRefusedWithWhatIsWrong) {
  const std::string context =
      "current-context: x\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\n";
  const std::string user = "users:\n- name: u\n  user: {token: t}\n";
  struct Case {
    std::string text;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"clusters: [unclosed\n", "not valid YAML or JSON (line "},
      {"a: b\n  c: d\n", "not valid YAML or JSON (line 2"},
      {"{\"clusters\": [}\n", "not valid YAML or JSON"},
      {"just some text\n", "expected a mapping at the top"},
      {"- a\n- b\n", "expected a mapping at the top"},
      {"apiVersion: v1\nkind: Config\n", "no current-context"},
      {"current-context: nope\n" + user, "context \"nope\" not found"},
      {context + user, "cluster \"c\" not found"},
      {context + user + "clusters:\n- name: c\n  cluster: {}\n", "cluster \"c\" has no server"},
      {context + user + "clusters:\n- name: c\n  cluster: {server: [1]}\n",
       "cluster \"c\".server: expected a string"},
      {context + user +
           "clusters:\n- name: c\n  cluster: {server: 'http://h', insecure-skip-tls-verify: "
           "'yes'}\n",
       "insecure-skip-tls-verify: expected true or false"},
      {context + "clusters: [{name: c, cluster: {server: 'http://h'}}]\n" +
           "users: [{name: u, user: {exec: {command: aws}}}]\n",
       "user \"u\" authenticates through an exec plugin"},
      {context +
           "clusters: [{name: c, cluster: {server: 'http://h', "
           "certificate-authority-data: '%%%'}}]\n" +
           user,
       "certificate-authority-data: not valid base64"},
  };
  for (const Case& c : cases) {
    const std::string path = WriteFile("bad-kubeconfig", c.text);
    auto config = sandbox::LoadKubeConfig(path);
    ASSERT_FALSE(config.ok()) << c.text;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_NE(config.status().message().find(c.expected), std::string::npos)
        << "for:\n"
        << c.text << "got: " << config.status().message();
    EXPECT_NE(config.status().message().find(path), std::string::npos) << config.status();
  }
  EXPECT_EQ(sandbox::LoadKubeConfig(TestTempDir() + "/missing").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace parley::testing
