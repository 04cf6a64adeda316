// KubernetesProvider: the "kubernetes" provider. One Pod per sandbox, running the
// template's image with parley-sandboxd as its entrypoint (TCP, token-protected), an
// optional runtimeClassName (gVisor, Kata), resource limits from the template, and a
// NetworkPolicy that allows ingress to the daemon only and denies egress unless the
// template allows network.
//
//   KubernetesProvider provider(std::move(client), options);
//   ProviderState state = *provider.Plan(spec);          // pod name, namespace, token
//   DaemonEndpoint endpoint = *provider.Start(spec, state, record);  // "10.1.2.3:7080"
//
// Readiness is a watch on the Pod until it runs with an IP and the Ready condition.
// Pause deletes the Pod (a Pod cannot be frozen through the API) and keeps the record;
// resume creates it again. The workspace is an emptyDir, so it does not survive a
// pause — a documented limitation of this provider. Thread-safe: every call is
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
  // Pods are named before they are created and recorded, so Destroy() always finds
  // them; there is nothing unrecorded to collect.
  void CollectGarbage(const std::set<std::string>& known_ids) override {}
  std::string Capabilities() const override;

  // The objects Start() creates (exposed for tests).
  nlohmann::json PodManifest(const SandboxSpec& spec, const ProviderState& state) const;
  nlohmann::json NetworkPolicyManifest(const SandboxSpec& spec, const ProviderState& state) const;

 private:
  absl::StatusOr<std::string> WaitForPodIp(const ProviderState& state);

  std::unique_ptr<KubeClient> client_;
  KubernetesOptions options_;
  absl::Mutex mu_;
  std::map<std::string, std::pair<absl::Time, bool>> alive_cache_ ABSL_GUARDED_BY(mu_);
};

}  // namespace parley::sandbox
