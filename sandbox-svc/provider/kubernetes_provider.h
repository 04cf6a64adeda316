// KubernetesProvider: the "kubernetes" provider. Each sandbox is four API objects, all
// named parley-<id>: a NetworkPolicy (ingress to the daemon only; egress denied unless
// the template allows network), a PersistentVolumeClaim (the workspace), a Secret (the
// daemon's token) and a Pod running the template's image with parley-sandboxd as its
// entrypoint (TCP, token from the Secret), an optional runtimeClassName (gVisor, Kata)
// and resource limits from the template.
//
//   KubernetesProvider provider(std::move(client), options);
//   ProviderState state = *provider.Plan(spec);          // names, namespace, token
//   DaemonEndpoint endpoint = *provider.Start(spec, state, record);  // "10.1.2.3:7080"
//
// Readiness is a watch on the Pod until it runs with an IP and the Ready condition.
// Pause deletes the Pod only (a Pod cannot be frozen through the API); the claim, and
// with it the workspace, stays, and resume creates a Pod on it again. Destroy deletes
// all four (404 is success). CollectGarbage destroys objects labelled with this
// provider's owner whose sandbox has no record. Thread-safe: every call is
// independent; the liveness cache is guarded by a mutex.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "sandbox-svc/provider/kube_client.h"
#include "sandbox-svc/provider/provider.h"

namespace parley::sandbox {

struct KubernetesOptions {
  std::string default_namespace;  // Empty: the kubeconfig's / service account's.
  int sandboxd_port = 7080;
  std::string sandboxd_path = "/usr/local/bin/parley-sandboxd";  // In the image.
  absl::Duration ready_timeout = absl::Seconds(120);
  absl::Duration liveness_cache = absl::Seconds(5);  // Alive() asks the API at most this often.
  // This instance's parley.dev/owner label value; CollectGarbage only ever deletes
  // objects carrying it. Empty: objects are not labelled and nothing is collected.
  std::string owner;
  // Namespaces templates may use besides the default one; CollectGarbage looks there.
  std::set<std::string> namespaces;
};

class KubernetesProvider final : public SandboxProvider {
 public:
  KubernetesProvider(std::unique_ptr<KubeClient> client, KubernetesOptions options);

  std::string name() const override { return "kubernetes"; }
  absl::StatusOr<ProviderState> Plan(const SandboxSpec& spec) override;
  absl::StatusOr<DaemonEndpoint> Start(const SandboxSpec& spec, ProviderState& state,
                                       const RecordFn& record) override;
  absl::StatusOr<DaemonEndpoint> Endpoint(const ProviderState& state) override;
  void Adopt(const ProviderState& state) override {}
  bool Alive(const ProviderState& state) override;
  absl::Status Pause(const SandboxSpec& spec, ProviderState& state) override;
  absl::StatusOr<DaemonEndpoint> Resume(const SandboxSpec& spec, ProviderState& state,
                                        const RecordFn& record, bool* restarted) override;
  absl::Status Destroy(const ProviderState& state) override;
  // Objects are named and recorded before they are created, so a recorded sandbox's are
  // always found by Destroy(); this handles those whose record is gone (a lost state
  // dir): Pods, NetworkPolicies and claims with this owner's labels are listed in every
  // known namespace, and each sandbox id among them that is not in `known_ids` is
  // destroyed (its Secret with it). Best effort: API errors leave things for next time.
  void CollectGarbage(const std::set<std::string>& known_ids) override;
  std::string Capabilities() const override;

  // The objects Start() creates (exposed for tests).
  nlohmann::json PodManifest(const SandboxSpec& spec, const ProviderState& state) const;
  nlohmann::json NetworkPolicyManifest(const SandboxSpec& spec, const ProviderState& state) const;
  nlohmann::json ClaimManifest(const SandboxSpec& spec, const ProviderState& state) const;
  nlohmann::json SecretManifest(const SandboxSpec& spec, const ProviderState& state) const;

 private:
  nlohmann::json Metadata(const SandboxSpec& spec, const ProviderState& state,
                          const std::string& name) const;
  // Creates the object unless it exists already (409 is success: resume, retries).
  absl::Status EnsureCreated(const std::string& collection_path, const nlohmann::json& object);
  absl::StatusOr<std::string> WaitForPodIp(const ProviderState& state);
  // Until GET on the Pod answers 404: a terminating Pod still holds its name and claim.
  absl::Status WaitForPodGone(const ProviderState& state);
  void ForgetLiveness(const ProviderState& state);

  std::unique_ptr<KubeClient> client_;
  KubernetesOptions options_;
  absl::Mutex mu_;
  std::map<std::string, std::pair<absl::Time, bool>> alive_cache_ ABSL_GUARDED_BY(mu_);
};

}  // namespace parley::sandbox
