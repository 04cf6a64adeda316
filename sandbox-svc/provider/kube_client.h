// KubeClient: the handful of Kubernetes REST calls the kubernetes provider makes —
// create, get, delete and watch — over libcurl, with the credentials of an in-cluster
// service account or a kubeconfig.
//
//   absl::StatusOr<KubeConfig> config = LoadKubeConfig(flags.kubeconfig);  // "" = in-cluster
//   KubeClient client(*config);
//   auto pod = client.Create("/api/v1/namespaces/ns/pods", pod_json);
//   client.Watch("/api/v1/namespaces/ns/pods?watch=1&fieldSelector=metadata.name%3Dp",
//                absl::Seconds(60), [](const nlohmann::json& event) { return !Ready(event); });
//
// Errors: the API's own Status message with the HTTP code mapped to a gRPC-style code
// (404 NOT_FOUND, 409 ALREADY_EXISTS, 401/403 PERMISSION_DENIED, 422 INVALID_ARGUMENT,
// 429/5xx/transport UNAVAILABLE). Thread-safe: each call uses its own curl handle.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace parley::sandbox {

struct KubeConfig {
  std::string server;           // "https://10.0.0.1:443" (http:// only for tests).
  std::string token;            // Bearer token, when used.
  std::string ca_pem;           // Cluster CA (PEM); empty: the system's CAs.
  std::string client_cert_pem;  // Client certificate auth, when used.
  std::string client_key_pem;
  bool insecure_skip_tls_verify = false;
  std::string namespace_name = "default";
};

// In-cluster when `kubeconfig_path` is empty (KUBERNETES_SERVICE_HOST/PORT and the
// service account files), else the kubeconfig's current context. Kubeconfigs are read
// as JSON (`kubectl config view --raw --flatten -o json` converts a YAML one).
absl::StatusOr<KubeConfig> LoadKubeConfig(const std::string& kubeconfig_path);

class KubeClient {
 public:
  explicit KubeClient(KubeConfig config);

  absl::StatusOr<nlohmann::json> Create(const std::string& collection_path,
                                        const nlohmann::json& object);
  absl::StatusOr<nlohmann::json> Get(const std::string& path);
  // OK when the object is gone already (404).
  absl::Status Delete(const std::string& path);
  // Streams watch events to `on_event` until it returns false (OK), the stream ends or
  // `timeout` passes (DEADLINE_EXCEEDED).
  absl::Status Watch(const std::string& path, absl::Duration timeout,
                     const std::function<bool(const nlohmann::json& event)>& on_event);

  const KubeConfig& config() const { return config_; }

 private:
  struct Response {
    long code = 0;
    std::string body;
  };
  absl::StatusOr<Response> Request(const std::string& method, const std::string& path,
                                   const std::string& body, absl::Duration timeout);

  KubeConfig config_;
};

}  // namespace parley::sandbox
