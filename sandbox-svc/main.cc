// parley-sandbox: sandbox lifecycle, warm pools, and exec/file calls into sandboxes.
// See README.md for the design; every flag is also a PARLEY_* variable.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/server/service_host.h"
#include "sandbox-svc/api/placement.h"
#include "sandbox-svc/api/service.h"
#include "sandbox-svc/client/replicas.h"
#include "sandbox-svc/contract/sandbox_id.h"
#include "sandbox-svc/manager/manager.h"
#include "sandbox-svc/manager/state_store.h"
#include "sandbox-svc/manager/templates.h"
#include "sandbox-svc/provider/bwrap_provider.h"
#include "sandbox-svc/provider/kubernetes_provider.h"

namespace {

struct SandboxConfig {
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
  std::string kube_owner;  // Empty: the id kept in state_dir/kube_owner.
  int64_t kube_sandboxd_port = 7080;
  std::string kube_sandboxd_path = "/usr/local/bin/parley-sandboxd";
  // Scale-out (sandbox-svc/README.md, "Replicas"): empty replica = a single instance.
  std::string replica;
  std::string replica_address_template;
  int64_t max_replicas = 1;
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

// A Kubernetes label value of our own making: 1–63 of [a-z0-9-], alphanumeric at both ends.
bool IsOwnerLabel(const std::string& value) {
  if (value.empty() || value.size() > 63) return false;
  for (char c : value) {
    if (!absl::ascii_islower(c) && !absl::ascii_isdigit(c) && c != '-') return false;
  }
  return value.front() != '-' && value.back() != '-';
}

// This instance's owner id for the objects the kubernetes provider labels: made once and
// kept in the state dir, so a restart that keeps the state dir collects its own orphans
// and never another replica's.
absl::StatusOr<std::string> KubeOwner(const std::string& state_dir) {
  const std::string path = state_dir + "/kube_owner";
  std::string owner;
  if (std::ifstream in(path); in) std::getline(in, owner);
  if (IsOwnerLabel(owner)) return owner;
  std::random_device device;
  owner = absl::StrCat(
      "sbx-", absl::Hex(static_cast<uint64_t>(device()) << 32 | device(), absl::kZeroPad16));
  const std::string temporary = path + ".tmp";
  if (!(std::ofstream(temporary) << owner << "\n") ||
      std::rename(temporary.c_str(), path.c_str()) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("cannot write ", path));
  }
  return owner;
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
  flags.String("templates", &config.templates,
               "path of the sandbox template file (empty: built-in defaults)");
  flags.String("state_dir", &config.state_dir,
               "sandbox records, workspaces and sockets (at most 61 bytes: Unix socket paths)",
               parley::ValidateNonEmpty);
  flags.String("sandboxd_path", &config.sandboxd_path, "the parley-sandboxd binary",
               parley::ValidateNonEmpty);
  flags.String("bwrap_path", &config.bwrap_path, "bubblewrap", parley::ValidateNonEmpty);
  flags.Int("sandbox_uid_base", &config.sandbox_uid_base,
            "first host uid for sandboxes when running as root (0: run them as ourselves)", 0,
            4'000'000'000);
  flags.Int("sandbox_uid_count", &config.sandbox_uid_count, "host uids available to sandboxes", 1,
            10'000'000);
  flags.Choice("cgroup", &config.cgroup,
               "auto: cgroup v2 controllers where delegated, else the host's v1 hierarchies",
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
               "kubeconfig (YAML or JSON) for templates with provider \"kubernetes\"; empty: "
               "in-cluster");
  flags.String("kube_namespace", &config.kube_namespace,
               "namespace for sandbox Pods (empty: the kubeconfig's or service account's)");
  flags.String("kube_owner", &config.kube_owner,
               "parley.dev/owner label on this instance's sandbox objects, 1-63 of [a-z0-9-] "
               "(empty: an id kept in state_dir/kube_owner)");
  flags.Int("kube_sandboxd_port", &config.kube_sandboxd_port, "daemon port in sandbox Pods", 1,
            65535);
  flags.String("kube_sandboxd_path", &config.kube_sandboxd_path,
               "path of parley-sandboxd inside sandbox images", parley::ValidateNonEmpty);
  flags.String("replica", &config.replica,
               "this replica's ordinal, or its StatefulSet Pod name ending in it "
               "(parley-sandbox-2); empty: a single instance");
  flags.String("replica_address_template", &config.replica_address_template,
               "address of replica {replica} for AcquireForSession's lookups among peers, e.g. "
               "parley-sandbox-{replica}.parley-sandbox-headless:7003 (needs --replica)");
  flags.Int("max_replicas", &config.max_replicas,
            "replicas that may exist (the autoscaler's maximum): peers are ordinals below it", 1,
            parley::sandbox::kMaxReplicaOrdinal + 1);
  const parley::Environment env = parley::ProcessEnvironment();
  parley::ParseFlagsOrExit(flags, argc, argv, env);
  parley::ParseTracingEnvOrExit(env, &server);

  absl::StatusOr<parley::sandbox::TemplateSet> templates =
      parley::sandbox::LoadTemplates(config.templates);
  if (!templates.ok()) {
    std::cerr << "parley-sandbox: " << templates.status().message() << "\n";
    return 2;
  }
  if (!config.kube_owner.empty() && !IsOwnerLabel(config.kube_owner)) {
    std::cerr << "parley-sandbox: --kube_owner must be 1-63 of [a-z0-9-], alphanumeric at "
                 "both ends\n";
    return 2;
  }
  std::optional<uint32_t> replica;
  if (!config.replica.empty()) {
    absl::StatusOr<uint32_t> ordinal = parley::sandbox::ParseReplicaOrdinal(config.replica);
    if (!ordinal.ok()) {
      std::cerr << "parley-sandbox: --replica: " << ordinal.status().message() << "\n";
      return 2;
    }
    replica = *ordinal;
    if (!config.replica_address_template.empty() && *replica >= config.max_replicas) {
      std::cerr << "parley-sandbox: --replica " << *replica << " is not below --max_replicas "
                << config.max_replicas << ": its peers would not know it\n";
      return 2;
    }
  } else if (!config.replica_address_template.empty()) {
    std::cerr << "parley-sandbox: --replica_address_template needs --replica\n";
    return 2;
  }
  if (config.reap_interval <= absl::ZeroDuration()) {
    std::cerr << "parley-sandbox: --reap_interval must be positive\n";
    return 2;
  }

  parley::ServiceHost host("parley-sandbox", server);
  // Peers, for AcquireForSession's lookups: only with a replica and an address template.
  std::unique_ptr<parley::sandbox::SandboxReplicas> peers;
  std::unique_ptr<parley::sandbox::SessionPlacement> placement;
  if (replica && !config.replica_address_template.empty()) {
    absl::StatusOr<std::unique_ptr<parley::sandbox::SandboxReplicas>> created =
        parley::sandbox::SandboxReplicas::Create(
            {.replica_address_template = config.replica_address_template},
            [&host](const std::string& address) {
              return host.grpc_telemetry().CreateChannel(address);
            });
    if (!created.ok()) {
      host.logger().Error("bad --replica_address_template",
                          {{"error", created.status().ToString()}});
      return 2;
    }
    peers = *std::move(created);
    placement = std::make_unique<parley::sandbox::SessionPlacement>(
        parley::sandbox::SessionPlacement::Options{
            .self = *replica, .max_replicas = static_cast<uint32_t>(config.max_replicas)},
        peers.get());
  }
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
  host.logger().Info("sandbox provider ready", {{"provider", "local"},
                                                {"cgroup_mode", bwrap.CgroupMode()},
                                                {"capabilities", bwrap.Capabilities()}});

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
    absl::StatusOr<std::string> owner =
        config.kube_owner.empty() ? KubeOwner(config.state_dir) : config.kube_owner;
    if (!owner.ok()) {
      host.logger().Error("the kubernetes provider cannot start",
                          {{"error", owner.status().ToString()}});
      return 1;
    }
    parley::sandbox::KubernetesOptions kube_options;
    kube_options.default_namespace = config.kube_namespace;
    kube_options.owner = *owner;
    for (const auto& [name, t] : templates->by_name) {
      if (!t.kubernetes.namespace_name.empty()) {
        kube_options.namespaces.insert(t.kubernetes.namespace_name);
      }
    }
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
  options.replica = replica;
  parley::sandbox::SandboxManager manager(options, *std::move(templates), providers, &store,
                                          parley::RealClock::Get(), &host.logger(),
                                          &host.registry());
  if (absl::Status s = manager.Start(); !s.ok()) {
    host.logger().Error("cannot recover sandbox state", {{"error", s.ToString()}});
    return 1;
  }
  host.logger().Info("replica", {{"replica", replica ? absl::StrCat(*replica) : "none"},
                                 {"peers", placement ? config.max_replicas - 1 : 0}});
  parley::sandbox::SandboxManagerService service(
      &manager, static_cast<int>(config.lifecycle_threads), placement.get());
  host.AddService(&service);
  int exit_code = host.Run();
  // Tenant sandboxes outlive us (the next start adopts them); warm ones are released.
  manager.Stop(/*destroy_pooled=*/true);
  bwrap.ReleaseCgroupParent();
  return exit_code;
}
