// parley-sandbox: sandbox lifecycle, warm pools, and exec/file calls into sandboxes.
// See README.md for the design; every flag is also a PARLEY_* variable.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/server/service_host.h"
#include "sandbox-svc/api/service.h"
#include "sandbox-svc/manager/manager.h"
#include "sandbox-svc/manager/state_store.h"
#include "sandbox-svc/manager/templates.h"
#include "sandbox-svc/provider/bwrap_provider.h"
#include "sandbox-svc/provider/kubernetes_provider.h"

namespace {

struct SandboxConfig {
  std::string store_addr = "127.0.0.1:7073";
  std::string templates;  // Path of the template file; empty: built-in defaults.
  std::string state_dir;
  std::string sandboxd_path;
  std::string bwrap_path = "/usr/bin/bwrap";
  int64_t sandbox_uid_base = 2'000'000;
  int64_t sandbox_uid_count = 100'000;
  std::string cgroup = "auto";
  std::string pause_mechanism = "auto";
  int64_t max_sandboxes = 500;
  int64_t max_sandboxes_per_tenant = 50;
  absl::Duration reap_interval = absl::Seconds(1);
  absl::Duration destroyed_retention = absl::Hours(1);
  int64_t lifecycle_threads = 8;
  std::string kubeconfig;
  std::string kube_namespace;
  int64_t kube_sandboxd_port = 7080;
  std::string kube_sandboxd_path = "/usr/local/bin/parley-sandboxd";
};

std::string DefaultDaemonPath() {
  std::error_code error;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  return error ? "parley-sandboxd" : (self.parent_path() / "parley-sandboxd").string();
}

// The state dir holds sandbox records and workspaces; in a shared /tmp it must be ours
// and not a symlink someone planted.
absl::Status PrepareStateDir(const std::string& dir) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("state dir ", dir, ": ", error.message()));
  }
  if (!S_ISDIR(st.st_mode) || st.st_uid != ::geteuid()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "state dir ", dir, " must be a directory owned by uid ", ::geteuid(), " (not a symlink)"));
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  parley::ServerOptions server{.grpc_addr = "127.0.0.1:7072", .admin_addr = "127.0.0.1:9072"};
  SandboxConfig config;
  config.state_dir = absl::StrCat("/tmp/parley-sandbox-", ::geteuid());
  config.sandboxd_path = DefaultDaemonPath();
  parley::Flags flags("parley-sandbox",
                      "Sandbox lifecycle: create, warm pools, pause/resume, reaping, exec, files.");
  parley::AddServerFlags(flags, &server);
  flags.HostPort("store_addr", &config.store_addr, "store-svc address");
  flags.String("templates", &config.templates,
               "path of the sandbox template file (empty: built-in defaults)");
  flags.String("state_dir", &config.state_dir,
               "sandbox records, workspaces and sockets (at most 67 bytes: Unix socket paths)",
               parley::ValidateNonEmpty);
  flags.String("sandboxd_path", &config.sandboxd_path, "the parley-sandboxd binary",
               parley::ValidateNonEmpty);
  flags.String("bwrap_path", &config.bwrap_path, "bubblewrap", parley::ValidateNonEmpty);
  flags.Int("sandbox_uid_base", &config.sandbox_uid_base,
            "first host uid for sandboxes when running as root (0: run them as ourselves)", 0,
            4'000'000'000);
  flags.Int("sandbox_uid_count", &config.sandbox_uid_count, "host uids available to sandboxes", 1,
            10'000'000);
  flags.Choice("cgroup", &config.cgroup, "use cgroup v2 where the host delegates it",
               {"auto", "off"});
  flags.Choice("pause_mechanism", &config.pause_mechanism,
               "how sandboxes are frozen (auto: cgroup freezer when available, else SIGSTOP)",
               {"auto", "signal"});
  flags.Int("max_sandboxes", &config.max_sandboxes, "live sandboxes on this node, warm ones too", 1,
            100'000);
  flags.Int("max_sandboxes_per_tenant", &config.max_sandboxes_per_tenant,
            "live sandboxes per tenant", 1, 100'000);
  flags.Duration("reap_interval", &config.reap_interval, "how often TTL and idle expiry run");
  flags.Duration("destroyed_retention", &config.destroyed_retention,
                 "how long destroyed sandboxes stay readable");
  flags.Int("lifecycle_threads", &config.lifecycle_threads,
            "worker threads for blocking lifecycle calls", 1, 256);
  flags.String("kubeconfig", &config.kubeconfig,
               "kubeconfig (JSON) for templates with provider \"kubernetes\"; empty: in-cluster");
  flags.String("kube_namespace", &config.kube_namespace,
               "namespace for sandbox Pods (empty: the kubeconfig's or service account's)");
  flags.Int("kube_sandboxd_port", &config.kube_sandboxd_port, "daemon port in sandbox Pods", 1,
            65535);
  flags.String("kube_sandboxd_path", &config.kube_sandboxd_path,
               "path of parley-sandboxd inside sandbox images", parley::ValidateNonEmpty);
  parley::ParseFlagsOrExit(flags, argc, argv, parley::ProcessEnvironment());

  absl::StatusOr<parley::sandbox::TemplateSet> templates =
      parley::sandbox::LoadTemplates(config.templates);
  if (!templates.ok()) {
    std::cerr << "parley-sandbox: " << templates.status().message() << "\n";
    return 2;
  }
  if (config.reap_interval <= absl::ZeroDuration()) {
    std::cerr << "parley-sandbox: --reap_interval must be positive\n";
    return 2;
  }

  parley::ServiceHost host("parley-sandbox", server);
  if (absl::Status s = PrepareStateDir(config.state_dir); !s.ok()) {
    host.logger().Error("cannot use the state dir", {{"error", s.ToString()}});
    return 1;
  }
  parley::sandbox::BwrapOptions bwrap_options;
  bwrap_options.state_dir = config.state_dir;
  bwrap_options.bwrap_path = config.bwrap_path;
  bwrap_options.sandboxd_path = config.sandboxd_path;
  bwrap_options.uid_base = static_cast<uid_t>(config.sandbox_uid_base);
  bwrap_options.uid_count = static_cast<uint32_t>(config.sandbox_uid_count);
  bwrap_options.use_cgroups = config.cgroup == "auto";
  bwrap_options.pause_mechanism = config.pause_mechanism;
  parley::sandbox::BwrapProvider bwrap(bwrap_options);
  if (absl::Status s = bwrap.Init(); !s.ok()) {
    host.logger().Error("the local provider cannot start", {{"error", s.ToString()}});
    return 1;
  }
  host.logger().Info("sandbox provider ready", {{"capabilities", bwrap.Capabilities()}});

  std::map<std::string, parley::sandbox::SandboxProvider*> providers = {{"local", &bwrap}};
  // The kubernetes provider exists only when a template asks for it.
  std::unique_ptr<parley::sandbox::KubernetesProvider> kubernetes;
  bool wants_kubernetes = false;
  for (const auto& [name, t] : templates->by_name) {
    wants_kubernetes |= t.proto.provider() == "kubernetes";
  }
  if (wants_kubernetes) {
    absl::StatusOr<parley::sandbox::KubeConfig> kube =
        parley::sandbox::LoadKubeConfig(config.kubeconfig);
    if (!kube.ok()) {
      host.logger().Error("the kubernetes provider cannot start",
                          {{"error", kube.status().ToString()}});
      return 1;
    }
    parley::sandbox::KubernetesOptions kube_options;
    kube_options.default_namespace = config.kube_namespace;
    kube_options.sandboxd_port = static_cast<int>(config.kube_sandboxd_port);
    kube_options.sandboxd_path = config.kube_sandboxd_path;
    kubernetes = std::make_unique<parley::sandbox::KubernetesProvider>(
        std::make_unique<parley::sandbox::KubeClient>(*std::move(kube)), kube_options);
    providers["kubernetes"] = kubernetes.get();
    host.logger().Info("sandbox provider ready", {{"capabilities", kubernetes->Capabilities()}});
  }

  parley::sandbox::StateStore store(config.state_dir + "/sandboxes");
  parley::sandbox::ManagerOptions options;
  options.max_sandboxes = static_cast<int>(config.max_sandboxes);
  options.max_sandboxes_per_tenant = static_cast<int>(config.max_sandboxes_per_tenant);
  options.reap_interval = config.reap_interval;
  options.destroyed_retention = config.destroyed_retention;
  parley::sandbox::SandboxManager manager(options, *std::move(templates), providers, &store,
                                          parley::RealClock::Get(), &host.logger(),
                                          &host.registry());
  if (absl::Status s = manager.Start(); !s.ok()) {
    host.logger().Error("cannot recover sandbox state", {{"error", s.ToString()}});
    return 1;
  }
  parley::sandbox::SandboxManagerService service(&manager,
                                                 static_cast<int>(config.lifecycle_threads));
  host.AddService(&service);
  int exit_code = host.Run();
  // Tenant sandboxes outlive us (the next start adopts them); warm ones are released.
  manager.Stop(/*destroy_pooled=*/true);
  bwrap.ReleaseCgroupParent();
  return exit_code;
}
