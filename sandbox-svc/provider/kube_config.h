// KubeConfig: where the Kubernetes API server is and how to authenticate to it, from
// the in-cluster service account or a kubeconfig file (YAML, as kubectl writes it, or
// JSON).
//
//   absl::StatusOr<KubeConfig> config = LoadKubeConfig(flags.kubeconfig);  // "" = in-cluster
//   if (!config.ok()) return config.status();  // names the file and what is wrong
//   KubeClient client(*config);
//
// Only the current context is read: its cluster (server, CA, insecure-skip-tls-verify)
// and its user (token, tokenFile, client certificate and key, each inline as "-data" or
// as a file relative to the kubeconfig's directory). Errors are INVALID_ARGUMENT (the
// file is malformed or incomplete, or asks for an unsupported exec / auth-provider
// plugin), NOT_FOUND (a file it names cannot be read) or FAILED_PRECONDITION (no
// kubeconfig and not in a cluster). Thread-safe: no shared state.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"

namespace parley::sandbox {

struct KubeConfig {
  std::string server;           // "https://10.0.0.1:443" (http:// only for tests).
  std::string token;            // Bearer token, when used.
  std::string ca_pem;           // Cluster CA (PEM); empty: the system's CAs.
  std::string client_cert_pem;  // Client certificate auth, when used.
  std::string client_key_pem;
  bool insecure_skip_tls_verify = false;
  std::string namespace_name = "default";

  bool operator==(const KubeConfig&) const = default;
};

// In-cluster when `kubeconfig_path` is empty (KUBERNETES_SERVICE_HOST/PORT and the
// service account files), else the kubeconfig's current context.
absl::StatusOr<KubeConfig> LoadKubeConfig(const std::string& kubeconfig_path);

// The kubeconfig document in `text` as JSON: parsed as JSON when it is JSON, else as
// YAML (plain scalars true/false become booleans, null/~/empty null, integers numbers;
// quoted scalars stay strings). INVALID_ARGUMENT with the line and column when it is
// neither, or when the top level is not a mapping.
absl::StatusOr<nlohmann::json> ParseKubeConfigDocument(const std::string& text);

}  // namespace parley::sandbox
