// KubeClient: the handful of Kubernetes REST calls the kubernetes provider makes —
// create, get, list, delete and watch — over libcurl, with the credentials of an
// in-cluster service account or a kubeconfig (KubeConfig, kube_config.h).
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
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "sandbox-svc/provider/kube_config.h"

namespace parley::sandbox {

class KubeClient {
 public:
  explicit KubeClient(KubeConfig config);

  absl::StatusOr<nlohmann::json> Create(const std::string& collection_path,
                                        const nlohmann::json& object);
  absl::StatusOr<nlohmann::json> Get(const std::string& path);
  // The items of a collection whose labels match `label_selector` ("k=v,k2=v2").
  absl::StatusOr<std::vector<nlohmann::json>> List(const std::string& collection_path,
                                                   const std::string& label_selector);
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
