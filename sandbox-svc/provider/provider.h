// SandboxProvider: the seam between sandbox lifecycle and the thing that builds a
// sandbox. A provider creates an isolated environment and starts parley-sandboxd in it;
// everything after that goes over gRPC to the daemon, whatever the provider
// (DESIGN §6). Implementations: BwrapProvider ("local"), KubernetesProvider
// ("kubernetes").
//
//   ProviderState state = *provider.Plan(spec);        // names resources, creates nothing
//   store.Write(record_with(state));                   // recorded before any work
//   DaemonEndpoint endpoint = *provider.Start(spec, state, record);
//   ... connect to endpoint.target, Hello ...
//   provider.Destroy(state);                           // idempotent
//
// ProviderState is the provider's own bookkeeping for one sandbox (paths, uid, pids and
// their start times, Pod name) as string pairs that the manager persists verbatim in
// the sandbox's record; after a restart the provider gets it back through Adopt().
// Thread-safety: every method may be called concurrently for different sandboxes; the
// manager never calls two lifecycle methods for the same sandbox at once (each runs in
// the sandbox's turn, manager/sandbox.h).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parley/sandbox/v1/sandbox.pb.h"

namespace parley::sandbox {

// Options of the local provider that a template may set.
struct LocalTemplateOptions {
  uint64_t tmp_size_bytes = 256ull << 20;  // Size of the sandbox's /tmp tmpfs.
  // CPU cap in percent of one CPU (cgroup v2 cpu.max, v1 cpu.cfs_quota_us), where a cpu
  // controller is available; 0: none.
  uint32_t cpu_percent = 0;
};

// Options of the kubernetes provider that a template may set.
struct KubernetesTemplateOptions {
  std::string namespace_name;      // Empty: the provider's default namespace.
  std::string runtime_class_name;  // e.g. "gvisor", "kata"; empty: the cluster default.
  std::string service_account;     // Empty: none mounted.
  uint64_t cpu_millis = 1000;      // CPU limit of the Pod.
  uint64_t ephemeral_storage_bytes = 1ull << 30;
  uint64_t workspace_storage_bytes = 1ull << 30;  // The workspace claim's storage request.
  std::string storage_class_name;                 // Empty: the cluster's default class.
  std::map<std::string, std::string> node_selector;
};

// Everything a provider needs to build one sandbox: the template and the limits in
// force (taken from the sandbox's record, so a restart or a resume keeps them).
struct SandboxSpec {
  std::string id;
  std::string template_name;
  std::string image;  // Container image (kubernetes).
  ::parley::sandbox::v1::SandboxLimits limits;
  std::map<std::string, std::string> env;
  LocalTemplateOptions local;
  KubernetesTemplateOptions kubernetes;
};

using ProviderState = std::map<std::string, std::string>;

// The value of `key` in a provider state, or "" when absent.
inline std::string StateValue(const ProviderState& state, const std::string& key) {
  auto it = state.find(key);
  return it == state.end() ? "" : it->second;
}

// parley-sandboxd's --rlimit_* flags for `limits` ("--rlimit_nproc=64", …), one per limit
// that is set (non-zero); CPU time is rounded up to whole seconds. Every provider starts
// the daemon with these, so a template's limits mean the same wherever it runs.
std::vector<std::string> SandboxdLimitFlags(const ::parley::sandbox::v1::SandboxLimits& limits);

// Where the daemon of a sandbox answers.
struct DaemonEndpoint {
  std::string target;  // gRPC target: "unix:/…" or "10.1.2.3:7080".
  std::string token;   // x-parley-sandbox-token, when the daemon requires one.
};

// Persists the provider state of the sandbox being built; the provider calls it as
// soon as new resources exist (a pid, a Pod) and stops if it fails.
using RecordFn = std::function<absl::Status(const ProviderState&)>;

class SandboxProvider {
 public:
  virtual ~SandboxProvider() = default;

  virtual std::string name() const = 0;

  // Names the sandbox's resources (workspace, uid, socket, Pod) without creating any.
  virtual absl::StatusOr<ProviderState> Plan(const SandboxSpec& spec) = 0;

  // Builds the environment and starts the daemon. On error whatever was created is
  // left for Destroy(). Errors: UNAVAILABLE (the environment could not be built,
  // with the provider's own message, e.g. bwrap's stderr).
  virtual absl::StatusOr<DaemonEndpoint> Start(const SandboxSpec& spec, ProviderState& state,
                                               const RecordFn& record) = 0;

  // The endpoint of a running sandbox (e.g. after a restart of the manager).
  virtual absl::StatusOr<DaemonEndpoint> Endpoint(const ProviderState& state) = 0;

  // Called once per recovered sandbox at start-up, before anything else touches it.
  virtual void Adopt(const ProviderState& state) = 0;

  // Whether the sandbox's processes (or Pod) still exist.
  virtual bool Alive(const ProviderState& state) = 0;

  // Stops every process of the sandbox and keeps its workspace.
  virtual absl::Status Pause(const SandboxSpec& spec, ProviderState& state) = 0;

  // Undoes Pause(). When the environment is gone (host reboot; kubernetes pause) it is
  // built again over the kept workspace; `restarted` then says so.
  virtual absl::StatusOr<DaemonEndpoint> Resume(const SandboxSpec& spec, ProviderState& state,
                                                const RecordFn& record, bool* restarted) = 0;

  // Kills everything and deletes the workspace. Idempotent; safe on a state from Plan()
  // whose Start() never ran or failed half-way.
  virtual absl::Status Destroy(const ProviderState& state) = 0;

  // Deletes resources of this provider that belong to no sandbox in `known_ids`
  // (leftovers of a crash between creating a resource and recording it).
  virtual void CollectGarbage(const std::set<std::string>& known_ids) = 0;

  // What the provider knows about why a sandbox is not answering (the tail of its log,
  // a Pod's status), for error messages; may be empty.
  virtual std::string Diagnostics(const ProviderState& state) { return ""; }

  // One line on what this provider can do here (e.g. which cgroup controllers apply).
  virtual std::string Capabilities() const = 0;

  // Where per-sandbox memory/pids/CPU limits come from on this host: "v2", "v1" or
  // "none" (cgroup.h); empty where the notion does not apply (a Pod's limits are the
  // cluster's business).
  virtual std::string CgroupMode() const { return ""; }
};

}  // namespace parley::sandbox
